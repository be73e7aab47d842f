"""Tests for the project store: projects that survive restarts, two writers, and crashes.

Pictures are small crops of the real photographs bundled with scikit-image, encoded with PIL.
Other processes are real child processes; crashes are real (``os._exit``, ``SIGKILL``) or
raised from inside SQLite itself, part-way through a transaction.
"""

from __future__ import annotations

import errno
import io
import json
import os
import re
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import textwrap
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from PIL import Image

from fsl_app.images import image_sha256
from fsl_app.project import store as store_module
from fsl_app.project.store import (
    DATA_DIR_ENV,
    TRASH_DAYS,
    AccuracyPoint,
    Duplicate,
    Store,
    StoreError,
)

REPO = Path(__file__).resolve().parents[1]
NOBODY = 65534

Files = list[tuple[str, bytes]]


# Pictures


@pytest.fixture(scope="module")
def pictures() -> list[bytes]:
    """150 distinct real pictures: 40 x 40 crops of three photographs, PNG and JPEG."""
    # Imported here: child processes import this module for write_concurrently only.
    from skimage import data

    photos = [data.chelsea(), data.astronaut(), data.coffee()]
    encoded = []
    for index in range(150):
        photo = photos[index % 3]
        top, left = (index * 7) % (photo.shape[0] - 40), (index * 11) % (photo.shape[1] - 40)
        buffer = io.BytesIO()
        crop = Image.fromarray(photo[top : top + 40, left : left + 40])
        crop.save(buffer, "JPEG" if index % 4 == 0 else "PNG")
        encoded.append(buffer.getvalue())
    assert len(set(encoded)) == len(encoded)
    return encoded


def named(pictures: list[bytes], start: int, stop: int, prefix: str = "photo") -> Files:
    return [(f"{prefix}-{i}.img", pictures[i]) for i in range(start, stop)]


def write_files(folder: Path, files: Files) -> list[str]:
    folder.mkdir(parents=True, exist_ok=True)
    for name, data in files:
        (folder / name).write_bytes(data)
    return [str(folder / name) for name, _ in files]


def read_files(paths: list[str]) -> Files:
    return [(Path(p).name, Path(p).read_bytes()) for p in paths]


# Helpers


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    with Store(tmp_path / "data") as opened:
        yield opened


def snapshot(store: Store, project_id: int) -> tuple:
    """Everything a person sees of a project."""
    return (
        store.get_project(project_id),
        store.list_classes(project_id),
        store.list_images(project_id),
    )


def integrity(root: Path) -> str:
    with sqlite3.connect(root / "fsl.sqlite") as db:
        assert db.execute("PRAGMA foreign_key_check").fetchall() == []
        return db.execute("PRAGMA integrity_check").fetchone()[0]


def python_command(code: str, *args: str) -> list[str]:
    return [sys.executable, "-c", textwrap.dedent(code), *args]


