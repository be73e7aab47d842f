"""Files in and out: the one folder walk every command reads its images with, writing files so
that no reader ever sees half of one, and text that any UTF-8 file and any spreadsheet can hold."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from fsl_app.images import is_image_path

# Files that operating systems leave in folders; never the user's, so never mentioned.
_SYSTEM_FILES = frozenset({"thumbs.db", "desktop.ini", "icon\r"})


def is_hidden(path: str | os.PathLike) -> bool:
    """Dot files and folders, and the files Windows and macOS leave behind."""
    name = Path(path).name
    return name.startswith(".") or name.lower() in _SYSTEM_FILES


@dataclass
class LeftOut:
    """Files a walk left out because they are not images: how many, and the first one's name.

    A stray notes.txt is not worth an error row or a line each; one sentence says how many
    were left out, so that a folder of the wrong files does not go unnoticed either.
    """

    count: int = 0
    example: str | None = None

    def add(self, path: Path) -> None:
        self.count += 1
        self.example = self.example or path.name

    def note(self) -> str | None:
        """E.g. "left out 3 files that are not images (e.g. notes.txt)"; None when none were."""
        if not self.count:
            return None
        what = "file that is not an image" if self.count == 1 else "files that are not images"
        return f"left out {self.count} {what} (e.g. {self.example})"


def iter_files(root: str | os.PathLike) -> Iterator[Path]:
    """``root`` itself when it is a file, else every visible file under it at any depth.

    Lazy (one folder listed at a time, never the whole tree) and sorted as the list of all
    paths would be: each folder's entries in name order, a subfolder's files where its name
    falls. Hidden files and folders (:func:`is_hidden`) are skipped; symlinked folders are
    not followed. Raises FileNotFoundError when ``root`` does not exist.
    """
    root = Path(root)
    if root.is_file():
        yield root
        return
    if not root.is_dir():
        raise FileNotFoundError(f"'{root}' does not exist.")
    stack = [iter(_sorted_entries(root))]
    while stack:
        entry = next(stack[-1], None)
        if entry is None:
            stack.pop()
        elif is_hidden(entry.name):
            continue
        elif entry.is_dir():
            if not entry.is_symlink():
                stack.append(iter(_sorted_entries(entry.path)))
        else:  # a broken link too: reading it says what is wrong
            yield Path(entry.path)


def iter_image_files(root: str | os.PathLike, left_out: LeftOut | None = None) -> Iterator[Path]:
    """:func:`iter_files`, images only (judged by suffix); the others are counted in
    ``left_out``. ``root`` itself is yielded when it is a file, image or not: the user named
    it, so it gets its own error when it cannot be read."""
    root = Path(root)
    for path in iter_files(root):
        if path == root or is_image_path(path):
            yield path
        elif left_out is not None:
            left_out.add(path)


def utf8_text(name: str) -> str:
    r"""A file name as text any UTF-8 file can hold, losslessly.

    On Linux a file name is bytes, and Python reads the bytes that are not UTF-8 (Latin-1 from
    an old camera card: ``b"caf\xe9.jpg"``) as lone surrogates, which no UTF-8 file can hold.
    Each such byte is written as ``\xe9`` and each backslash as ``\\``, so two names never
    become the same text; a UTF-8 name without a backslash (nearly all) is left as it is.
    """
    raw = name.encode("utf-8", "surrogateescape").replace(b"\\", b"\\\\")
    return raw.decode("utf-8", "backslashreplace")


# Text that a spreadsheet program would run as a formula (OWASP's "CSV injection"), and the
# apostrophe that marks a cell as text.
_SPREADSHEET_TRIGGERS = ("=", "+", "-", "@", "\t", "\r", "'")


def spreadsheet_safe(value: object) -> object:
    """A CSV cell that a spreadsheet shows as text and never runs.

    Text starting with ``=``, ``+``, ``-``, ``@``, a tab or a carriage return (a formula to
    Excel, LibreOffice or Google Sheets, e.g. a file named ``=HYPERLINK(...)``) gets a leading
    apostrophe; so does text that starts with an apostrophe already, so that
    :func:`from_spreadsheet_safe` gives back exactly what was written. Other values are left
    as they are. For CSV only: Parquet is not opened by spreadsheets and keeps the raw text.
    """
    if isinstance(value, str) and value[:1] in _SPREADSHEET_TRIGGERS:
        return "'" + value
    return value


def from_spreadsheet_safe(cell: str) -> str:
    """The text :func:`spreadsheet_safe` was given, from the cell it wrote."""
    return cell[1:] if cell.startswith("'") else cell


def _sorted_entries(folder: str | os.PathLike) -> list[os.DirEntry]:
    with os.scandir(folder) as entries:
        return sorted(entries, key=lambda entry: entry.name)


def write_atomically(
    path: str | os.PathLike, data: bytes, *, durable: bool = False, temp_suffix: str = ".tmp"
) -> Path:
    """Write ``data`` to a temporary file beside ``path`` and rename it into place.

    A crash or a full disk leaves the old file (or none), never a truncated one. The parent
    folder is created when missing. See :func:`write_atomically_with` for ``durable`` and
    ``temp_suffix``.
    """
    return write_atomically_with(
        path,
        lambda temporary: temporary.write_bytes(data),
        durable=durable,
        temp_suffix=temp_suffix,
    )


def write_atomically_with(
    path: str | os.PathLike,
    write: Callable[[Path], object],
    *,
    durable: bool = False,
    temp_suffix: str = ".tmp",
) -> Path:
    """Let ``write`` make the file at a temporary path beside ``path``, then rename it into place.

    For writers that want a file name rather than bytes (``torch.save``, a streaming Parquet
    writer): the file is whole under its final name or not there. The temporary file is unique
    (``.<name>.<random><temp_suffix>``, so two writers of one path never share it) and is
    removed when ``write`` fails. ``durable`` also syncs the file and then its folder to the
    disk, so the new content survives a power cut once this returns, not only a crash of the
    process: for data that exists nowhere else (a user's uploaded image).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=temp_suffix)
    os.close(handle)
    temporary = Path(name)
    try:
        write(temporary)
        if durable:
            with temporary.open("rb") as file:
                os.fsync(file.fileno())
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)
    if durable and os.name == "posix":  # Windows cannot open a folder to sync it
        folder = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(folder)
        finally:
            os.close(folder)
    return path
