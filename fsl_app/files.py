"""Writing files so that no reader ever sees half of one."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path


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
