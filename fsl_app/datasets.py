"""Labeled images: class folders on disk and the offline datasets used for evaluation.

Scanning only lists files; reading and validating them is the job of
:mod:`fsl_app.images`, so a broken file is reported where it is read, with its
reason, instead of vanishing here. Array datasets (Fashion-MNIST, scikit-learn's
digits) are encoded to PNG bytes, so they go through the same door and the same
content-addressed embedding cache as a user's photos.
"""

from __future__ import annotations

import gzip
import io
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from fsl_app.files import LeftOut, is_hidden, iter_image_files
from fsl_app.images import is_image_path


@dataclass(frozen=True)
class ImageFolder:
    """Files of an ImageFolder: one subfolder per class, images at any depth inside.

    ``classes`` lists every class folder, including empty ones, sorted by name;
    ``loose_files`` are images directly in the root, which belong to no class;
    ``left_out`` counts the files that are not images.
    """

    root: Path
    classes: list[str]
    paths: list[Path]
    labels: list[str]
    loose_files: list[Path]
    left_out: LeftOut = field(default_factory=LeftOut)


def scan_image_folder(root: str | os.PathLike) -> ImageFolder:
    """List the class folders under ``root`` and the image files in each.

    Files that are not images, in a class folder or loose, are counted in ``left_out``.
    """
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"'{root}' is not a folder.")
    classes, paths, labels, loose = [], [], [], []
    left_out = LeftOut()
    for entry in sorted(root.iterdir()):
        if is_hidden(entry):
            continue
        if entry.is_dir():
            classes.append(entry.name)
            files = list(iter_image_files(entry, left_out))
            paths.extend(files)
            labels.extend([entry.name] * len(files))
        elif is_image_path(entry):
            loose.append(entry)
        elif entry.is_file():
            left_out.add(entry)
    return ImageFolder(root, classes, paths, labels, loose, left_out)


# Real cut-out photos from Debian's tuxpaint-stamps-default (GPL-2): the demo
# project and the end-to-end tests use them; they are installed, never committed.
TUXPAINT_STAMPS = Path("/usr/share/tuxpaint/stamps")
# The "tuxpaint" data set: the classes the tests and benchmarks measure on.
TUXPAINT_CLASSES = {
    "bird": "animals/birds",
    "fish": "animals/fish",
    "flower": "plants/flowers",
    "fruit": "food/fruit",
    "vegetable": "food/vegetables",
}
# The demo project's classes: ones a person names at a glance and the default model tells
# apart. Measured by benchmarks/demo.py over Tux Paint's categories with 10 photos or more:
# these sort 36 of 40 right at 4 examples each, where birds, fish, flowers, fruit and
# vegetables sorted 28 (fruit and vegetables look alike, fish had 11 photos).
DEMO_CLASSES = {
    "bird": "animals/birds",
    "flower": "plants/flowers",
    "fruit": "food/fruit",
    "road sign": "town/roadsigns",
    "tool": "household/tools",
}


def tuxpaint_photos(
    classes: dict[str, str] | None = None, root: str | os.PathLike = TUXPAINT_STAMPS
) -> dict[str, list[Path]]:
    """PNG photos per class from Tux Paint's stamp folders, drawings (``cartoon``) left out.

    ``classes`` maps a class name to a stamp category folder (default
    :data:`TUXPAINT_CLASSES`).
    """
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(
            f"Tux Paint's stamps are not installed at '{root}'. Install them with: "
            "apt-get install --no-install-recommends tuxpaint-stamps-default"
        )
    photos = {}
    for name, category in (classes or TUXPAINT_CLASSES).items():
        files = [
            p
            for p in iter_image_files(root / category)
            if p.suffix.lower() == ".png" and "cartoon" not in p.relative_to(root).parts
        ]
        if not files:
            raise FileNotFoundError(f"No stamp photos under '{root / category}'.")
        photos[name] = files
    return photos


