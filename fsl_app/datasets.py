"""Finding images on disk: class folders (ImageFolder layout) and loose queries.

Scanning only lists files; reading and validating them is the job of
:mod:`fsl_app.images`, so a broken file is reported where it is read, with its
reason, instead of vanishing here.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

# Files that operating systems drop into folders; never a user's image.
_SYSTEM_FILES = frozenset({"thumbs.db", "desktop.ini", "icon\r"})


@dataclass(frozen=True)
class ImageFolder:
    """Files of an ImageFolder: one subfolder per class, images at any depth inside.

    ``classes`` lists every class folder, including empty ones, sorted by name;
    ``loose_files`` are files directly in the root, which belong to no class.
    """

    root: Path
    classes: list[str]
    paths: list[Path]
    labels: list[str]
    loose_files: list[Path]


def scan_image_folder(root: str | os.PathLike) -> ImageFolder:
    """List the class folders under ``root`` and the files in each."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"'{root}' is not a folder.")
    classes, paths, labels, loose = [], [], [], []
    for entry in sorted(root.iterdir()):
        if _is_hidden(entry):
            continue
        if entry.is_dir():
            classes.append(entry.name)
            files = list_files(entry)
            paths.extend(files)
            labels.extend([entry.name] * len(files))
        elif entry.is_file():
            loose.append(entry)
    return ImageFolder(root, classes, paths, labels, loose)


def list_files(path: str | os.PathLike) -> list[Path]:
    """One file, or every visible file under a folder at any depth, sorted."""
    path = Path(path)
    if path.is_file():
        return [path]
    if not path.is_dir():
        raise FileNotFoundError(f"'{path}' does not exist.")
    found = []
    for folder, subfolders, files in os.walk(path):
        subfolders[:] = [d for d in subfolders if not d.startswith(".")]
        found.extend(Path(folder) / f for f in files if not _is_hidden(Path(f)))
    return sorted(found)


def _is_hidden(path: Path) -> bool:
    return path.name.startswith(".") or path.name.lower() in _SYSTEM_FILES


# Real cut-out photos from Debian's tuxpaint-stamps-default (GPL-2): the demo
# project and the end-to-end tests use them; they are installed, never committed.
TUXPAINT_STAMPS = Path("/usr/share/tuxpaint/stamps")
DEMO_CLASSES = {
    "bird": "animals/birds",
    "fish": "animals/fish",
    "flower": "plants/flowers",
    "fruit": "food/fruit",
    "vegetable": "food/vegetables",
}


def tuxpaint_photos(
    classes: dict[str, str] | None = None, root: str | os.PathLike = TUXPAINT_STAMPS
) -> dict[str, list[Path]]:
    """PNG photos per class from Tux Paint's stamp folders, drawings (``cartoon``) left out.

    ``classes`` maps a class name to a stamp category folder (default
    :data:`DEMO_CLASSES`).
    """
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(
            f"Tux Paint's stamps are not installed at '{root}'. Install them with: "
            "apt-get install --no-install-recommends tuxpaint-stamps-default"
        )
    photos = {}
    for name, category in (classes or DEMO_CLASSES).items():
        files = [
            p
            for p in list_files(root / category)
            if p.suffix.lower() == ".png" and "cartoon" not in p.relative_to(root).parts
        ]
        if not files:
            raise FileNotFoundError(f"No stamp photos under '{root / category}'.")
        photos[name] = files
    return photos
