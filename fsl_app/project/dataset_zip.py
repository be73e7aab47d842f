"""Labeled images in and out as a ZIP in ImageFolder layout: one folder per class.

The layout torchvision's ``ImageFolder`` reads and most people make by hand:
``cat/a.jpg``, ``dog/b.png``; images with no class sit at the top level or in
a folder named ``unlabeled``. Reading takes archives from anywhere, so it
refuses what could hurt (entries pointing outside the archive, archives that
unpack to far more than they weigh, too many files) before reading any
data, reads the rest one entry at a time, and reports what it leaves out in
plain words. It never decodes an image: the store validates every one
through :mod:`fsl_app.images`.
"""

from __future__ import annotations

import io
import re
import time
import zipfile
import zlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import PurePosixPath

from fsl_app.images import MAX_FILE_BYTES, is_image_path

UNLABELED_FOLDER = "unlabeled"
MAX_FILES = 20_000
# The app's upload limit: server.maxUploadSize in .streamlit/config.toml (a test keeps them equal).
MAX_UPLOAD_BYTES = 50 * 1024**2
# What one import may unpack to. JPEG and PNG hardly compress, so a ZIP of photos under the upload
# limit unpacks to little more than it weighs; four times leaves room for BMP and TIFF, and
# refuses a small ZIP of huge files before anything is unpacked.
MAX_TOTAL_BYTES = 4 * MAX_UPLOAD_BYTES
# Characters that are path separators, control characters or forbidden in Windows names.
_UNSAFE_CHARACTERS = re.compile(r'[\x00-\x1f\x7f/\\:*?"<>|]')
_MAX_NAME_LENGTH = 120  # characters; file systems allow 255 bytes
_ABSOLUTE = re.compile(r"^([/\\]|[A-Za-z]:)")  # /etc, \\server, C:
# Added by operating systems, never a user's picture: left out without a word.
_SYSTEM_NAMES = frozenset({"__macosx", "thumbs.db", "desktop.ini"})
# Names Windows keeps for devices, whatever their case and extension ("con.txt" too): a folder or
# file so named cannot be unpacked there. Written with one "_" more (CON_, con_.txt, and CON__ for
# CON_, so every name comes back); read back with one "_" fewer.
_RESERVED = re.compile(r"^(con|prn|aux|nul|com[0-9¹²³]|lpt[0-9¹²³])(_*)(\.|$)", re.IGNORECASE)
_UTF8_FLAG = 0x800
_ENCRYPTED_FLAG = 0x1


class DatasetZipError(ValueError):
    """The bytes cannot be imported as a whole; the message says what to do instead."""


@dataclass(frozen=True)
class ZipImage:
    """One file of a dataset ZIP: its class (None: unlabeled), file name and raw bytes."""

    class_name: str | None
    name: str
    data: bytes


def imagefolder_zip(images: Iterable[ZipImage]) -> bytes:
    """A ZIP with each image at ``class/name`` (unlabeled ones under ``unlabeled/``).

    Class and file names become safe folder and file names that stay
    readable: separators and characters Windows forbids turn into ``_``, and
    leading dots go, so nothing extracts outside its folder or hides. Names
    that would collide (also by case, as on macOS and Windows) get ``_1``,
    ``_2``: ``a.jpg``, ``a_1.jpg``. Images are stored uncompressed, as JPEG
    and PNG are compressed already.
    """
    folders: dict[str | None, str] = {None: UNLABELED_FOLDER}
    taken_folders = {UNLABELED_FOLDER}
    taken_files: dict[str, set[str]] = {}
    buffer = io.BytesIO()
    now = time.localtime()[:6]
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_STORED) as archive:
        for image in images:
            if image.class_name not in folders:
                folder = _safe_name(image.class_name, "class")
                folders[image.class_name] = _unique(folder, taken_folders, keep_suffix=False)
            folder = folders[image.class_name]
            name = _unique(
                _safe_name(image.name, "image"),
                taken_files.setdefault(folder, set()),
                keep_suffix=True,
            )
            info = zipfile.ZipInfo(f"{folder}/{name}", date_time=now)
            info.external_attr = 0o644 << 16  # readable files when unzipped on Unix
            archive.writestr(info, image.data)
    return buffer.getvalue()