@dataclass(frozen=True)
class LabeledImages:
    """Images with class labels, as sources the embedder reads (file paths or PNG bytes)."""

    name: str
    sources: list[bytes | Path]
    labels: list[str]

    @property
    def classes(self) -> list[str]:
        return sorted(set(self.labels))

    def subset(self, per_class: int | None, seed: int = 0) -> LabeledImages:
        """At most ``per_class`` images of each class, drawn with a fixed seed."""
        if per_class is None:
            return self
        keep = balanced_indices(self.labels, per_class, seed)
        return LabeledImages(
            self.name, [self.sources[i] for i in keep], [self.labels[i] for i in keep]
        )


FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")
FASHION_MNIST_CLASSES = (
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
)
OFFLINE_DATASETS = (
    "fashion-mnist",
    "fashion-mnist-test",
    "digits",
    "tuxpaint",
    "tuxpaint-photos",
    "openclipart-base",
    "openclipart-held-out",
)

OPENCLIPART_PNG = Path("/usr/share/openclipart/png")
# Open Clip Art folders that are not one kind of thing: left out of both splits.
OPENCLIPART_MIXED = ("unsorted", "special")
# Folders whose subject overlaps the Tux Paint photos (the test domain: animals, food, plants,
# clothes, tools, road signs, planets, holidays, chess, music): never meta-trained on; they are the
# held-out base categories on which a meta-learned learner is scored.
OPENCLIPART_HELD_OUT = (
    "animals",
    "food",
    "plants",
    "people/clothing",
    "tools",
    "transportation/roadsigns",
    "geography/astronomy",
    "recreation/holiday",
    "recreation/games/chess",
    "recreation/music",
)


def load_dataset(name: str, *, per_class: int | None = None, seed: int = 0) -> LabeledImages:
    """One of :data:`OFFLINE_DATASETS`, optionally subsampled to ``per_class`` images a class.

    ``fashion-mnist`` is the train split (meta-training's base classes),
    ``fashion-mnist-test`` the test split; ``digits`` is scikit-learn's 8x8
    digits; ``tuxpaint`` the demo photos.
    """
    if name in ("fashion-mnist", "fashion-mnist-test"):
        split = "t10k" if name.endswith("test") else "train"
        return fashion_mnist(split, per_class=per_class, seed=seed)
    elif name == "digits":
        dataset = sklearn_digits()
    elif name == "tuxpaint":
        dataset = _from_groups(name, tuxpaint_photos())
    elif name == "tuxpaint-photos":
        dataset = _from_groups(name, tuxpaint_photo_categories())
    elif name in ("openclipart-base", "openclipart-held-out"):
        dataset = _from_groups(name, openclipart(held_out=name.endswith("held-out")))
    else:
        raise ValueError(f"Unknown dataset '{name}'. Choose one of: {', '.join(OFFLINE_DATASETS)}.")
    return dataset.subset(per_class, seed)


def _from_groups(name: str, groups: dict[str, list[Path]]) -> LabeledImages:
    return LabeledImages(
        name,
        [p for files in groups.values() for p in files],
        [c for c, files in groups.items() for _ in files],
    )


def tuxpaint_photo_categories(
    min_photos: int = 10, root: str | os.PathLike = TUXPAINT_STAMPS
) -> dict[str, list[Path]]:
    """Every Tux Paint stamp folder holding at least ``min_photos`` photos, drawings left out.

    The class is the folder's path under ``root`` (``animals/birds``); a folder's photos are the
    PNGs directly in it. The photo benchmark of every learner and peer uses these categories.
    """
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(
            f"Tux Paint's stamps are not installed at '{root}'. Install them with: "
            "apt-get install --no-install-recommends tuxpaint-stamps-default"
        )
    return _png_folders(root, min_photos, lambda rel: "cartoon" not in rel.parts)


