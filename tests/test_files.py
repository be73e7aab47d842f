"""One atomic write: the final name holds the old file or the whole new one, never a part."""

from __future__ import annotations

import pytest

from fsl_app.files import write_atomically, write_atomically_with


def test_bytes_replace_the_old_file_and_leave_no_temporary(tmp_path):
    path = tmp_path / "deep" / "model.bin"
    write_atomically(path, b"old")
    assert write_atomically(path, b"new", durable=True) == path
    assert path.read_bytes() == b"new"
    assert [p.name for p in path.parent.iterdir()] == ["model.bin"]


def test_a_failing_writer_keeps_the_old_file_and_removes_its_temporary(tmp_path):
    path = tmp_path / "state.pt"
    path.write_bytes(b"old")
    seen = []

    def write(temporary):
        seen.append(temporary)
        temporary.write_bytes(b"half")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        write_atomically_with(path, write, temp_suffix=".part")
    assert path.read_bytes() == b"old"
    assert seen[0].parent == tmp_path and seen[0].name.endswith(".part")
    assert not seen[0].exists()


def test_a_writer_that_wants_a_file_name_gets_one_beside_the_target(tmp_path):
    path = write_atomically_with(tmp_path / "out.txt", lambda t: t.write_text("streamed"))
    assert path.read_text() == "streamed"