class DatasetZip:
    """A dataset ZIP opened for import: its classes and problems at once, its pictures lazily.

    Opening refuses, with :class:`DatasetZipError`, bytes that are not a
    readable ZIP, more than ``max_files`` files, or more than
    ``max_total_bytes`` unpacked, judged from the sizes the archive declares
    before anything is unpacked (the reader never returns more than the
    declared size of an entry). A file's class is its top folder (images
    deeper inside still belong to it); files at the top level or under
    ``unlabeled/`` have none. One folder wrapping everything
    (``mydata/cat/a.jpg``) is looked through.
    """

    def __init__(
        self, data: bytes, *, max_files: int = MAX_FILES, max_total_bytes: int = MAX_TOTAL_BYTES
    ) -> None:
        try:
            self._archive = zipfile.ZipFile(io.BytesIO(data))
        except (zipfile.BadZipFile, zipfile.LargeZipFile, ValueError, EOFError):
            raise DatasetZipError(
                "This file is not a ZIP archive, or it is damaged: make the ZIP again (for "
                "example with 'Compress' on the folder of class folders) and upload it."
            ) from None
        try:
            self._entries = self._choose(max_files, max_total_bytes)
        except DatasetZipError:
            self._archive.close()
            raise

    def _choose(
        self, max_files: int, max_total_bytes: int
    ) -> list[tuple[zipfile.ZipInfo, str | None, str]]:
        entries = [info for info in self._archive.infolist() if not info.is_dir()]
        if len(entries) > max_files:
            raise DatasetZipError(
                f"The ZIP holds {len(entries)} files, more than the {max_files} one import can "
                "take: split it into smaller ZIPs."
            )
        total = sum(info.file_size for info in entries)
        if total > max_total_bytes:
            raise DatasetZipError(
                f"The ZIP unpacks to {_size(total)}, more than the {_size(max_total_bytes)} one "
                f"import can take (four times the {_size(MAX_UPLOAD_BYTES)} upload limit): split "
                "it into smaller ZIPs."
            )
        self.problems: list[str] = []  # a sentence for each entry left out
        kept: list[tuple[zipfile.ZipInfo, list[str]]] = []
        for info in entries:
            name = _entry_name(info)
            parts = [part for part in name.replace("\\", "/").split("/") if part not in ("", ".")]
            if not parts:
                continue
            if ".." in parts or _ABSOLUTE.match(name):
                self.problems.append(f"'{name}' was skipped: it points outside the ZIP.")
            elif any(part.startswith(".") or part.casefold() in _SYSTEM_NAMES for part in parts):
                continue
            elif not is_image_path(parts[-1]):
                self.problems.append(f"'{name}' was skipped: it is not a picture this app reads.")
            else:
                kept.append((info, parts))
        chosen = []
        for info, parts in _without_wrapping_folder(kept):
            class_name = _unreserved(parts[0]) if len(parts) > 1 else None
            if class_name is not None and class_name.casefold() == UNLABELED_FOLDER:
                class_name = None
            chosen.append((info, class_name, _unreserved(parts[-1])))
        return chosen

    @property
    def class_names(self) -> list[str]:
        """The classes the pictures are in, each once, in the order of the ZIP."""
        return list(dict.fromkeys(c for _, c, _ in self._entries if c is not None))

    def images(self) -> Iterator[ZipImage]:
        """The pictures, unpacked one at a time; an entry that cannot be read is left out, with a
        sentence in :attr:`problems`."""
        for info, class_name, name in self._entries:
            content = _read_entry(self._archive, info, self.problems)
            if content is not None:
                yield ZipImage(class_name, name, content)

    def close(self) -> None:
        self._archive.close()

    def __enter__(self) -> DatasetZip:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def read_imagefolder_zip(
    data: bytes, *, max_files: int = MAX_FILES, max_total_bytes: int = MAX_TOTAL_BYTES
) -> tuple[list[ZipImage], list[str]]:
    """All the images of a ZIP in ImageFolder layout at once, and a sentence for each entry left
    out; see :class:`DatasetZip`, which an import uses to hold one picture at a time."""
    with DatasetZip(data, max_files=max_files, max_total_bytes=max_total_bytes) as dataset:
        images = list(dataset.images())
        return images, dataset.problems


