"""One atomic write: the final name holds the old file or the whole new one, never a part."""

from __future__ import annotations

import os

import pytest

from fsl_app.files import (
    LeftOut,
    from_spreadsheet_safe,
    iter_files,
    iter_image_files,
    spreadsheet_safe,
    utf8_text,
    write_atomically,
    write_atomically_with,
)


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


def test_one_walk_lazily_sorted_images_only_the_others_counted(tmp_path):
    for name in ("b.png", "a/z.jpg", "a/notes.txt", "a/b/c.PNG", ".hidden/x.png", "a/.x.png"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(b"")
    (tmp_path / "Thumbs.db").write_bytes(b"")
    assert list(iter_files(tmp_path)) == sorted(iter_files(tmp_path))
    left_out = LeftOut()
    found = [p.relative_to(tmp_path).as_posix() for p in iter_image_files(tmp_path, left_out)]
    assert found == ["a/b/c.PNG", "a/z.jpg", "b.png"]
    assert left_out.note() == "left out 1 file that is not an image (e.g. notes.txt)"


def test_a_file_named_by_the_user_is_walked_even_when_not_an_image(tmp_path):
    named = tmp_path / "notes.txt"
    named.write_text("x")
    assert list(iter_image_files(named)) == [named]
    with pytest.raises(FileNotFoundError):
        next(iter_files(tmp_path / "missing"))


@pytest.mark.parametrize(
    "text", ["=HYPERLINK(1)", "+1", "-1", "@SUM(A1)", "\tx", "\rx", "'=x", "'quoted", "plain"]
)
def test_spreadsheet_cells_never_run_and_give_back_what_was_written(text):
    cell = spreadsheet_safe(text)
    assert cell == text if text == "plain" else cell == "'" + text
    assert from_spreadsheet_safe(cell) == text
    assert spreadsheet_safe(0.5) == 0.5 and spreadsheet_safe(None) is None


def test_names_that_are_not_utf8_become_utf8_text_without_two_becoming_one():
    names = [os.fsdecode(b"caf\xe9.jpg"), "caf\\xe9.jpg", "café.jpg", "a\\b.jpg"]
    texts = [utf8_text(name) for name in names]
    assert texts == ["caf\\xe9.jpg", "caf\\\\xe9.jpg", "café.jpg", "a\\\\b.jpg"]
    assert all(text.encode("utf-8") for text in texts) and len(set(texts)) == len(names)