def run_python(code: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        python_command(code, *args),
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


# Opening a data folder


def test_data_folder_comes_from_the_environment(tmp_path, monkeypatch):
    monkeypatch.setenv(DATA_DIR_ENV, str(tmp_path / "from-env"))
    with Store() as store:
        assert store.root == tmp_path / "from-env"
    assert (tmp_path / "from-env" / "fsl.sqlite").is_file()
    with sqlite3.connect(tmp_path / "from-env" / "fsl.sqlite") as db:
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert db.execute("PRAGMA user_version").fetchone()[0] == len(store_module._MIGRATIONS)

    monkeypatch.delenv(DATA_DIR_ENV)
    monkeypatch.chdir(tmp_path)
    with Store() as store:
        assert store.root == tmp_path / "fsl_data"


def test_a_data_folder_that_cannot_be_made_is_a_clear_error(tmp_path):
    (tmp_path / "a-file").write_text("not a folder")
    root = tmp_path / "a-file" / "data"
    with pytest.raises(StoreError) as caught:
        Store(root)
    assert str(caught.value) == (
        f"The data folder '{root}' cannot be written to: Not a directory. "
        "Choose another folder with FSL_APP_DATA or fix its permissions."
    )


@contextmanager
def as_unprivileged_user() -> Iterator[None]:
    """Root writes through any permission bits, so as root act as 'nobody' for the block."""
    if os.geteuid() != 0:
        yield
        return
    os.seteuid(NOBODY)
    try:
        yield
    finally:
        os.seteuid(0)


@pytest.fixture
def open_folder() -> Iterator[Path]:
    """A folder every user can reach (pytest's tmp_path is private to root)."""
    folder = Path(tempfile.mkdtemp(prefix="fsl-store-test-"))
    folder.chmod(0o755)
    yield folder
    shutil.rmtree(folder)


def test_a_read_only_data_folder_is_a_clear_error_and_keeps_its_data(open_folder, pictures):
    root = open_folder / "data"
    with Store(root) as store:
        project = store.create_project("Birds")
        store.add_images(project.id, named(pictures, 0, 2))
        before = snapshot(store, project.id)
    for folder in (root, root / "images"):
        folder.chmod(0o555)
    writable = open_folder / "writable"
    writable.mkdir(mode=0o777)
    writable.chmod(0o777)

    with as_unprivileged_user():
        # The same user can open a folder it may write to, so the refusal below is about
        # permissions, not about who is asking.
        Store(writable).close()
        with pytest.raises(StoreError) as caught:
            Store(root)
    assert str(caught.value) == (
        f"The data folder '{root}' cannot be written to: Permission denied. "
        "Choose another folder with FSL_APP_DATA or fix its permissions."
    )

    for folder in (root, root / "images"):
        folder.chmod(0o755)
    with Store(root) as store:
        assert snapshot(store, project.id) == before


def test_a_database_from_a_newer_app_is_refused(tmp_path):
    Store(tmp_path).close()
    with sqlite3.connect(tmp_path / "fsl.sqlite") as db:
        db.execute("PRAGMA user_version = 99")
    with pytest.raises(StoreError, match="written by a newer version of this app"):
        Store(tmp_path)


# The schema of user_version 1, as the first release wrote it: a data folder from then.
SCHEMA_V1 = """
CREATE TABLE projects (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    name TEXT NOT NULL UNIQUE COLLATE NOCASE,
    created TEXT NOT NULL,
    settings TEXT NOT NULL DEFAULT '{}' CHECK (json_valid(settings))
);
CREATE TABLE classes (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    project_id INTEGER NOT NULL REFERENCES projects (id) ON DELETE CASCADE,
    name TEXT NOT NULL COLLATE NOCASE,
    position INTEGER NOT NULL,
    UNIQUE (project_id, name),
    UNIQUE (project_id, id)
);
CREATE TABLE images (
    sha256 TEXT PRIMARY KEY,
    width INTEGER NOT NULL,
    height INTEGER NOT NULL,
    format TEXT NOT NULL,
    ext TEXT NOT NULL,
    size_bytes INTEGER NOT NULL,
    added TEXT NOT NULL
) WITHOUT ROWID;
CREATE TABLE project_images (
    project_id INTEGER NOT NULL REFERENCES projects (id) ON DELETE CASCADE,
    sha256 TEXT NOT NULL REFERENCES images (sha256),
    class_id INTEGER,
    name TEXT NOT NULL,
    added TEXT NOT NULL,
    PRIMARY KEY (project_id, sha256),
    FOREIGN KEY (project_id, class_id) REFERENCES classes (project_id, id)
);
CREATE INDEX project_images_by_class ON project_images (project_id, class_id);
CREATE INDEX project_images_by_sha256 ON project_images (sha256);
CREATE TABLE predictions (
    project_id INTEGER NOT NULL,
    sha256 TEXT NOT NULL,
    learner TEXT NOT NULL,
    backbone TEXT NOT NULL,
    predicted_class TEXT NOT NULL,
    confidence REAL NOT NULL,
    unknown INTEGER NOT NULL,
    probabilities TEXT NOT NULL CHECK (json_valid(probabilities)),
    updated TEXT NOT NULL,
    PRIMARY KEY (project_id, learner, backbone, sha256),
    FOREIGN KEY (project_id, sha256) REFERENCES project_images (project_id, sha256)
        ON DELETE CASCADE
);
PRAGMA user_version = 1;
"""


def test_a_data_folder_from_schema_1_keeps_what_its_settings_held(tmp_path):
    """Kept labels, "none of these" and the accuracy history move from settings to tables.

    Saved predictions are dropped: they are recomputed from the classifier.
    """
    a, b, c, gone = "a" * 64, "b" * 64, "c" * 64, "d" * 64
    history = [
        {"labels": 4, "accuracy": 0.5, "low": 0.15, "high": 0.85},
        {"labels": 6, "accuracy": 2 / 3, "low": 0.3, "high": 0.9},
    ]
    settings = {
        "learner": "maml",
        "strictness": 1.1,
        "labels_confirmed": [a, gone],  # gone: removed from the project since
        "none_of_these": [b, c],  # c: labeled since
        "accuracy_history": history,
    }
    with sqlite3.connect(tmp_path / "fsl.sqlite") as db:
        db.executescript(SCHEMA_V1)
        db.execute(
            "INSERT INTO projects (name, created, settings) VALUES ('Birds', 'then', ?)",
            (json.dumps(settings),),
        )
        db.execute("INSERT INTO projects (name, created) VALUES ('Fish', 'then')")
        db.execute("INSERT INTO classes (project_id, name, position) VALUES (1, 'robin', 0)")
        for sha256, class_id in ((a, 1), (b, None), (c, 1)):
            db.execute(
                "INSERT INTO images VALUES (?, 40, 40, 'PNG', '.png', 100, 'then')", (sha256,)
            )
            db.execute(
                "INSERT INTO project_images VALUES (1, ?, ?, 'x.png', 'then')", (sha256, class_id)
            )
        db.execute(
            "INSERT INTO predictions VALUES (1, ?, 'protonet', 'mobilenet', 'robin', 0.9, 0,"
            " '{\"robin\": 0.9}', 'then')",
            (b,),
        )
    db.close()

    with Store(tmp_path) as store:
        birds, fish = store.list_projects()
        assert birds.settings == {"learner": "maml", "strictness": 1.1}
        assert fish.settings == {}
        assert store.confirmed_labels(birds.id) == {a}
        assert store.none_of_these(birds.id) == [b]
        assert store.accuracy_history(birds.id) == [
            AccuracyPoint(h["labels"], h["accuracy"], h["low"], h["high"]) for h in history
        ]
        assert store.accuracy_history(fish.id) == []
    with sqlite3.connect(tmp_path / "fsl.sqlite") as db:
        tables = {name for (name,) in db.execute("SELECT name FROM sqlite_schema")}
        assert "predictions" not in tables
        assert db.execute("PRAGMA user_version").fetchone()[0] == len(store_module._MIGRATIONS)
    db.close()
    assert integrity(tmp_path) == "ok"


def test_a_damaged_database_is_a_clear_error(tmp_path):
    (tmp_path / "fsl.sqlite").write_bytes(b"this is not a database" * 100)
    with pytest.raises(StoreError, match="is not a project database this app can read"):
        Store(tmp_path)


# Projects, classes and names


def test_project_survives_a_new_process(store, pictures):
    project = store.create_project("Garden birds", {"backbone": "mobilenet", "threshold": 0.5})
    store.add_class(project.id, "robin")
    store.add_class(project.id, "wren")
    store.add_images(project.id, named(pictures, 0, 3), "robin")
    store.add_images(project.id, named(pictures, 3, 5), "wren")
    store.add_images(project.id, named(pictures, 5, 9))
    store.update_settings(project.id, {"learner": "protonet"})

    result = run_python(
        """
        import json, sys
        from fsl_app.images import image_sha256
        from fsl_app.project.store import Store

        with Store(sys.argv[1]) as store:
            [project] = store.list_projects()
            images = store.list_images(project.id)
            print(json.dumps({
                "name": project.name,
                "settings": project.settings,
                "classes": [(c.name, c.n_examples) for c in store.list_classes(project.id)],
                "images": [(i.name, i.class_name, i.sha256) for i in images],
                "bytes_match": all(
                    image_sha256(store.image_bytes(i.sha256)) == i.sha256 for i in images
                ),
            }))
        """,
        str(store.root),
    )
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == {
        "name": "Garden birds",
        "settings": {"backbone": "mobilenet", "threshold": 0.5, "learner": "protonet"},
        "classes": [["robin", 3], ["wren", 2]],
        "images": [[i.name, i.class_name, i.sha256] for i in store.list_images(project.id)],
        "bytes_match": True,
    }


@pytest.mark.parametrize(
    ("name", "problem"),
    [
        ("", "is empty"),
        ("   ", "is empty"),
        ("x" * 101, "is too long (101 characters); keep it to 100 characters or fewer"),
        ("two\nlines", "contains a line break"),
    ],
)
def test_bad_names_are_refused_with_a_reason(store, name, problem):
    project = store.create_project("Birds")
    for attempt in (
        lambda: store.create_project(name),
        lambda: store.rename_project(project.id, name),
        lambda: store.add_class(project.id, name),
    ):
        with pytest.raises(StoreError, match=re.escape(problem)):
            attempt()
    assert store.list_projects() == [project]
    assert store.list_classes(project.id) == []


def test_none_of_these_is_no_class_name(store):
    """It is the app's answer for pictures of no class (and their folder in an export): a
    class of that name would be taken for the mark, so it is refused, in any case, but a
    project may be called so."""
    project = store.create_project("none of these")
    store.add_class(project.id, "bird")
    for name in ("none of these", "  None Of These "):
        with pytest.raises(StoreError, match="the app's own answer for pictures of no class"):
            store.add_class(project.id, name)
        with pytest.raises(StoreError, match="give the class another name"):
            store.rename_class(project.id, "bird", name)
    assert [c.name for c in store.list_classes(project.id)] == ["bird"]


def test_names_are_unique_ignoring_case_and_surrounding_spaces(store):
    birds = store.create_project("Birds")
    fish = store.create_project("  Fish  ")
    assert fish.name == "Fish"
    with pytest.raises(StoreError, match="There is already a project called 'Birds'"):
        store.create_project(" birds ")
    with pytest.raises(StoreError, match="There is already a project called 'Birds'"):
        store.rename_project(fish.id, "BIRDS")
    assert store.rename_project(birds.id, "birds").name == "birds"  # a change of case is fine

    store.add_class(birds.id, "Robin")
    store.add_class(birds.id, "Wren")
    store.add_class(fish.id, "robin")  # another project may use the same name
    with pytest.raises(StoreError, match="already has a class called 'Robin'"):
        store.add_class(birds.id, "robin ")
    with pytest.raises(StoreError, match="already has a class called 'Wren'"):
        store.rename_class(birds.id, "Robin", "wren")
    assert [c.name for c in store.list_classes(birds.id)] == ["Robin", "Wren"]


def test_names_are_data_and_never_touch_the_file_system(store, pictures, tmp_path):
    odd_names = ["../../etc/passwd", "<script>alert(1)</script>", "C:\\Windows\\system32", "鳥"]
    project = store.create_project("../../etc/passwd")
    for name in odd_names:
        store.add_class(project.id, name)
    store.add_images(project.id, [("../../../evil.png", pictures[0])], "../../etc/passwd")
    store.add_images(project.id, [("<img src=x>.jpg", pictures[1])], "<script>alert(1)</script>")

    assert store.get_project(project.id).name == "../../etc/passwd"
    assert [c.name for c in store.list_classes(project.id)] == odd_names
    assert [(i.name, i.class_name) for i in store.list_images(project.id)] == [
        ("../../../evil.png", "../../etc/passwd"),
        ("<img src=x>.jpg", "<script>alert(1)</script>"),
    ]
    assert [p.name for p in tmp_path.iterdir()] == ["data"]
    on_disk = {p.relative_to(store.root).as_posix() for p in store.root.rglob("*")}
    allowed = re.compile(
        r"fsl\.sqlite(-wal|-shm)?|images(/[0-9a-f]{2}(/[0-9a-f]{64}\.(png|jpg))?)?"
    )
    assert all(allowed.fullmatch(path) for path in on_disk), on_disk


def test_settings_are_merged(store):
    project = store.create_project("Birds", {"backbone": "mobilenet", "threshold": 0.5})
    settings = store.update_settings(project.id, {"threshold": 0.7, "learner": "protonet"})
    assert settings == {"backbone": "mobilenet", "threshold": 0.7, "learner": "protonet"}
    assert store.get_project(project.id).settings == settings


def test_a_deleted_project_is_a_clear_error(store):
    project = store.create_project("Birds")
    store.delete_project(project.id)
    with pytest.raises(StoreError, match="This project no longer exists"):
        store.update_settings(project.id, {"learner": "protonet"})
    with pytest.raises(StoreError, match="This project no longer exists"):
        store.add_class(project.id, "robin")
    # Ids are never reused, so an old id cannot reach a new project.
    assert store.create_project("Fish").id != project.id


# Adding and labeling images


def test_bad_uploads_are_reported_by_name_and_the_good_ones_stored(store, pictures):
    project = store.create_project("Birds")
    store.add_class(project.id, "robin")
    store.add_images(project.id, named(pictures, 0, 2, "earlier"), "robin")
    before = store.list_images(project.id)

    damaged = bytearray(pictures[3])
    damaged[40:80] = bytes(40)
    report = store.add_images(
        project.id,
        [
            ("good-1.png", pictures[2]),
            ("damaged.png", bytes(damaged)),
            ("cut-short.png", pictures[4][: len(pictures[4]) // 2]),
            ("empty.jpg", b""),
            ("notes.txt", b"remember to buy seed"),
            ("good-2.png", pictures[5]),
        ],
        "robin",
    )

    assert [i.name for i in report.added] == ["good-1.png", "good-2.png"]
    assert report.duplicates == []
    reasons = {
        "damaged.png": "damaged",
        "cut-short.png": "cut short",
        "empty.jpg": "the file is empty",
        "notes.txt": "not an image",
    }
    assert [r.name for r in report.rejected] == list(reasons)
    for rejected in report.rejected:
        assert rejected.message.startswith(f"'{rejected.name}' is not a readable image: ")
        assert reasons[rejected.name] in rejected.message
    assert store.list_images(project.id) == before + report.added
    assert [(c.name, c.n_examples) for c in store.list_classes(project.id)] == [("robin", 4)]
    assert len(list((store.root / "images").glob("*/*"))) == 4


def test_duplicates_are_found_by_content(store, pictures):
    project = store.create_project("Birds")
    store.add_class(project.id, "robin")
    store.add_class(project.id, "wren")
    store.add_images(project.id, [("robin.png", pictures[0])], "robin")
    store.add_images(project.id, [("unsure.png", pictures[1])])

    report = store.add_images(
        project.id,
        [
            ("robin-copy.png", pictures[0]),  # already in another class
            ("unsure-copy.png", pictures[1]),  # already there, unlabeled
            ("new.png", pictures[2]),
            ("new-again.png", pictures[2]),  # twice in one upload
        ],
        "wren",
    )
    assert [i.name for i in report.added] == ["new.png"]
    sha = [image_sha256(p) for p in pictures[:3]]
    assert report.duplicates == [
        Duplicate("new-again.png", sha[2], "new.png", "wren"),
        Duplicate("robin-copy.png", sha[0], "robin.png", "robin"),
        Duplicate("unsure-copy.png", sha[1], "unsure.png", None),
    ]
    # Nothing was moved, and each file is stored once.
    assert [(i.name, i.class_name) for i in store.list_images(project.id)] == [
        ("robin.png", "robin"),
        ("unsure.png", None),
        ("new.png", "wren"),
    ]
    assert len(list((store.root / "images").glob("*/*"))) == 3


def test_images_are_labeled_moved_listed_and_removed(store, pictures):
    project = store.create_project("Birds")
    store.add_class(project.id, "robin")
    store.add_class(project.id, "wren")
    unlabeled = store.add_images(project.id, named(pictures, 0, 6)).added
    hashes = [i.sha256 for i in unlabeled]

    assert store.label(project.id, hashes[:3], "robin") == 3  # lasso three
    assert store.label(project.id, hashes[2:4], "wren") == 2  # correct one, accept another
    assert store.label(project.id, ["0" * 64], "wren") == 0  # not in the project: skipped

    assert [i.sha256 for i in store.list_images(project.id, class_name="robin")] == hashes[:2]
    assert [i.sha256 for i in store.list_images(project.id, class_name="wren")] == hashes[2:4]
    assert [i.sha256 for i in store.list_images(project.id, labeled=True)] == hashes[:4]
    assert [i.sha256 for i in store.list_images(project.id, labeled=False)] == hashes[4:]
    assert [(c.name, c.n_examples) for c in store.list_classes(project.id)] == [
        ("robin", 2),
        ("wren", 2),
    ]
    image = store.list_images(project.id)[0]
    assert (image.width, image.height) == (40, 40)

    assert store.label(project.id, hashes[:1], None) == 1
    assert store.remove_images(project.id, hashes[4:]) == 2
    assert [i.sha256 for i in store.list_images(project.id, labeled=False)] == hashes[:1]
    with pytest.raises(StoreError, match="There is no class 'owl' in this project"):
        store.label(project.id, hashes, "owl")
    with pytest.raises(StoreError, match="There is no class 'owl' in this project"):
        store.add_images(project.id, named(pictures, 10, 11), "owl")

    # Class names are matched as people type them, and reported as they are stored.
    [added] = store.add_images(project.id, named(pictures, 10, 11), " ROBIN ").added
    assert added.class_name == "robin"
    assert store.list_images(project.id, class_name="Robin ")[-1] == added


def test_image_files_are_named_by_hash_and_read_back(store, pictures):
    project = store.create_project("Birds")
    [png, jpeg] = store.add_images(
        project.id, [("a.png", pictures[1]), ("b.png", pictures[0])]
    ).added
    assert store.image_path(png.sha256) == store.root / "images" / png.sha256[:2] / (
        png.sha256 + ".png"
    )
    assert store.image_path(jpeg.sha256).name == jpeg.sha256 + ".jpg"  # by content, not name
    assert store.image_bytes(png.sha256) == pictures[1]

    store.image_path(png.sha256).unlink()
    with pytest.raises(StoreError, match="moved or deleted outside the app; add the image again"):
        store.image_bytes(png.sha256)


# Deleting


@pytest.mark.parametrize("keep_images", [True, False])
def test_delete_class_keeps_or_removes_its_examples(store, pictures, keep_images):
    project = store.create_project("Birds")
    store.add_class(project.id, "robin")
    store.add_class(project.id, "wren")
    robins = store.add_images(project.id, named(pictures, 0, 3), "robin").added
    wrens = store.add_images(project.id, named(pictures, 3, 5), "wren").added

    store.delete_class(project.id, "robin", keep_images=keep_images)

    assert [c.name for c in store.list_classes(project.id)] == ["wren"]
    assert store.list_images(project.id, class_name="wren") == wrens
    unlabeled = store.list_images(project.id, labeled=False)
    assert [i.sha256 for i in unlabeled] == ([i.sha256 for i in robins] if keep_images else [])
    store.add_class(project.id, "robin")  # the name is free again
    assert store.list_images(project.id, class_name="robin") == []


def test_delete_project_then_purge_and_vacuum_removes_only_unused_files(store, pictures):
    birds = store.create_project("Birds")
    fish = store.create_project("Fish")
    store.add_images(birds.id, named(pictures, 0, 4))
    store.add_images(fish.id, named(pictures, 2, 6))  # two files shared with Birds
    store.add_class(birds.id, "robin")
    store.confirm_labels(birds.id, [image_sha256(pictures[1])])
    store.mark_none_of_these(birds.id, [image_sha256(pictures[2])])
    store.record_accuracy(birds.id, AccuracyPoint(4, 0.5, 0.2, 0.8))

    store.delete_project(birds.id)

    assert store.list_projects() == [fish]
    assert store.vacuum_blobs() == 0  # in the trash: nothing of it goes yet
    assert store.purge_trash() == 0
    assert store.purge_trash(now=datetime.now(timezone.utc) + timedelta(days=TRASH_DAYS + 1)) == 1
    with sqlite3.connect(store.root / "fsl.sqlite") as db:
        for table in (
            "classes",
            "project_images",
            "confirmed_labels",
            "none_of_these",
            "accuracy_history",
        ):
            count = db.execute(f"SELECT COUNT(*) FROM {table} WHERE project_id = ?", (birds.id,))
            assert count.fetchone()[0] == 0, table
    assert store.vacuum_blobs() == 2
    assert [image_sha256(store.image_bytes(i.sha256)) for i in store.list_images(fish.id)] == [
        image_sha256(p) for p in pictures[2:6]
    ]
    assert len(list((store.root / "images").glob("*/*"))) == 4
    assert store.vacuum_blobs() == 0


# What the user told the app about images


def test_kept_labels_and_none_of_these_last_and_go_with_their_image(store, pictures):
    project = store.create_project("Birds")
    store.add_class(project.id, "robin")
    robins = [i.sha256 for i in store.add_images(project.id, named(pictures, 0, 3), "robin").added]
    pool = [i.sha256 for i in store.add_images(project.id, named(pictures, 3, 7)).added]

    assert store.confirm_labels(project.id, [*robins[:2], "f" * 64]) == 2  # not in it: skipped
    assert store.confirm_labels(project.id, robins[:1]) == 0  # already kept
    assert store.mark_none_of_these(project.id, [pool[2], pool[0], pool[1]]) == 3
    assert store.mark_none_of_these(project.id, robins[2:]) == 0  # labeled: it is in a class

    with Store(store.root) as reopened:
        assert reopened.confirmed_labels(project.id) == set(robins[:2])
        assert reopened.none_of_these(project.id) == pool[:3]  # in the project's order

    # Labeling takes a "none of these" back; moving to unlabeled does not decide anything.
    store.label(project.id, pool[:1], "robin")
    store.label(project.id, pool[1:2], None)
    assert store.none_of_these(project.id) == pool[1:3]
    store.label(project.id, pool[:1], None)
    assert store.none_of_these(project.id) == pool[1:3]  # the mark is not restored

    # An image that leaves the project takes its notes along, also when it comes back.
    store.remove_images(project.id, [robins[0], pool[1]])
    assert store.confirmed_labels(project.id) == {robins[1]}
    assert store.none_of_these(project.id) == pool[2:3]
    store.add_images(project.id, named(pictures, 0, 1))
    assert store.confirmed_labels(project.id) == {robins[1]}
    assert integrity(store.root) == "ok"


def test_skipped_pictures_stay_skipped_across_sessions_until_offered_again(store, pictures):
    project = store.create_project("Birds")
    pool = [i.sha256 for i in store.add_images(project.id, named(pictures, 0, 4)).added]
    other = store.create_project("Fish")

    assert store.skip(project.id, [pool[2], pool[0], "f" * 64]) == 2  # not in it: left out
    assert store.skip(project.id, pool[:1]) == 0  # already skipped
    with Store(store.root) as reopened:  # a reload, another tab, a restart
        assert reopened.skipped(project.id) == [pool[0], pool[2]]  # in the project's order
    assert store.skipped(other.id) == []  # per project

    store.remove_images(project.id, pool[:1])  # a skip goes with its picture
    assert store.skipped(project.id) == [pool[2]]
    assert store.unskip(project.id) == 1
    assert store.skipped(project.id) == []
    assert integrity(store.root) == "ok"


def test_accuracy_history_keeps_one_point_per_number_of_labels(store):
    project = store.create_project("Birds")
    store.record_accuracy(project.id, AccuracyPoint(6, 0.5, 0.2, 0.8))
    store.record_accuracy(project.id, AccuracyPoint(4, 0.25, 0.05, 0.7))
    store.record_accuracy(project.id, AccuracyPoint(6, 2 / 3, 0.3, 0.9))  # measured again

    with Store(store.root) as reopened:
        assert reopened.accuracy_history(project.id) == [
            AccuracyPoint(4, 0.25, 0.05, 0.7),
            AccuracyPoint(6, 2 / 3, 0.3, 0.9),
        ]
    assert store.accuracy_history(store.create_project("Fish").id) == []
    store.delete_project(project.id)
    with pytest.raises(StoreError, match="This project no longer exists"):
        store.record_accuracy(project.id, AccuracyPoint(7, 0.5, 0.2, 0.8))


# Crashes and failures part-way through a save


def test_a_failure_inside_the_transaction_leaves_the_project_as_it_was(store, pictures):
    project = store.create_project("Birds")
    store.add_class(project.id, "robin")
    store.add_images(project.id, named(pictures, 0, 3), "robin")
    before = snapshot(store, project.id)

    # SQLite itself fails the fifth row of the project, after two of the new ones went in.
    store._db.execute(
        "CREATE TEMP TRIGGER crash AFTER INSERT ON main.project_images"
        " WHEN (SELECT COUNT(*) FROM main.project_images WHERE project_id = NEW.project_id) >= 5"
        " BEGIN SELECT RAISE(ABORT, 'simulated crash'); END"
    )
    with pytest.raises(sqlite3.IntegrityError, match="simulated crash"):
        store.add_images(project.id, named(pictures, 3, 8), "robin")
    assert snapshot(store, project.id) == before

    store._db.execute("DROP TRIGGER crash")
    assert len(store.add_images(project.id, named(pictures, 3, 8), "robin").added) == 5
    assert integrity(store.root) == "ok"


def test_a_failed_file_write_adds_nothing(store, pictures, monkeypatch):
    project = store.create_project("Birds")
    store.add_images(project.id, named(pictures, 0, 2))
    before = snapshot(store, project.id)

    write_blob = store_module._write_blob
    writes = Counter()

    def disk_fills_up(path: Path, data: bytes) -> None:
        writes["calls"] += 1
        if writes["calls"] == 3:
            raise OSError(errno.ENOSPC, "No space left on device")
        write_blob(path, data)

    monkeypatch.setattr(store_module, "_write_blob", disk_fills_up)
    with pytest.raises(StoreError) as caught:
        store.add_images(project.id, named(pictures, 2, 6, "new"))
    assert str(caught.value) == (
        f"'new-4.img' could not be saved in the data folder '{store.root}' (No space left on "
        "device), so nothing was added. Free some disk space or fix the folder's permissions, "
        "then try again."
    )
    assert snapshot(store, project.id) == before
    assert store.vacuum_blobs() == 2  # the two files written before the disk filled up

    monkeypatch.setattr(store_module, "_write_blob", write_blob)
    assert len(store.add_images(project.id, named(pictures, 2, 6, "new")).added) == 4


def test_a_vacuum_while_files_are_being_written_loses_nothing(store, pictures, monkeypatch):
    """Another tab's vacuum may take a new file before its rows are saved; the save restores it."""
    project = store.create_project("Birds")
    write_blob = store_module._write_blob
    writes = Counter()

    with Store(store.root) as other_tab:

        def write_then_vacuum(path: Path, data: bytes) -> None:
            write_blob(path, data)
            writes["calls"] += 1
            if writes["calls"] <= 3:  # while the three files are written, before the rows
                writes["vacuumed"] += other_tab.vacuum_blobs()

        monkeypatch.setattr(store_module, "_write_blob", write_then_vacuum)
        added = store.add_images(project.id, named(pictures, 0, 3)).added

    assert writes == {"calls": 6, "vacuumed": 3}
    assert [store.image_bytes(i.sha256) for i in added] == pictures[:3]


STOP_MID_SAVE = """
    import os, sys, time
    from pathlib import Path
    from fsl_app.project.store import Store

    root, project_id, stop_after, how, *paths = sys.argv[1:]

    def stop():
        if how == "exit":
            os._exit(3)
        print("inside the transaction", flush=True)
        time.sleep(60)  # holding SQLite's write lock until the parent kills us

    store = Store(root)
    store._db.create_function("stop", 0, stop)
    store._db.execute(
        "CREATE TEMP TRIGGER stop AFTER INSERT ON main.project_images WHEN (SELECT COUNT(*)"
        f" FROM main.project_images WHERE project_id = NEW.project_id) >= {stop_after}"
        " BEGIN SELECT stop(); END"
    )
    files = [(Path(p).name, Path(p).read_bytes()) for p in paths]
    store.add_images(int(project_id), files, "robin")
"""


@pytest.mark.parametrize("how", ["exit", "kill"])
def test_a_process_that_dies_mid_save_leaves_the_project_as_it_was(store, pictures, tmp_path, how):
    project = store.create_project("Birds")
    store.add_class(project.id, "robin")
    store.add_images(project.id, named(pictures, 0, 3), "robin")
    before = snapshot(store, project.id)
    paths = write_files(tmp_path / "upload", named(pictures, 3, 9, "new"))

    child = subprocess.Popen(
        python_command(STOP_MID_SAVE, str(store.root), str(project.id), "5", how, *paths),
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        if how == "kill":
            assert child.stdout.readline() == "inside the transaction\n", child.stderr.read()
            assert snapshot(store, project.id) == before  # readers go on meanwhile
            child.send_signal(signal.SIGKILL)
        assert child.wait(timeout=120) == (3 if how == "exit" else -signal.SIGKILL)
    finally:
        child.kill()
        child.communicate()

    with Store(store.root) as reopened:
        assert integrity(reopened.root) == "ok"
        assert snapshot(reopened, project.id) == before
        assert reopened.vacuum_blobs() == 6  # files the child wrote before it died
        report = reopened.add_images(project.id, read_files(paths), "robin")
        assert len(report.added) == 6
        assert [c.n_examples for c in reopened.list_classes(project.id)] == [9]


# Two writers at once


def write_concurrently(store: Store, project_id: int, class_name: str, files: Files) -> Counter:
    """One writer's share: add in small batches, unlabel one of each, change settings, rename.

    Both writers upload some of the same pictures, so they race on duplicates too.
    """
    done = Counter()
    for start in range(0, len(files), 3):
        report = store.add_images(project_id, files[start : start + 3], class_name)
        done["added"] += len(report.added)
        done["duplicates"] += len(report.duplicates)
        done["unlabeled"] += store.label(project_id, [i.sha256 for i in report.added[:1]], None)
        store.update_settings(project_id, {f"{class_name} {start}": start})
    store.rename_class(project_id, class_name, f"{class_name} (done)")
    return done


def interleaved(own: Files, shared: Files) -> Files:
    return [file for pair in zip(own, shared, strict=False) for file in pair] + own[len(shared) :]


@pytest.fixture
def race(store, pictures) -> tuple[int, dict[str, Files]]:
    """A project with classes 'a' and 'b' and each writer's files: 12 own and 9 shared."""
    project = store.create_project("Race")
    store.add_class(project.id, "a")
    store.add_class(project.id, "b")
    shared = named(pictures, 100, 109, "shared")
    files = {
        "a": interleaved(named(pictures, 0, 12, "a"), shared),
        "b": interleaved(named(pictures, 50, 62, "b"), shared),
    }
    return project.id, files


def check_race(store: Store, project_id: int, done: dict[str, Counter]) -> None:
    assert integrity(store.root) == "ok"
    assert done["a"]["added"] + done["b"]["added"] == 33
    assert done["a"]["duplicates"] + done["b"]["duplicates"] == 9
    assert [(c.name, c.n_examples) for c in store.list_classes(project_id)] == [
        ("a (done)", done["a"]["added"] - done["a"]["unlabeled"]),
        ("b (done)", done["b"]["added"] - done["b"]["unlabeled"]),
    ]
    unlabeled = done["a"]["unlabeled"] + done["b"]["unlabeled"]
    assert len(store.list_images(project_id, labeled=False)) == unlabeled
    assert len(store.list_images(project_id)) == 33
    assert len(list((store.root / "images").glob("*/*"))) == 33
    settings = store.get_project(project_id).settings
    assert sorted(settings) == sorted(f"{c} {start}" for c in "ab" for start in range(0, 21, 3))


@pytest.mark.parametrize("stores", ["one store, two threads", "a store per thread"])
def test_two_threads_writing_at_once(store, race, stores):
    project_id, files = race
    with (
        Store(store.root) as other_store,
        ThreadPoolExecutor(max_workers=2) as pool,
    ):
        writers = {"a": store, "b": store if stores.startswith("one") else other_store}
        futures = {
            name: pool.submit(write_concurrently, writer, project_id, name, files[name])
            for name, writer in writers.items()
        }
        done = {name: future.result() for name, future in futures.items()}
    check_race(store, project_id, done)


def test_two_processes_writing_at_once(store, race, tmp_path):
    project_id, files = race
    code = """
        import json, sys
        sys.path.insert(0, sys.argv[1])
        from test_store import read_files, write_concurrently
        from fsl_app.project.store import Store

        root, project_id, class_name, *paths = sys.argv[2:]
        with Store(root) as store:
            done = write_concurrently(store, int(project_id), class_name, read_files(paths))
        print(json.dumps(done))
    """
    children = {
        name: subprocess.Popen(
            python_command(
                code,
                str(REPO / "tests"),
                str(store.root),
                str(project_id),
                name,
                *write_files(tmp_path / name, files[name]),
            ),
            cwd=REPO,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for name in files
    }
    done = {}
    for name, child in children.items():
        out, err = child.communicate(timeout=120)
        assert child.returncode == 0, err
        done[name] = Counter(json.loads(out))
    check_race(store, project_id, done)


# The trash


def test_a_deleted_project_comes_back_from_the_trash_as_it_was(store, pictures):
    project = store.create_project("Birds")
    store.add_class(project.id, "robin")
    robins = store.add_images(project.id, named(pictures, 0, 3), "robin").added
    store.confirm_labels(project.id, [robins[0].sha256])
    before = snapshot(store, project.id)

    store.delete_project(project.id)

    assert store.list_projects() == []
    (trashed,) = store.list_trash()
    assert (trashed.kind, trashed.name, trashed.n_images) == ("project", "Birds", 3)
    with pytest.raises(StoreError, match="is kept under 'Recently deleted'"):
        store.create_project("birds")  # the trashed project keeps its name
    store.restore(trashed)
    assert snapshot(store, project.id) == before
    assert store.confirmed_labels(project.id) == {robins[0].sha256}
    assert store.list_trash() == []
    with pytest.raises(StoreError, match="no longer in the trash"):
        store.restore(trashed)


def test_a_class_deleted_with_its_images_comes_back_with_them(store, pictures):
    project = store.create_project("Birds")
    store.add_class(project.id, "robin")
    store.add_class(project.id, "wren")
    robins = store.add_images(project.id, named(pictures, 0, 3), "robin").added
    store.confirm_labels(project.id, [robins[1].sha256])

    store.delete_class(project.id, "robin", keep_images=False)

    assert [c.name for c in store.list_classes(project.id)] == ["wren"]
    assert store.list_images(project.id) == []
    assert store.vacuum_blobs() == 0  # the trash keeps their files
    # Meanwhile one picture is added again, and a new class takes the name.
    store.add_images(project.id, [("again.png", pictures[0])])
    store.add_class(project.id, "Robin")
    (trashed,) = store.list_trash()
    assert (trashed.kind, trashed.name, trashed.project_name, trashed.n_images) == (
        "class",
        "robin",
        "Birds",
        3,
    )
    with pytest.raises(StoreError, match="has a new class called 'Robin'; rename it"):
        store.restore(trashed)
    store.delete_class(project.id, "Robin", keep_images=True)

    store.restore(trashed)

    assert [c.name for c in store.list_classes(project.id)] == ["wren", "robin"]
    assert [i.sha256 for i in store.list_images(project.id, class_name="robin")] == [
        i.sha256 for i in robins[1:]
    ]
    assert [i.name for i in store.list_images(project.id, labeled=False)] == ["again.png"]
    assert store.confirmed_labels(project.id) == {robins[1].sha256}
    assert store.list_trash() == []
    assert integrity(store.root) == "ok"


def test_tidy_empties_the_trash_after_its_days_and_removes_leftover_files(store, pictures):
    birds = store.create_project("Birds")
    fish = store.create_project("Fish")
    store.add_class(fish.id, "trout")
    store.add_images(birds.id, named(pictures, 0, 2))
    store.add_images(fish.id, named(pictures, 2, 4), "trout")
    store.add_images(fish.id, named(pictures, 4, 5))
    store.delete_project(birds.id)
    store.delete_class(fish.id, "trout", keep_images=False)
    shard = store.root / "images" / "ab"
    shard.mkdir(exist_ok=True)
    killed, running = shard / "killed.part", shard / "running.part"
    killed.write_bytes(b"half a picture")
    running.write_bytes(b"half a picture")
    two_hours_ago = time.time() - 2 * 3600
    os.utime(killed, (two_hours_ago, two_hours_ago))

    store.tidy()  # nothing is due yet; only the killed save's file goes

    assert not killed.exists() and running.exists()
    assert len(store.list_trash()) == 2
    later = datetime.now(timezone.utc) + timedelta(days=TRASH_DAYS + 1)
    assert store.purge_trash(now=later) == 2
    assert store.vacuum_blobs() == 4
    assert store.list_trash() == []
    assert [p.name for p in store.list_projects()] == ["Fish"]
    assert (
        len(
            list((store.root / "images").glob("*/*.png"))
            + list((store.root / "images").glob("*/*.jpg"))
        )
        == 1
    )
    assert integrity(store.root) == "ok"


def test_a_data_folder_from_schema_3_gets_a_trash_and_keeps_its_projects(tmp_path, pictures):
    with sqlite3.connect(tmp_path / "fsl.sqlite") as db:
        for statements in store_module._MIGRATIONS[:3]:
            for statement in statements:
                db.execute(statement)
        db.execute("PRAGMA user_version = 3")
        db.execute("INSERT INTO projects (name, created) VALUES ('Birds', 'then')")
        db.execute("INSERT INTO classes (project_id, name, position) VALUES (1, 'robin', 0)")
    db.close()

    with Store(tmp_path) as store:
        (birds,) = store.list_projects()
        assert (birds.name, [c.name for c in store.list_classes(birds.id)]) == ("Birds", ["robin"])
        store.add_images(birds.id, named(pictures, 0, 2), "robin")
        store.delete_class(birds.id, "robin", keep_images=False)
        store.delete_project(birds.id)
        store.restore(store.list_trash()[0])
        store.restore(store.list_trash()[0])
        assert len(store.list_images(birds.id, class_name="robin")) == 2
    with sqlite3.connect(tmp_path / "fsl.sqlite") as db:
        assert db.execute("PRAGMA user_version").fetchone()[0] == len(store_module._MIGRATIONS)
    db.close()
    assert integrity(tmp_path) == "ok"
