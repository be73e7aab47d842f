"""Projects on disk: SQLite for what people said, content-addressed files for what they uploaded.

A project (its classes, labeled examples, unlabeled images, what the user said about them, and
its settings) has to survive restarts, two browser tabs writing at once, and a crash in the
middle of a save. So:

- every change is one SQLite transaction (WAL journal), begun IMMEDIATE so that two writers queue
  up behind SQLite's busy timeout instead of failing half-way, and anything that goes wrong
  inside it rolls the whole change back;
- image bytes are kept once per sha256 under ``images/ab/abcdef....ext``, written to a temporary
  file that is renamed into place, so a file under its final name is always complete. A file
  left behind by a failed save belongs to no row; :meth:`Store.vacuum_blobs` removes it;
- names people type are data: files are named by hash only, never by a project or class;
- a delete can be undone for :data:`TRASH_DAYS` days. A deleted project keeps all its rows,
  marked with the time it was deleted (``projects.deleted``), and is hidden from everything but
  :meth:`Store.list_trash`; a class deleted with its images moves to ``trashed_classes`` and its
  images to ``trashed_class_images``, which keep their files. :meth:`Store.restore` brings either
  back. :meth:`Store.tidy` deletes for good what has been in the trash longer than that, then
  the image files nothing uses any more and the temporary files of saves that were killed; the
  app calls it once per process, when it first opens a data folder, so the folder stops growing
  with every delete.

The store keeps and returns plain data. It decodes uploads only to refuse bad ones, through
:func:`fsl_app.images.load_image`, and computes nothing else.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import sqlite3
import tempfile
import threading
import time
import unicodedata
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

from PIL import Image

from fsl_app.files import write_atomically
from fsl_app.images import ImageLoadError, load_image

DATA_DIR_ENV = "FSL_APP_DATA"
DEFAULT_DATA_DIR = "fsl_data"
DATABASE_NAME = "fsl.sqlite"
MAX_NAME_LENGTH = 100

_BUSY_TIMEOUT_SECONDS = 30
_TEMP_SUFFIX = ".part"
# A temporary image file this old belongs to no save still running, so vacuum_blobs may take it.
_STALE_TEMP_SECONDS = 3600

# File name endings for the formats fsl_app.images accepts (MPO is a multi-picture JPEG).
_EXTENSIONS = {
    "JPEG": ".jpg",
    "MPO": ".jpg",
    "PNG": ".png",
    "WEBP": ".webp",
    "BMP": ".bmp",
    "GIF": ".gif",
    "TIFF": ".tif",
    "HEIF": ".heic",
}

# _MIGRATIONS[v] brings a database from user_version v to v + 1. A new version of the schema is
# one more entry here; existing data folders are upgraded when a Store opens them.
_SCHEMA_V1 = (
    # AUTOINCREMENT keeps ids from being reused: a tab still holding the id of a deleted project
    # must get "no longer exists", not someone else's new project.
    """CREATE TABLE projects (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        name TEXT NOT NULL UNIQUE COLLATE NOCASE,
        created TEXT NOT NULL,
        settings TEXT NOT NULL DEFAULT '{}' CHECK (json_valid(settings))
    )""",
    """CREATE TABLE classes (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        project_id INTEGER NOT NULL REFERENCES projects (id) ON DELETE CASCADE,
        name TEXT NOT NULL COLLATE NOCASE,
        position INTEGER NOT NULL,
        UNIQUE (project_id, name),
        UNIQUE (project_id, id)
    )""",
    # One row per stored file, whichever projects use it.
    """CREATE TABLE images (
        sha256 TEXT PRIMARY KEY,
        width INTEGER NOT NULL,
        height INTEGER NOT NULL,
        format TEXT NOT NULL,
        ext TEXT NOT NULL,
        size_bytes INTEGER NOT NULL,
        added TEXT NOT NULL
    ) WITHOUT ROWID""",
    # An image is in a project once: labeled (class_id) or unlabeled (NULL). The two-column
    # foreign key makes a label from another project's classes impossible.
    """CREATE TABLE project_images (
        project_id INTEGER NOT NULL REFERENCES projects (id) ON DELETE CASCADE,
        sha256 TEXT NOT NULL REFERENCES images (sha256),
        class_id INTEGER,
        name TEXT NOT NULL,
        added TEXT NOT NULL,
        PRIMARY KEY (project_id, sha256),
        FOREIGN KEY (project_id, class_id) REFERENCES classes (project_id, id)
    )""",
    "CREATE INDEX project_images_by_class ON project_images (project_id, class_id)",
    "CREATE INDEX project_images_by_sha256 ON project_images (sha256)",
    # The latest prediction per image, learner and backbone; it goes when its image leaves.
    """CREATE TABLE predictions (
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
    )""",
)
# Three things the user told the app used to be kept in the settings JSON, where nothing tied
# them to their images. They get tables, so they go with their image or project like the rest.
_SETTINGS_TO_TABLES_V2 = (
    # Examples whose label the user kept after the label check doubted it: not doubted again.
    """CREATE TABLE confirmed_labels (
        project_id INTEGER NOT NULL REFERENCES projects (id) ON DELETE CASCADE,
        sha256 TEXT NOT NULL,
        PRIMARY KEY (project_id, sha256),
        FOREIGN KEY (project_id, sha256) REFERENCES project_images (project_id, sha256)
            ON DELETE CASCADE
    )""",
    # Unlabeled images the user said belong to no class: not suggested for labeling again.
    """CREATE TABLE none_of_these (
        project_id INTEGER NOT NULL REFERENCES projects (id) ON DELETE CASCADE,
        sha256 TEXT NOT NULL,
        PRIMARY KEY (project_id, sha256),
        FOREIGN KEY (project_id, sha256) REFERENCES project_images (project_id, sha256)
            ON DELETE CASCADE
    )""",
    # The held-out accuracy the project reached with so many labeled images, and its interval.
    """CREATE TABLE accuracy_history (
        project_id INTEGER NOT NULL REFERENCES projects (id) ON DELETE CASCADE,
        n_labels INTEGER NOT NULL,
        accuracy REAL NOT NULL,
        low REAL NOT NULL,
        high REAL NOT NULL,
        PRIMARY KEY (project_id, n_labels)
    )""",
    # Moved from the settings keys the pages wrote until now. Entries for images no longer in
    # the project are dropped (the tables refuse them), and so are "none of these" marks of
    # images labeled since (labeling an image clears its mark from now on, see Store.label).
    """INSERT OR IGNORE INTO confirmed_labels (project_id, sha256)
        SELECT pi.project_id, pi.sha256
        FROM projects AS p, json_each(p.settings, '$.labels_confirmed') AS j
        JOIN project_images AS pi ON pi.project_id = p.id AND pi.sha256 = j.value""",
    """INSERT OR IGNORE INTO none_of_these (project_id, sha256)
        SELECT pi.project_id, pi.sha256
        FROM projects AS p, json_each(p.settings, '$.none_of_these') AS j
        JOIN project_images AS pi ON pi.project_id = p.id AND pi.sha256 = j.value
        WHERE pi.class_id IS NULL""",
    """INSERT OR REPLACE INTO accuracy_history (project_id, n_labels, accuracy, low, high)
        SELECT p.id, json_extract(j.value, '$.labels'), json_extract(j.value, '$.accuracy'),
            json_extract(j.value, '$.low'), json_extract(j.value, '$.high')
        FROM projects AS p, json_each(p.settings, '$.accuracy_history') AS j
        WHERE j.type = 'object'
            AND json_type(j.value, '$.labels') = 'integer'
            AND json_type(j.value, '$.accuracy') IN ('integer', 'real')
            AND json_type(j.value, '$.low') IN ('integer', 'real')
            AND json_type(j.value, '$.high') IN ('integer', 'real')""",
    """UPDATE projects SET settings = json_remove(
        settings, '$.labels_confirmed', '$.none_of_these', '$.accuracy_history')""",
)
# Predictions are recomputed from the fitted classifier in milliseconds; a saved copy was a
# second answer that could disagree with the first, and nothing read it.
_DROP_PREDICTIONS_V3 = ("DROP TABLE predictions",)
# The trash. A deleted project keeps its rows and name, marked with when it was deleted (NULL:
# not deleted). A class deleted with its images leaves the project and waits here with what is
# needed to put it back; its image rows stay in ``images`` (vacuum_blobs keeps them).
_TRASH_V4 = (
    "ALTER TABLE projects ADD COLUMN deleted TEXT",
    """CREATE TABLE trashed_classes (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        project_id INTEGER NOT NULL REFERENCES projects (id) ON DELETE CASCADE,
        name TEXT NOT NULL,
        deleted TEXT NOT NULL
    )""",
    """CREATE TABLE trashed_class_images (
        trashed_class_id INTEGER NOT NULL REFERENCES trashed_classes (id) ON DELETE CASCADE,
        sha256 TEXT NOT NULL REFERENCES images (sha256),
        name TEXT NOT NULL,
        added TEXT NOT NULL,
        confirmed INTEGER NOT NULL,
        PRIMARY KEY (trashed_class_id, sha256)
    )""",
    "CREATE INDEX trashed_class_images_by_sha256 ON trashed_class_images (sha256)",
)
# Pictures the user skipped on Label next: kept with the project, so a reload or another tab
# does not bring them back; they go with their image.
_SKIPPED_V5 = (
    """CREATE TABLE skipped (
        project_id INTEGER NOT NULL REFERENCES projects (id) ON DELETE CASCADE,
        sha256 TEXT NOT NULL,
        PRIMARY KEY (project_id, sha256),
        FOREIGN KEY (project_id, sha256) REFERENCES project_images (project_id, sha256)
            ON DELETE CASCADE
    )""",
)
_MIGRATIONS: tuple[tuple[str, ...], ...] = (
    _SCHEMA_V1,
    _SETTINGS_TO_TABLES_V2,
    _DROP_PREDICTIONS_V3,
    _TRASH_V4,
    _SKIPPED_V5,
)
# What is deleted can be restored for this many days; Store.tidy then deletes it for good.
TRASH_DAYS = 30

_IMAGE_COLUMNS = """
    SELECT pi.sha256, pi.name, c.name, pi.added, i.width, i.height
    FROM project_images AS pi
    JOIN images AS i ON i.sha256 = pi.sha256
    LEFT JOIN classes AS c ON c.id = pi.class_id
