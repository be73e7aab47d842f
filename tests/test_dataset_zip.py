"""Dataset ZIPs: real photos out and back in by class; hostile or broken archives refused."""

from __future__ import annotations

import io
import os
import tracemalloc
import zipfile
from collections import Counter
from pathlib import Path

import pytest
import tomllib

from fsl_app.project.dataset_zip import (
    MAX_TOTAL_BYTES,
    MAX_UPLOAD_BYTES,
    DatasetZip,
    DatasetZipError,
    ZipImage,
    imagefolder_zip,
    read_imagefolder_zip,
)

REPO = Path(__file__).resolve().parents[1]


def zip_of(entries: dict[str, bytes], compression: int = zipfile.ZIP_STORED) -> bytes:
    """A ZIP with exactly these entry names, as other tools write them."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression) as archive:
        for name, data in entries.items():
            archive.writestr(name, data)
    return buffer.getvalue()


@pytest.fixture
def jpeg(folders) -> bytes:
    return next(folders.support.rglob("*.*")).read_bytes()


def test_real_photos_come_back_in_their_classes(folders):
    files = sorted(folders.support.rglob("*.*")) + sorted(folders.query.rglob("*.*"))
    images = [ZipImage(path.parent.name, path.name, path.read_bytes()) for path in files]
    unlabeled = ZipImage(None, "mystery.png", files[0].read_bytes())

    read, problems = read_imagefolder_zip(imagefolder_zip([*images, unlabeled]))

    assert problems == []
    assert Counter((i.class_name, i.data) for i in read) == Counter(
        (i.class_name, i.data) for i in [*images, unlabeled]
    )
    assert {i.class_name for i in read} == {"bird", "flower", "fruit", None}
    assert all(i.name.endswith(tuple(p.suffix for p in files)) for i in read)


def test_colliding_names_are_made_unique_and_class_names_safe(jpeg):
    images = [
        ZipImage("cat", "a.jpg", jpeg),
        ZipImage("cat", "a.jpg", jpeg + b"\0"),
        ZipImage("cat", "A.JPG", jpeg + b"\0\0"),  # the same file on macOS and Windows
        ZipImage("dog", "a.jpg", jpeg),
        ZipImage("fruit/veg", "../../b.jpg", jpeg),
        ZipImage("..", "c.jpg", jpeg),
        ZipImage(".hidden", "d.jpg", jpeg),
        ZipImage("unlabeled", "e.jpg", jpeg),  # a class of that name stays a class
        ZipImage("Hähnchen süß", "f.jpg", jpeg),
    ]
    data = imagefolder_zip(images)

    names = zipfile.ZipFile(io.BytesIO(data)).namelist()
    assert names == [
        "cat/a.jpg",
        "cat/a_1.jpg",
        "cat/A_2.JPG",
        "dog/a.jpg",
        "fruit_veg/_.._b.jpg",
        "class/c.jpg",
        "hidden/d.jpg",
        "unlabeled_1/e.jpg",
        "Hähnchen süß/f.jpg",
    ]
    read, problems = read_imagefolder_zip(data)
    assert problems == []
    assert [i.class_name for i in read] == [name.split("/")[0] for name in names]


def test_one_wrapping_folder_is_looked_through_and_system_files_ignored(jpeg):
    data = zip_of(
        {
            "mydata/cat/a.jpg": jpeg,
            "mydata/cat/more/b.jpg": jpeg,
            "mydata/dog/c.png": jpeg,
            "mydata/unlabeled/d.jpg": jpeg,
            "mydata/cat/notes.txt": b"taken in May",
            "mydata/.DS_Store": b"\0",
            "mydata/cat/.hidden.jpg": jpeg,
            "__MACOSX/mydata/cat/._a.jpg": b"\0",
            "mydata/dog/Thumbs.db": b"\0",
        }
    )
    read, problems = read_imagefolder_zip(data)
    assert [(i.class_name, i.name) for i in read] == [
        ("cat", "a.jpg"),
        ("cat", "b.jpg"),
        ("dog", "c.png"),
        (None, "d.jpg"),
    ]
    assert problems == ["'mydata/cat/notes.txt' was skipped: it is not a picture this app reads."]


def test_a_single_class_folder_is_a_class_and_top_level_files_are_unlabeled(jpeg):
    read, _ = read_imagefolder_zip(zip_of({"cat/a.jpg": jpeg}))
    assert [(i.class_name, i.name) for i in read] == [("cat", "a.jpg")]
    read, _ = read_imagefolder_zip(zip_of({"a.jpg": jpeg, "dog/b.jpg": jpeg}))
    assert [(i.class_name, i.name) for i in read] == [(None, "a.jpg"), ("dog", "b.jpg")]


def test_entries_pointing_outside_the_zip_are_skipped(jpeg):
    data = zip_of(
        {
            "../evil.jpg": jpeg,
            "cat/../../evil.jpg": jpeg,
            "/etc/evil.jpg": jpeg,
            "C:/evil.jpg": jpeg,
            "cat/good.jpg": jpeg,
        }
    )
    read, problems = read_imagefolder_zip(data)
    assert [(i.class_name, i.name) for i in read] == [("cat", "good.jpg")]
    assert len(problems) == 4
    assert all(p.endswith("was skipped: it points outside the ZIP.") for p in problems)


@pytest.mark.parametrize(
    "data",
    [b"", b"not a zip at all", b"PK\x03\x04" + b"\0" * 40],
    ids=["empty", "text", "zip signature only"],
)
def test_bytes_that_are_not_a_zip_are_refused(data):
    with pytest.raises(DatasetZipError, match="not a ZIP archive, or it is damaged"):
        read_imagefolder_zip(data)


def test_a_zip_cut_short_is_refused(jpeg):
    data = zip_of({"cat/a.jpg": jpeg, "dog/b.jpg": jpeg})
    with pytest.raises(DatasetZipError, match="not a ZIP archive, or it is damaged"):
        read_imagefolder_zip(data[: len(data) // 2])


def test_too_many_files_are_refused(jpeg):
    data = zip_of({f"cat/{i}.jpg": jpeg for i in range(4)})
    with pytest.raises(DatasetZipError, match="holds 4 files, more than the 3") as refused:
        read_imagefolder_zip(data, max_files=3)
    assert "split it into smaller ZIPs" in str(refused.value)
    assert len(read_imagefolder_zip(data, max_files=4)[0]) == 4


def test_a_zip_bomb_is_refused_before_unpacking():
    bomb = zip_of({"cat/zeros.png": b"\0" * 20 * 1024**2}, zipfile.ZIP_DEFLATED)
    assert len(bomb) < 100_000
    with pytest.raises(DatasetZipError, match="unpacks to 20 MB, more than the 1 MB"):
        read_imagefolder_zip(bomb, max_total_bytes=1024**2)


def test_a_damaged_entry_is_skipped_and_the_rest_read(jpeg):
    data = bytearray(zip_of({"cat/a.jpg": jpeg, "dog/b.jpg": jpeg}))
    start = data.index(jpeg)
    data[start + 100] ^= 0xFF  # one flipped byte in a's data: its checksum fails
    read, problems = read_imagefolder_zip(bytes(data))
    assert [(i.class_name, i.name) for i in read] == [("dog", "b.jpg")]
    assert problems == ["'cat/a.jpg' was skipped: it is damaged inside the ZIP."]


def test_windows_device_names_get_a_suffix_and_come_back(jpeg):
    images = [
        ZipImage("CON", "nul.jpg", jpeg),
        ZipImage("com1", "con.txt.jpg", jpeg),
        ZipImage("CON_", "Aux_.jpg", jpeg),  # already ends in "_": one more, so it comes back
        ZipImage("console", "comma.jpg", jpeg),  # not a device name
    ]
    data = imagefolder_zip(images)
    assert zipfile.ZipFile(io.BytesIO(data)).namelist() == [
        "CON_/nul_.jpg",
        "com1_/con_.txt.jpg",
        "CON__/Aux__.jpg",
        "console/comma.jpg",
    ]
    read, problems = read_imagefolder_zip(data)
    assert problems == []
    assert [(i.class_name, i.name) for i in read] == [(i.class_name, i.name) for i in images]


def test_the_unpacked_limit_follows_the_apps_upload_limit():
    config = tomllib.loads((REPO / ".streamlit" / "config.toml").read_text())
    assert config["server"]["maxUploadSize"] * 1024**2 == MAX_UPLOAD_BYTES
    assert MAX_TOTAL_BYTES == 4 * MAX_UPLOAD_BYTES


def test_a_small_zip_of_huge_files_is_refused_before_unpacking():
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED, compresslevel=1) as archive:
        for index in range(5):
            with archive.open(f"cat/{index}.png", "w") as entry:
                for _ in range(95):
                    entry.write(bytes(1024**2))
    assert len(buffer.getvalue()) < 3 * 1024**2
    tracemalloc.start()
    try:
        with pytest.raises(DatasetZipError) as refused:
            DatasetZip(buffer.getvalue())
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert str(refused.value) == (
        "The ZIP unpacks to 475 MB, more than the 200 MB one import can take (four times the "
        "50 MB upload limit): split it into smaller ZIPs."
    )
    assert peak < 5 * 1024**2


def test_pictures_are_unpacked_one_at_a_time():
    size = 4 * 1024**2
    data = zip_of({f"cat/{index}.png": os.urandom(size) for index in range(6)})
    with DatasetZip(data) as dataset:
        assert dataset.class_names == ["cat"]
        tracemalloc.start()
        try:
            count = sum(1 for _ in dataset.images())
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
    assert count == 6
    assert peak < 2.5 * size  # one picture (and its copy while read), never all six
