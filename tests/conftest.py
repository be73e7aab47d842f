"""Shared fixtures: the real default backbone and small real image folders."""

from __future__ import annotations

import os

# Tests never reach for the network: the timm hub fails at once instead of retrying.
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import random
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from fsl_app.backbones import Backbone, load_backbone
from fsl_app.datasets import tuxpaint_photos
from fsl_app.embeddings import Embedder, EmbeddingCache


@pytest.fixture(autouse=True)
def _private_embedding_cache(tmp_path_factory, monkeypatch):
    """Each test gets its own on-disk embedding cache, never the user's."""
    cache = tmp_path_factory.mktemp("cache") / "embeddings.sqlite"
    monkeypatch.setenv("FSL_APP_CACHE", str(cache))


@pytest.fixture(scope="session")
def backbone() -> Backbone:
    """The default backbone with its real, embedded weights."""
    return load_backbone()


@pytest.fixture(scope="session")
def photos() -> dict[str, list[Path]]:
    """Tux Paint's real photos per class (installed by scripts/install.sh)."""
    return tuxpaint_photos()


@dataclass
class FewShotFolders:
    support: Path  # one subfolder per class
    query: Path  # one subfolder per class, so each query's true class is its folder
    classes: list[str]

    def true_class(self, path: str | Path) -> str:
        return Path(path).relative_to(self.query).parts[0]


def make_folders(
    root: Path,
    photos: dict[str, list[Path]],
    classes: list[str],
    shots: int,
    queries: int,
    seed: int = 0,
) -> FewShotFolders:
    """Copy ``shots`` examples and ``queries`` query photos per class into ``root``."""
    rng = random.Random(seed)
    for name in classes:
        chosen = rng.sample(photos[name], shots + queries)
        for role, files in (("support", chosen[:shots]), ("query", chosen[shots:])):
            folder = root / role / name
            folder.mkdir(parents=True, exist_ok=True)
            for file in files:
                shutil.copy(file, folder / file.name)
    return FewShotFolders(root / "support", root / "query", classes)


@pytest.fixture
def folders(tmp_path, photos) -> FewShotFolders:
    """3-way 5-shot: birds, flowers and fruit, 5 query photos each."""
    return make_folders(tmp_path, photos, ["bird", "flower", "fruit"], shots=5, queries=5)


@dataclass
class EmbeddedPhotos:
    features: np.ndarray  # (n, 1280) real embeddings of Tux Paint photos
    labels: np.ndarray  # (n,) class names
    paths: list[Path]


@pytest.fixture(scope="session")
def tux_embeddings(backbone, photos, tmp_path_factory) -> EmbeddedPhotos:
    """Every Tux Paint demo photo embedded once per test session by the real backbone."""
    paths = [p for files in photos.values() for p in files]
    labels = [c for c, files in photos.items() for _ in files]
    cache = EmbeddingCache(tmp_path_factory.mktemp("tux") / "embeddings.sqlite")
    embedded = Embedder(backbone, device="cpu", cache=cache).embed(paths)
    assert not embedded.errors
    return EmbeddedPhotos(embedded.embeddings, np.asarray(labels), paths)