"""


class StoreError(Exception):
    """Something a person can act on went wrong; ``str(err)`` says what and what to do.

    Whenever it is raised from a change, nothing was changed.
    """


@dataclass(frozen=True)
class Project:
    id: int
    name: str
    created: str  # ISO 8601, UTC
    settings: dict[str, Any]  # backbone, learner, thresholds, ... as the app chose to keep them


@dataclass(frozen=True)
class ProjectClass:
    id: int
    name: str
    n_examples: int


@dataclass(frozen=True)
class ProjectImage:
    sha256: str
    name: str  # the file name it was uploaded under
    class_name: str | None  # None: unlabeled
    added: str  # ISO 8601, UTC
    width: int  # upright size, as the picture is shown
    height: int


@dataclass(frozen=True)
class AccuracyPoint:
    """The held-out accuracy measured when the project had ``n_labels`` labeled images."""

    n_labels: int
    accuracy: float
    low: float  # 95% interval
    high: float


@dataclass(frozen=True)
class Duplicate:
    """An upload whose bytes are already in the project, so it was not added again."""

    name: str
    sha256: str
    existing_name: str
    class_name: str | None  # where the existing copy is; None: unlabeled


@dataclass(frozen=True)
class Rejected:
    name: str
    message: str  # a full sentence for a person, from fsl_app.images


@dataclass
class AddReport:
    """What :meth:`Store.add_images` did with each file it was given."""

    added: list[ProjectImage] = field(default_factory=list)
    duplicates: list[Duplicate] = field(default_factory=list)
    rejected: list[Rejected] = field(default_factory=list)


@dataclass
class DatasetReport(AddReport):
    """What :meth:`Store.add_dataset` did: the files as in :class:`AddReport`, and the classes
    it created (in the order they were named)."""

    classes_created: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class Trashed:
    """A deleted project, or a class deleted with its images, that can still be restored."""

    kind: str  # "project" or "class"
    id: int  # the project's id, or the trashed class's (not a class id)
    name: str
    project_name: str  # the project it was in; for a project, its own name
    deleted: str  # ISO 8601, UTC
    n_images: int

    @property
    def purged_after(self) -> str:
        """The day (ISO 8601) from which :meth:`Store.tidy` deletes it for good."""
        deleted = datetime.fromisoformat(self.deleted)
        return (deleted + timedelta(days=TRASH_DAYS)).date().isoformat()


@dataclass(frozen=True)
class _Upload:
    """An upload that load_image accepted: the bytes and the few facts the store keeps."""

    name: str
    data: bytes  # b"" once the file is written, when many uploads are kept until the commit
    sha256: str
    width: int
    height: int
    format: str
    ext: str
    size_bytes: int


def default_data_dir() -> Path:
    """``$FSL_APP_DATA``, else ``./fsl_data``."""
    return Path(os.environ.get(DATA_DIR_ENV) or DEFAULT_DATA_DIR)


class Store:
    """All projects in one data folder.

    One SQLite connection per Store, shared by threads under a lock (Streamlit runs each session
    in a thread). Other Store objects on the same folder, in this process or another, coordinate
    through SQLite's own locking, so each browser tab or command may open its own.
    """

    def __init__(self, root: str | os.PathLike[str] | None = None) -> None:
        self.root = Path(root if root is not None else default_data_dir()).expanduser().absolute()
        self._blobs = self.root / "images"
        self._lock = threading.RLock()
        try:
            self._blobs.mkdir(parents=True, exist_ok=True)
            # SQLite would only notice a read-only folder at the first write, and the image
            # folder not at all; find out now, while the message can still say what to do.
            for folder in (self.root, self._blobs):
                with tempfile.TemporaryFile(dir=folder):
                    pass
        except OSError as err:
            raise StoreError(_unwritable_message(self.root, err.strerror or str(err))) from err
        try:
            self._db = sqlite3.connect(
                self.root / DATABASE_NAME,
                timeout=_BUSY_TIMEOUT_SECONDS,
                isolation_level=None,  # transactions are begun explicitly, see _transaction
                check_same_thread=False,
            )
        except sqlite3.Error as err:
            raise StoreError(_unwritable_message(self.root, str(err))) from err
        try:
            self._db.execute("PRAGMA journal_mode = WAL")
            self._db.execute("PRAGMA foreign_keys = ON")
            self._db.execute("PRAGMA synchronous = FULL")
            self._migrate()
        except StoreError:
            self._db.close()
            raise
        except sqlite3.OperationalError as err:
            self._db.close()
            raise StoreError(_unwritable_message(self.root, str(err))) from err
        except sqlite3.DatabaseError as err:
            self._db.close()
            raise StoreError(
                f"'{self.root / DATABASE_NAME}' is not a project database this app can read "
                f"({err}). Choose another folder with {DATA_DIR_ENV}, or restore the file from "
                "a backup."
            ) from err

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # Projects

    def create_project(self, name: str, settings: Mapping[str, Any] | None = None) -> Project:
        name = check_name("project", name)
        with self._transaction() as db:
            self._refuse_taken_project_name(db, name)
            cursor = db.execute(
                "INSERT INTO projects (name, created, settings) VALUES (?, ?, ?)",
                (name, _now(), json.dumps(dict(settings or {}))),
            )
            return self._project(db, cursor.lastrowid)

    def list_projects(self) -> list[Project]:
        rows = self._fetch(
            "SELECT id, name, created, settings FROM projects WHERE deleted IS NULL"
            " ORDER BY name, id"
        )
        return [Project(i, name, created, json.loads(s)) for i, name, created, s in rows]

    def get_project(self, project_id: int) -> Project:
        with self._lock:
            return self._project(self._db, project_id)

    def rename_project(self, project_id: int, name: str) -> Project:
        name = check_name("project", name)
        with self._transaction() as db:
            self._project(db, project_id)
            self._refuse_taken_project_name(db, name, project_id)
            db.execute("UPDATE projects SET name = ? WHERE id = ?", (name, project_id))
            return self._project(db, project_id)

    def delete_project(self, project_id: int) -> None:
        """Move the project, with everything in it, to the trash (see :meth:`list_trash`).

        It keeps its name there: no other project can take it until it is restored or purged.
        """
        with self._transaction() as db:
            db.execute(
                "UPDATE projects SET deleted = ? WHERE id = ? AND deleted IS NULL",
                (_now(), project_id),
            )

    def discard_project(self, project_id: int) -> None:
        """Delete a project for good, at once, without the trash: for one the app was making
        and did not finish (a half-made demo), which no user made and none should restore.
        Its image files go at the next :meth:`vacuum_blobs`."""
        with self._transaction() as db:
            db.execute("DELETE FROM projects WHERE id = ?", (project_id,))

    def update_settings(self, project_id: int, changes: Mapping[str, Any]) -> dict[str, Any]:
        """Merge ``changes`` into the settings and return them all.

        Read and write happen in one transaction, so two tabs changing different settings at
        once both keep their change.
        """
        with self._transaction() as db:
            settings = self._project(db, project_id).settings | dict(changes)
            db.execute(
                "UPDATE projects SET settings = ? WHERE id = ?",
                (json.dumps(settings), project_id),
            )
            return settings

    # Classes

    def add_class(self, project_id: int, name: str) -> ProjectClass:
        name = check_name("class", name)
        with self._transaction() as db:
            self._project(db, project_id)
            self._refuse_taken_class_name(db, project_id, name)
            return ProjectClass(_insert_class(db, project_id, name), name, 0)

    def list_classes(self, project_id: int) -> list[ProjectClass]:
        """The project's classes in the order they were made, with their number of examples."""
        rows = self._fetch(
            "SELECT c.id, c.name, COUNT(pi.sha256) FROM classes AS c"
            " LEFT JOIN project_images AS pi ON pi.class_id = c.id"
            " WHERE c.project_id = ? GROUP BY c.id ORDER BY c.position",
            (project_id,),
        )
        return [ProjectClass(*row) for row in rows]

    def rename_class(self, project_id: int, name: str, new_name: str) -> None:
        new_name = check_name("class", new_name)
        with self._transaction() as db:
            class_id, _ = self._find_class(db, project_id, name)
            self._refuse_taken_class_name(db, project_id, new_name, class_id)
            db.execute("UPDATE classes SET name = ? WHERE id = ?", (new_name, class_id))

    def delete_class(self, project_id: int, name: str, *, keep_images: bool) -> None:
        """Delete a class; its examples become unlabeled images or leave the project.

        When they leave, the class and its examples go to the trash (see :meth:`list_trash`),
        with which of their labels the user had confirmed. When they stay, the class goes for
        good: there is nothing to restore that the project does not still have.
        """
        with self._transaction() as db:
            class_id, stored_name = self._find_class(db, project_id, name)
            if keep_images:
                db.execute(
                    "UPDATE project_images SET class_id = NULL WHERE class_id = ?", (class_id,)
                )
            else:
                trashed_id = db.execute(
                    "INSERT INTO trashed_classes (project_id, name, deleted) VALUES (?, ?, ?)",
                    (project_id, stored_name, _now()),
                ).lastrowid
                db.execute(
                    "INSERT INTO trashed_class_images"
                    " (trashed_class_id, sha256, name, added, confirmed)"
                    " SELECT ?, pi.sha256, pi.name, pi.added, EXISTS (SELECT 1 FROM"
                    " confirmed_labels AS c WHERE c.project_id = pi.project_id"
                    " AND c.sha256 = pi.sha256)"
                    " FROM project_images AS pi WHERE pi.class_id = ? ORDER BY pi.rowid",
                    (trashed_id, class_id),
                )
                db.execute("DELETE FROM project_images WHERE class_id = ?", (class_id,))
            db.execute("DELETE FROM classes WHERE id = ?", (class_id,))

    # Images

    def add_images(
        self,
        project_id: int,
        files: Sequence[tuple[str, bytes]],
        class_name: str | None = None,
    ) -> AddReport:
        """Add uploaded files (name, bytes) to a class, or unlabeled when ``class_name`` is None.

        Every file is checked by :func:`fsl_app.images.load_image` first: one that is not a
        usable image is reported in ``rejected`` and never stored, and the others are added all
        together or, if saving fails, not at all. Files whose bytes are already in the project
        are reported in ``duplicates`` with the class they are in, and left where they are.
        """
        if class_name is not None:
            with self._lock:  # fail before the slow part, and report the class as it is spelled
                _, class_name = self._find_class(self._db, project_id, class_name)
        report = AddReport()
        uploads: dict[str, _Upload] = {}
        for name, data in files:
            try:
                upload = _checked_upload(name, data)
            except ImageLoadError as err:
                report.rejected.append(Rejected(name, str(err)))
                continue
            first = uploads.setdefault(upload.sha256, upload)
            if first is not upload:
                report.duplicates.append(Duplicate(name, upload.sha256, first.name, class_name))
        # The slow file writes happen before the transaction, so other tabs are not kept waiting.
        for upload in uploads.values():
            self._store_blob(upload)
        with self._transaction() as db:
            self._project(db, project_id)
            class_id = (
                None if class_name is None else self._find_class(db, project_id, class_name)[0]
            )
            existing = _images_in_project(db, project_id, uploads.keys())
            for upload in uploads.values():
                if upload.sha256 in existing:
                    name, existing_class = existing[upload.sha256]
                    report.duplicates.append(
                        Duplicate(upload.name, upload.sha256, name, existing_class)
                    )
                    continue
                # vacuum_blobs may have taken the file since it was written; it deletes only
                # while holding the write lock, which this transaction now holds.
                self._store_blob(upload)
                report.added.append(_insert_image(db, project_id, upload, class_id, class_name))
        return report

    def add_dataset(
        self,
        project_id: int,
        class_names: Iterable[str],
        files: Iterable[tuple[str | None, str, bytes]],
    ) -> DatasetReport:
        """Add many files (class name or None, file name, bytes), creating missing classes.

        All or nothing, like one upload: ``class_names`` are all the classes ``files`` name, and
        each is checked before any file is read, so a bad one raises :class:`StoreError` and
        changes nothing. A class matches an existing one whatever its case. ``files`` is read
        once, one file at a time: each is checked as in :meth:`add_images` and its image file
        written, then its bytes are let go, so a generator reading a large ZIP entry by entry
        never has more than one picture in memory. The classes and images then go in in one
        transaction, so the project gets all of them or, if anything fails, none.
        """
        cleaned = {raw: check_name("class", raw) for raw in class_names}
        self.get_project(project_id)  # before the slow part
        report = DatasetReport()
        uploads: dict[str, tuple[_Upload, str | None]] = {}
        for class_name, name, data in files:
            target = None if class_name is None else cleaned[class_name]
            try:
                upload = _checked_upload(name, data)
            except ImageLoadError as err:
                report.rejected.append(Rejected(name, str(err)))
                continue
            if upload.sha256 in uploads:
                first, first_class = uploads[upload.sha256]
                report.duplicates.append(Duplicate(name, upload.sha256, first.name, first_class))
                continue
            self._store_blob(upload)
            uploads[upload.sha256] = (replace(upload, data=b""), target)
        with self._transaction() as db:
            self._project(db, project_id)
            classes = {
                stored.casefold(): (class_id, stored)
                for class_id, stored in db.execute(
                    "SELECT id, name FROM classes WHERE project_id = ?", (project_id,)
                )
            }
            for name in dict.fromkeys(cleaned.values()):
                if name.casefold() not in classes:
                    classes[name.casefold()] = (_insert_class(db, project_id, name), name)
                    report.classes_created.append(name)
            existing = _images_in_project(db, project_id, uploads.keys())
            for upload, target in uploads.values():
                if upload.sha256 in existing:
                    name, existing_class = existing[upload.sha256]
                    report.duplicates.append(
                        Duplicate(upload.name, upload.sha256, name, existing_class)
                    )
                    continue
                if not self._blob_path(upload.sha256, upload.ext).exists():
                    # Taken by a vacuum in another process between the write and now.
                    raise StoreError(
                        f"The saved copy of '{upload.name}' disappeared while importing, so "
                        "nothing was added; try again."
                    )
                class_id, stored = (None, None) if target is None else classes[target.casefold()]
                report.added.append(_insert_image(db, project_id, upload, class_id, stored))
        return report

    def label(self, project_id: int, sha256s: Iterable[str], class_name: str | None) -> int:
        """Move images of the project into a class, or to unlabeled when ``class_name`` is None.

        Returns how many of them are in the project (and so now in that class); the others,
        removed meanwhile in another window, are skipped. Putting an image in a class takes
        back an earlier "none of these" for it: the user has changed their mind.
        """
        sha256s = _json_list(sha256s)
        with self._transaction() as db:
            class_id = (
                None if class_name is None else self._find_class(db, project_id, class_name)[0]
            )
            if class_id is not None:
                db.execute(
                    "DELETE FROM none_of_these"
                    " WHERE project_id = ? AND sha256 IN (SELECT value FROM json_each(?))",
                    (project_id, sha256s),
                )
            return db.execute(
                "UPDATE project_images SET class_id = ?"
                " WHERE project_id = ? AND sha256 IN (SELECT value FROM json_each(?))",
                (class_id, project_id, sha256s),
            ).rowcount

    def remove_images(self, project_id: int, sha256s: Iterable[str]) -> int:
        """Take images out of the project; returns how many were in it."""
        with self._transaction() as db:
            return db.execute(
                "DELETE FROM project_images"
                " WHERE project_id = ? AND sha256 IN (SELECT value FROM json_each(?))",
                (project_id, _json_list(sha256s)),
            ).rowcount

    def list_images(
        self,
        project_id: int,
        *,
        class_name: str | None = None,
        labeled: bool | None = None,
    ) -> list[ProjectImage]:
        """The project's images in the order they were added.

        ``class_name`` keeps one class; ``labeled`` keeps labeled (True) or unlabeled (False)
        images; with neither, all of them.
        """
        if class_name is not None and labeled is False:
            raise ValueError("class_name selects labeled images; it cannot go with labeled=False")
        query, params = _IMAGE_COLUMNS + " WHERE pi.project_id = ?", [project_id]
        if class_name is not None:
            query += " AND c.name = ?"
            params.append(class_name.strip())
        elif labeled is not None:
            query += f" AND pi.class_id IS {'NOT ' if labeled else ''}NULL"
        rows = self._fetch(query + " ORDER BY pi.rowid", params)
        return [ProjectImage(*row) for row in rows]

    def image_path(self, sha256: str) -> Path:
        """Where the image's file is; the name is its hash, whatever it was uploaded as."""
        rows = self._fetch("SELECT ext FROM images WHERE sha256 = ?", (sha256,))
        if not rows:
            raise StoreError("This image is no longer stored; it may have been removed.")
        return self._blob_path(sha256, rows[0][0])

    def image_bytes(self, sha256: str) -> bytes:
        path = self.image_path(sha256)
        try:
            return path.read_bytes()
        except OSError as err:
            raise StoreError(
                f"The file of this image, '{path}', cannot be read ({err.strerror or err}). "
                "It may have been moved or deleted outside the app; add the image again."
            ) from err

    # What the user told the app about images

    def confirm_labels(self, project_id: int, sha256s: Iterable[str]) -> int:
        """Note that the user checked these examples' labels and kept them.

        The label check doubts an example by comparing it with the others; once the user has
        looked and said it is right, asking again at every visit would only be noise. Returns
        how many were newly confirmed; images removed meanwhile in another window are skipped.
        """
        with self._transaction() as db:
            return db.execute(
                "INSERT OR IGNORE INTO confirmed_labels (project_id, sha256)"
                " SELECT project_id, sha256 FROM project_images"
                " WHERE project_id = ? AND sha256 IN (SELECT value FROM json_each(?))",
                (project_id, _json_list(sha256s)),
            ).rowcount

    def confirmed_labels(self, project_id: int) -> set[str]:
        """The examples whose labels the user kept, by sha256."""
        rows = self._fetch(
            "SELECT sha256 FROM confirmed_labels WHERE project_id = ?", (project_id,)
        )
        return {sha256 for (sha256,) in rows}

    def mark_none_of_these(self, project_id: int, sha256s: Iterable[str]) -> int:
        """Note that these unlabeled images belong to none of the project's classes.

        They are then not suggested for labeling again. A labeled image is left alone (it is in
        a class, perhaps labeled in another window meanwhile), and so is one no longer in the
        project; returns how many were newly marked.
        """
        with self._transaction() as db:
            return db.execute(
                "INSERT OR IGNORE INTO none_of_these (project_id, sha256)"
                " SELECT project_id, sha256 FROM project_images"
                " WHERE project_id = ? AND class_id IS NULL"
                " AND sha256 IN (SELECT value FROM json_each(?))",
                (project_id, _json_list(sha256s)),
            ).rowcount

    def unmark_none_of_these(self, project_id: int, sha256s: Iterable[str]) -> int:
        """Take back "none of these" for these images; returns how many were marked."""
        with self._transaction() as db:
            return db.execute(
                "DELETE FROM none_of_these"
                " WHERE project_id = ? AND sha256 IN (SELECT value FROM json_each(?))",
                (project_id, _json_list(sha256s)),
            ).rowcount

    def none_of_these(self, project_id: int) -> list[str]:
        """The images marked as belonging to no class, by sha256, in the project's order."""
        return self._pictures_in("none_of_these", project_id)

    def skip(self, project_id: int, sha256s: Iterable[str]) -> int:
        """Note that the user passed over these pictures when asked to label them: they are
        not suggested again until :meth:`unskip`. Returns how many were newly skipped; images
        no longer in the project are left out."""
        with self._transaction() as db:
            return db.execute(
                "INSERT OR IGNORE INTO skipped (project_id, sha256)"
                " SELECT project_id, sha256 FROM project_images"
                " WHERE project_id = ? AND sha256 IN (SELECT value FROM json_each(?))",
                (project_id, _json_list(sha256s)),
            ).rowcount

    def unskip(self, project_id: int) -> int:
        """Offer every skipped picture again; returns how many were skipped."""
        with self._transaction() as db:
            return db.execute("DELETE FROM skipped WHERE project_id = ?", (project_id,)).rowcount

    def skipped(self, project_id: int) -> list[str]:
        """The pictures skipped so far, by sha256, in the project's order."""
        return self._pictures_in("skipped", project_id)

    def _pictures_in(self, table: str, project_id: int) -> list[str]:
        """The sha256s a (project_id, sha256) table holds for the project, in the project's
        order (``table`` is one of this class's own table names, never user input)."""
        rows = self._fetch(
            f"SELECT t.sha256 FROM {table} AS t JOIN project_images AS pi"
            " ON pi.project_id = t.project_id AND pi.sha256 = t.sha256"
            " WHERE t.project_id = ? ORDER BY pi.rowid",
            (project_id,),
        )
        return [sha256 for (sha256,) in rows]

    def record_accuracy(self, project_id: int, point: AccuracyPoint) -> None:
        """Keep the accuracy measured at ``point.n_labels`` labeled images.

        One point per number of labels: a new measurement at the same number (after a relabel,
        or with another learner) replaces the old one, so the chart shows one line.
        """
        with self._transaction() as db:
            self._project(db, project_id)
            db.execute(
                "INSERT OR REPLACE INTO accuracy_history (project_id, n_labels, accuracy, low,"
                " high) VALUES (?, ?, ?, ?, ?)",
                (
                    project_id,
                    int(point.n_labels),
                    float(point.accuracy),
                    float(point.low),
                    float(point.high),
                ),
            )

    def accuracy_history(self, project_id: int) -> list[AccuracyPoint]:
        """The accuracy points kept so far, by number of labels."""
        rows = self._fetch(
            "SELECT n_labels, accuracy, low, high FROM accuracy_history"
            " WHERE project_id = ? ORDER BY n_labels",
            (project_id,),
        )
        return [AccuracyPoint(*row) for row in rows]

    # The trash

    def list_trash(self) -> list[Trashed]:
        """What was deleted and can still be restored, the latest first.

        A class is listed while its project is not deleted; restoring the project lists its
        deleted classes again.
        """
        projects = self._fetch(
            "SELECT 'project', p.id, p.name, p.name, p.deleted,"
            " (SELECT COUNT(*) FROM project_images AS pi WHERE pi.project_id = p.id)"
            " FROM projects AS p WHERE p.deleted IS NOT NULL"
        )
        classes = self._fetch(
            "SELECT 'class', t.id, t.name, p.name, t.deleted,"
            " (SELECT COUNT(*) FROM trashed_class_images AS i WHERE i.trashed_class_id = t.id)"
            " FROM trashed_classes AS t JOIN projects AS p ON p.id = t.project_id"
            " WHERE p.deleted IS NULL"
        )
        items = [Trashed(*row) for row in projects + classes]
        return sorted(items, key=lambda item: (item.deleted, item.kind, item.id), reverse=True)

    def restore(self, item: Trashed) -> None:
        """Put a deleted project or class back as it was.

        A class comes back with its images and confirmed labels; an image added to the project
        again since is left where it is now. A class whose name has been given to a new class
        meanwhile is refused with a sentence, and nothing changes.
        """
        with self._transaction() as db:
            if item.kind == "project":
                restored = db.execute(
                    "UPDATE projects SET deleted = NULL WHERE id = ? AND deleted IS NOT NULL",
                    (item.id,),
                ).rowcount
            else:
                restored = self._restore_class(db, item.id)
            if not restored:
                raise StoreError(
                    f"'{item.name}' is no longer in the trash; it may have been restored in "
                    "another window."
                )

    def _restore_class(self, db: sqlite3.Connection, trashed_id: int) -> int:
        row = db.execute(
            "SELECT t.project_id, t.name FROM trashed_classes AS t"
            " JOIN projects AS p ON p.id = t.project_id WHERE t.id = ? AND p.deleted IS NULL",
            (trashed_id,),
        ).fetchone()
        if row is None:
            return 0
        project_id, name = row
        taken = db.execute(
            "SELECT name FROM classes WHERE project_id = ? AND name = ?", (project_id, name)
        ).fetchone()
        if taken is not None:
            raise StoreError(
                f"The project has a new class called '{taken[0]}'; rename it on the Classes "
                f"page, then restore '{name}' again."
            )
        class_id = _insert_class(db, project_id, name)
        db.execute(
            "INSERT INTO project_images (project_id, sha256, class_id, name, added)"
            " SELECT ?, sha256, ?, name, added FROM trashed_class_images"
            " WHERE trashed_class_id = ? AND sha256 NOT IN"
            " (SELECT sha256 FROM project_images WHERE project_id = ?) ORDER BY rowid",
            (project_id, class_id, trashed_id, project_id),
        )
        db.execute(
            "INSERT OR IGNORE INTO confirmed_labels (project_id, sha256)"
            " SELECT pi.project_id, pi.sha256 FROM trashed_class_images AS t"
            " JOIN project_images AS pi ON pi.sha256 = t.sha256 AND pi.class_id = ?"
            " WHERE t.trashed_class_id = ? AND t.confirmed",
            (class_id, trashed_id),
        )
        return db.execute("DELETE FROM trashed_classes WHERE id = ?", (trashed_id,)).rowcount

    def purge_trash(self, *, now: datetime | None = None) -> int:
        """Delete for good what has been in the trash :data:`TRASH_DAYS` days; returns how many.

        Their image files stay until :meth:`vacuum_blobs`.
        """
        cutoff = ((now or datetime.now(timezone.utc)) - timedelta(days=TRASH_DAYS)).isoformat(
            timespec="seconds"
        )
        with self._transaction() as db:
            return sum(
                db.execute(f"DELETE FROM {table} WHERE deleted < ?", (cutoff,)).rowcount
                for table in ("projects", "trashed_classes")
            )

    # Maintenance

    def tidy(self) -> None:
        """Empty what is due in the trash, then delete unused and abandoned files.

        The app calls this once per process, when it first opens a data folder; it costs one
        listing of the image folder.
        """
        self.purge_trash()
        self.vacuum_blobs()

    def vacuum_blobs(self) -> int:
        """Delete the image files no project and no trashed class uses; returns how many.

        Also deletes temporary files older than an hour, left by saves that were killed.
        Runs inside a write transaction so that no save can start using a file while it goes.
        """
        removed = 0
        with self._transaction() as db:
            db.execute(
                "DELETE FROM images WHERE sha256 NOT IN (SELECT sha256 FROM project_images)"
                " AND sha256 NOT IN (SELECT sha256 FROM trashed_class_images)"
            )
            kept = {sha256 for (sha256,) in db.execute("SELECT sha256 FROM images")}
            now = time.time()
            for path in self._blobs.glob("*/*"):
                if path.name.endswith(_TEMP_SUFFIX):
                    # A save in progress in another process may be writing this one.
                    with contextlib.suppress(FileNotFoundError):
                        if now - path.stat().st_mtime > _STALE_TEMP_SECONDS:
                            path.unlink()
                elif path.name.split(".")[0] not in kept:
                    path.unlink()
                    removed += 1
        return removed

    # Internals

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        """One write transaction: committed if the block finishes, rolled back otherwise.

        BEGIN IMMEDIATE takes SQLite's write lock up front, so a read-then-write inside the
        block cannot be overtaken by another tab, and a busy database is waited for (busy
        timeout) at the start rather than failing half-way.
        """
        with self._lock:
            try:
                self._db.execute("BEGIN IMMEDIATE")
            except sqlite3.OperationalError as err:
                raise StoreError(_not_saved_message(err, self.root)) from err
            try:
                yield self._db
                self._db.execute("COMMIT")
            except BaseException as err:
                if self._db.in_transaction:
                    self._db.execute("ROLLBACK")
                if isinstance(err, sqlite3.OperationalError):
                    raise StoreError(_not_saved_message(err, self.root)) from err
                raise

    def _migrate(self) -> None:
        with self._transaction() as db:
            version = db.execute("PRAGMA user_version").fetchone()[0]
            if version > len(_MIGRATIONS):
                raise StoreError(
                    f"The data folder '{self.root}' was written by a newer version of this app. "
                    f"Update the app, or choose another folder with {DATA_DIR_ENV}."
                )
            for statements in _MIGRATIONS[version:]:
                for statement in statements:
                    db.execute(statement)
            db.execute(f"PRAGMA user_version = {len(_MIGRATIONS)}")

    def _fetch(self, query: str, params: Sequence[Any] = ()) -> list[Any]:
        with self._lock:
            return self._db.execute(query, params).fetchall()

    def _project(self, db: sqlite3.Connection, project_id: int) -> Project:
        row = db.execute(
            "SELECT id, name, created, settings FROM projects WHERE id = ? AND deleted IS NULL",
            (project_id,),
        ).fetchone()
        if row is None:
            raise StoreError(
                "This project no longer exists; it may have been deleted in another window."
            )
        return Project(row[0], row[1], row[2], json.loads(row[3]))

    def _find_class(self, db: sqlite3.Connection, project_id: int, name: str) -> tuple[int, str]:
        """The id of the class called ``name`` and its name as stored (spacing and case)."""
        self._project(db, project_id)
        row = db.execute(
            "SELECT id, name FROM classes WHERE project_id = ? AND name = ?",
            (project_id, name.strip()),
        ).fetchone()
        if row is None:
            raise StoreError(
                f"There is no class '{name}' in this project any more; it may have been renamed "
                "or deleted in another window."
            )
        return row[0], row[1]

    def _refuse_taken_project_name(
        self, db: sqlite3.Connection, name: str, project_id: int | None = None
    ) -> None:
        row = db.execute(
            "SELECT name, deleted FROM projects WHERE name = ? AND id IS NOT ?", (name, project_id)
        ).fetchone()
        if row is not None and row[1] is not None:
            raise StoreError(
                f"A deleted project called '{row[0]}' is kept under 'Recently deleted' on the "
                "Projects page; restore it, or pick another name."
            )
        if row is not None:
            raise StoreError(f"There is already a project called '{row[0]}'; pick another name.")

    def _refuse_taken_class_name(
        self, db: sqlite3.Connection, project_id: int, name: str, class_id: int | None = None
    ) -> None:
        row = db.execute(
            "SELECT name FROM classes WHERE project_id = ? AND name = ? AND id IS NOT ?",
            (project_id, name, class_id),
        ).fetchone()
        if row is not None:
            raise StoreError(
                f"This project already has a class called '{row[0]}'; pick another name."
            )

    def _blob_path(self, sha256: str, ext: str) -> Path:
        return self._blobs / sha256[:2] / f"{sha256}{ext}"

    def _store_blob(self, upload: _Upload) -> None:
        """Write the upload's file unless it is there already (identical bytes are kept once)."""
        path = self._blob_path(upload.sha256, upload.ext)
        if path.exists():
            return
        try:
            _write_blob(path, upload.data)
        except OSError as err:
            raise StoreError(
                f"'{upload.name}' could not be saved in the data folder '{self.root}' "
                f"({err.strerror or err}), so nothing was added. Free some disk space or fix "
                "the folder's permissions, then try again."
            ) from err