def _without_wrapping_folder(
    kept: list[tuple[zipfile.ZipInfo, list[str]]],
) -> list[tuple[zipfile.ZipInfo, list[str]]]:
    """Entries with their one common top folder taken off when it only wraps class folders.

    Only when every file lies in a folder below it: ``cat/a.jpg`` alone is a
    class, ``mydata/cat/a.jpg`` a wrapper around one.
    """
    tops = {parts[0] for _, parts in kept}
    if (
        len(tops) == 1
        and next(iter(tops)).casefold() != UNLABELED_FOLDER
        and all(len(parts) > 2 for _, parts in kept)
    ):
        return [(info, parts[1:]) for info, parts in kept]
    return kept


def _read_entry(
    archive: zipfile.ZipFile, info: zipfile.ZipInfo, problems: list[str]
) -> bytes | None:
    """The bytes of one entry, or None with a sentence in ``problems``."""
    reason = None
    if info.flag_bits & _ENCRYPTED_FLAG:
        reason = "it is protected by a password"
    elif info.file_size > MAX_FILE_BYTES:
        reason = f"it is larger than {_size(MAX_FILE_BYTES)}"
    else:
        try:
            with archive.open(info) as entry:
                return entry.read(info.file_size + 1)
        except NotImplementedError:
            reason = "it is compressed in a way this app cannot unpack"
        except (zipfile.BadZipFile, zlib.error, EOFError):
            reason = "it is damaged inside the ZIP"
    problems.append(f"'{_entry_name(info)}' was skipped: {reason}.")
    return None


def _entry_name(info: zipfile.ZipInfo) -> str:
    """The entry's path, read as UTF-8 when the archiver wrote it so without saying so.

    Without the UTF-8 flag, zipfile decodes names as code page 437; many
    archivers write UTF-8 without setting it, which would turn "été" into
    mojibake.
    """
    if info.flag_bits & _UTF8_FLAG:
        return info.filename
    try:
        return info.filename.encode("cp437").decode("utf-8")
    except UnicodeError:
        return info.filename


def _safe_name(text: str, fallback: str) -> str:
    """``text`` as one readable file or folder name that cannot escape, hide, or be a device."""
    name = _UNSAFE_CHARACTERS.sub("_", text).strip().lstrip(".").rstrip(". ")
    return _RESERVED.sub(r"\1\2_\3", name) or fallback


def _unreserved(name: str) -> str:
    """A name as :func:`_safe_name` wrote it, with the ``_`` it added to a device name taken off."""
    return _RESERVED.sub(lambda m: f"{m[1]}{m[2][:-1]}{m[3]}" if m[2] else m[0], name)


def _unique(name: str, taken: set[str], *, keep_suffix: bool) -> str:
    """``name`` cut to a safe length, with ``_1``, ``_2``... before the suffix if taken."""
    path = PurePosixPath(name)
    stem, suffix = (path.stem, path.suffix) if keep_suffix and path.stem else (name, "")
    stem = stem[: _MAX_NAME_LENGTH - len(suffix)]
    candidate, count = f"{stem}{suffix}", 0
    while candidate.casefold() in taken:
        count += 1
        candidate = f"{stem}_{count}{suffix}"
    taken.add(candidate.casefold())
    return candidate


def _size(count: int) -> str:
    for unit, scale in (("GB", 1024**3), ("MB", 1024**2)):
        if count >= scale:
            return f"{count / scale:.1f} {unit}".replace(".0 ", " ")
    return f"{count / 1024:.0f} KB"