def openclipart(
    *, held_out: bool = False, min_images: int = 10, root: str | os.PathLike = OPENCLIPART_PNG
) -> dict[str, list[Path]]:
    """Open Clip Art Library folders (Debian's ``openclipart-png``) as classes of colour clip art.

    The base set for meta-training: every folder with at least ``min_images`` PNGs directly in
    it, named by its path (``shapes/arrows``), leaving out :data:`OPENCLIPART_MIXED`. With
    ``held_out=False`` the folders under :data:`OPENCLIPART_HELD_OUT` (the subjects of the Tux
    Paint photos) are left out; with ``held_out=True`` only those are returned.
    """
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(
            f"The Open Clip Art Library is not installed at '{root}'. Install it with: "
            "apt-get install --no-install-recommends openclipart-png"
        )

    def wanted(rel: Path) -> bool:
        name = rel.as_posix()
        if rel.parts[0] in OPENCLIPART_MIXED:
            return False
        overlaps = any(name == p or name.startswith(p + "/") for p in OPENCLIPART_HELD_OUT)
        return overlaps == held_out

    return _png_folders(root, min_images, wanted)


def _png_folders(root: Path, min_files: int, wanted) -> dict[str, list[Path]]:
    """PNGs directly in each folder under ``root``, by folder path, for folders ``wanted`` keeps."""
    groups: dict[str, list[Path]] = {}
    for path in sorted(root.rglob("*.png")):
        rel = path.parent.relative_to(root)
        if rel.parts and wanted(rel) and not is_hidden(path):
            groups.setdefault(rel.as_posix(), []).append(path)
    return {name: files for name, files in groups.items() if len(files) >= min_files}


def image_folder_dataset(root: str | os.PathLike) -> LabeledImages:
    folder = scan_image_folder(root)
    return LabeledImages(str(root), list(folder.paths), list(folder.labels))


def balanced_indices(labels: list, per_class: int, seed: int = 0) -> list[int]:
    """Sorted indices of at most ``per_class`` items of each label, drawn with ``seed``."""
    rng = np.random.default_rng(seed)
    labels = np.asarray(labels)
    keep = []
    for name in np.unique(labels):
        keep.extend(rng.permutation(np.flatnonzero(labels == name))[:per_class].tolist())
    return sorted(keep)


def fashion_mnist(
    split: str = "train",
    *,
    per_class: int | None = None,
    seed: int = 0,
    root: str | os.PathLike = FASHION_MNIST_DIR,
) -> LabeledImages:
    """Fashion-MNIST (Xiao et al. 2017) from Debian's dataset-fashion-mnist package.

    ``per_class`` subsamples before encoding, so a small subset is quick to make.
    """
    root = Path(root)
    images_file = root / f"{split}-images-idx3-ubyte.gz"
    if not images_file.is_file():
        raise FileNotFoundError(
            f"Fashion-MNIST is not installed at '{root}'. Install it with: "
            "apt-get install dataset-fashion-mnist"
        )
    images = _read_idx(images_file)
    targets = _read_idx(root / f"{split}-labels-idx1-ubyte.gz")
    keep = range(len(targets)) if per_class is None else balanced_indices(targets, per_class, seed)
    return LabeledImages(
        f"fashion-mnist-{split}",
        [_png_bytes(images[i]) for i in keep],
        [FASHION_MNIST_CLASSES[targets[i]] for i in keep],
    )


def sklearn_digits() -> LabeledImages:
    """scikit-learn's 8x8 handwritten digits (1797 images, 10 classes), bundled offline."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    # Values run 0..16; stretch to 0..255 so they look like ordinary greyscale images.
    images = (digits.images * (255 / 16)).round().astype(np.uint8)
    return LabeledImages(
        "digits", [_png_bytes(image) for image in images], [str(t) for t in digits.target]
    )


def _read_idx(path: Path) -> np.ndarray:
    """An IDX file (the MNIST format): magic, dimensions, then unsigned bytes."""
    with gzip.open(path, "rb") as handle:
        data = handle.read()
    n_dims = data[3]
    shape = tuple(int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(n_dims))
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * n_dims).reshape(shape)


def _png_bytes(pixels: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels, mode="L").save(buffer, format="PNG")
    return buffer.getvalue()