def _write_blob(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` so that the final name only ever holds the complete file.

    The bytes reach the disk before the rename, and the folder after it (``durable``): the
    upload exists nowhere else. The shard folder is made here, not its parents, so a data
    folder deleted under a running app is an error rather than silently made anew. Temporary
    files end in ``_TEMP_SUFFIX``, which :meth:`vacuum_blobs` recognises.
    """
    path.parent.mkdir(exist_ok=True)
    write_atomically(path, data, durable=True, temp_suffix=_TEMP_SUFFIX)


def _insert_class(db: sqlite3.Connection, project_id: int, name: str) -> int:
    """Add a class after the project's others; returns its id."""
    return db.execute(
        "INSERT INTO classes (project_id, name, position) SELECT ?, ?,"
        " COALESCE(MAX(position), -1) + 1 FROM classes WHERE project_id = ?",
        (project_id, name, project_id),
    ).lastrowid


def _images_in_project(
    db: sqlite3.Connection, project_id: int, sha256s: Iterable[str]
) -> dict[str, tuple[str, str | None]]:
    """Which of these images the project has: sha256 -> (its name there, its class or None)."""
    return {
        sha256: (name, class_name)
        for sha256, name, class_name in db.execute(
            "SELECT pi.sha256, pi.name, c.name FROM project_images AS pi"
            " LEFT JOIN classes AS c ON c.id = pi.class_id"
            " WHERE pi.project_id = ? AND pi.sha256 IN (SELECT value FROM json_each(?))",
            (project_id, _json_list(sha256s)),
        )
    }


def _insert_image(
    db: sqlite3.Connection,
    project_id: int,
    upload: _Upload,
    class_id: int | None,
    class_name: str | None,
) -> ProjectImage:
    """Add a checked upload, whose file is written, to the project (not in it yet)."""
    added = _now()
    db.execute(
        "INSERT OR IGNORE INTO images (sha256, width, height, format, ext, size_bytes, added)"
        " VALUES (?, ?, ?, ?, ?, ?, ?)",
        (
            upload.sha256,
            upload.width,
            upload.height,
            upload.format,
            upload.ext,
            upload.size_bytes,
            added,
        ),
    )
    db.execute(
        "INSERT INTO project_images (project_id, sha256, class_id, name, added)"
        " VALUES (?, ?, ?, ?, ?)",
        (project_id, upload.sha256, class_id, upload.name, added),
    )
    return ProjectImage(upload.sha256, upload.name, class_name, added, upload.width, upload.height)


# Shorter side of the decode that checks an upload: larger than any thumbnail or backbone input.
UPLOAD_CHECK_SIDE = 512


def _checked_upload(name: str, data: bytes) -> _Upload:
    """Refuse anything load_image refuses; otherwise note what the store keeps about the file."""
    # Checking a picture needs every byte decoded, not every pixel kept: a bounded decode (JPEG
    # at a reduced scale) refuses the same files at a fraction of the memory of a full one.
    loaded = load_image(data, name=name, min_side=UPLOAD_CHECK_SIDE)
    width, height = loaded.original_size
    # load_image hands back converted pixels; the file's format is read from its header again,
    # which is safe now that the whole file has been decoded once.
    with Image.open(io.BytesIO(data)) as file:
        image_format = file.format or ""
    return _Upload(
        name=name,
        data=data,
        sha256=loaded.sha256,
        width=width,
        height=height,
        format=image_format,
        ext=_EXTENSIONS.get(image_format, ".img"),
        size_bytes=len(data),
    )


# What the app answers for a picture of no class, and the label of the pictures the user marked
# so (in tables and exported folders): never a class of its own, or the two would be one.
NONE_OF_THESE = "none of these"


def check_name(kind: str, name: str) -> str:
    """A project or class name as it will be kept: trimmed, checked, otherwise as typed."""
    cleaned = name.strip()
    if not cleaned:
        raise StoreError(f"The {kind} name is empty; type a name.")
    if kind == "class" and cleaned.casefold() == NONE_OF_THESE:
        raise StoreError(
            f"'{cleaned}' is the app's own answer for pictures of no class; give the class "
            "another name (to mark pictures as none of your classes, use 'None of these "
            "classes' on Predict or Label next)."
        )
    if len(cleaned) > MAX_NAME_LENGTH:
        raise StoreError(
            f"The {kind} name is too long ({len(cleaned)} characters); "
            f"keep it to {MAX_NAME_LENGTH} characters or fewer."
        )
    if any(unicodedata.category(char) == "Cc" for char in cleaned):
        raise StoreError(
            f"The {kind} name contains a line break, tab or other invisible character; "
            "type it on one line."
        )
    return cleaned


def _json_list(values: Iterable[str]) -> str:
    """Many values as one SQL parameter, unpacked by json_each (no limit on their number)."""
    if isinstance(values, str):
        raise TypeError("expected several sha256 values, got a single string")
    return json.dumps(list(values))


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _unwritable_message(root: Path, reason: str) -> str:
    return (
        f"The data folder '{root}' cannot be written to: {reason}. Choose another folder with "
        f"{DATA_DIR_ENV} or fix its permissions."
    )


def _not_saved_message(err: sqlite3.OperationalError, root: Path) -> str:
    text = str(err).lower()
    if "locked" in text or "busy" in text:
        return (
            "The project is busy in another window or program, so nothing was saved; "
            "try again in a moment."
        )
    if "full" in text:
        return "The disk is full, so nothing was saved; free some space and try again."
    if "readonly" in text or "read-only" in text:
        return _unwritable_message(root, "its database file is read-only")
    return f"The project could not be saved ({err}), so nothing was changed."
