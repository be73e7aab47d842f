"""Labeled images in and out as a ZIP in ImageFolder layout: one folder per class.

The layout torchvision's ``ImageFolder`` reads and most people make by hand:
``cat/a.jpg``, ``dog/b.png``; images with no class sit at the top level or in
a folder named ``unlabeled``. Reading takes archives from anywhere, so it
refuses what could hurt (entries pointing outside the archive, archives that
unpack to far more than they weigh, too many files) before reading any
data, and reports what it leaves out in plain words. It never decodes an
image: the store validates every one through :mod:`fsl_app.images`.
"""

from __future__ import annotations

import io
import re
import time
import zipfile
import zlib
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import PurePosixPath

from fsl_app.images import MAX_FILE_BYTES, is_image_path

UNLABELED_FOLDER = "unlabeled"
MAX_FILES = 20_000
MAX_TOTAL_BYTES = 2 * 1024**3
# Characters that are path separators, control characters or forbidden in Windows names.
_UNSAFE_CHARACTERS = re.compile(r'[\x00-\x1f\x7f/\\:*?"<>|]')
_MAX_NAME_LENGTH = 120  # characters; file systems allow 255 bytes
_ABSOLUTE = re.compile(r"^([/\\]|[A-Za-z]:)")  # /etc, \\server, C:
# Added by operating systems, never a user's picture: left out without a word.
_SYSTEM_NAMES = frozenset({"__macosx", "thumbs.db", "desktop.ini"})
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


def read_imagefolder_zip(
    data: bytes, *, max_files: int = MAX_FILES, max_total_bytes: int = MAX_TOTAL_BYTES
) -> tuple[list[ZipImage], list[str]]:
    """The images of a ZIP in ImageFolder layout, and a sentence for each entry left out.

    A file's class is its top folder (images deeper inside still belong to
    it); files at the top level or under ``unlabeled/`` have none. One folder
    wrapping everything (``mydata/cat/a.jpg``) is looked through. Raises
    :class:`DatasetZipError` for bytes that are not a readable ZIP, more than
    ``max_files`` files, or more than ``max_total_bytes`` unpacked, judged
    from the sizes the archive declares before anything is unpacked (the
    reader never returns more than the declared size of an entry).
    """
    try:
        archive = zipfile.ZipFile(io.BytesIO(data))
    except (zipfile.BadZipFile, zipfile.LargeZipFile, ValueError, EOFError):
        raise DatasetZipError(
            "This file is not a ZIP archive, or it is damaged: make the ZIP again (for example "
            "with 'Compress' on the folder of class folders) and upload it."
        ) from None
    with archive:
        entries = [info for info in archive.infolist() if not info.is_dir()]
        if len(entries) > max_files:
            raise DatasetZipError(
                f"The ZIP holds {len(entries)} files, more than the {max_files} one import can "
                "take: split it into smaller ZIPs."
            )
        total = sum(info.file_size for info in entries)
        if total > max_total_bytes:
            raise DatasetZipError(
                f"The ZIP unpacks to {_size(total)}, more than the {_size(max_total_bytes)} one "
                "import can take: split it into smaller ZIPs."
            )
        problems: list[str] = []
        kept: list[tuple[zipfile.ZipInfo, list[str]]] = []
        for info in entries:
            name = _entry_name(info)
            parts = [part for part in name.replace("\\", "/").split("/") if part not in ("", ".")]
            if not parts:
                continue
            if ".." in parts or _ABSOLUTE.match(name):
                problems.append(f"'{name}' was skipped: it points outside the ZIP.")
            elif any(part.startswith(".") or part.casefold() in _SYSTEM_NAMES for part in parts):
                continue
            elif not is_image_path(parts[-1]):
                problems.append(f"'{name}' was skipped: it is not a picture this app reads.")
            else:
                kept.append((info, parts))
        images = []
        for info, parts in _without_wrapping_folder(kept):
            content = _read_entry(archive, info, problems)
            if content is not None:
                class_name = parts[0] if len(parts) > 1 else None
                if class_name is not None and class_name.casefold() == UNLABELED_FOLDER:
                    class_name = None
                images.append(ZipImage(class_name, parts[-1], content))
    return images, problems


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
    """``text`` as one readable file or folder name that cannot escape or hide."""
    name = _UNSAFE_CHARACTERS.sub("_", text).strip().lstrip(".").rstrip(". ")
    return name or fallback


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
