"""Toy embeddings for fast learner tests: Gaussian blobs around class centres."""

from __future__ import annotations

import numpy as np


def gaussian_blobs(
    n_per_class: int = 5,
    n_classes: int = 3,
    dim: int = 16,
    seed: int = 0,
    spread: float = 0.3,
    centre_scale: float = 3.0,
    centre_seed: int | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """``n_per_class`` points around each of ``n_classes`` centres, labels ``class_i``.

    ``centre_seed`` fixes the centres apart from ``seed``, so two draws with
    different seeds are two samples of the same task.
    """
    rng = np.random.default_rng(seed)
    centre_rng = rng if centre_seed is None else np.random.default_rng(centre_seed)
    centres = centre_rng.normal(size=(n_classes, dim)) * centre_scale
    features = np.concatenate([c + spread * rng.normal(size=(n_per_class, dim)) for c in centres])
    labels = np.repeat([f"class_{i}" for i in range(n_classes)], n_per_class)
    return features.astype(np.float32), labels


def distorted_classes(n_classes=6, per_class=12, dim=16, seed=0):
    """Gaussian classes that share a random distortion, so there is something to meta-learn."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(n_classes, dim))
    noise = rng.normal(size=(n_classes * per_class, dim)) @ rng.normal(size=(dim, dim))
    features = np.repeat(centres, per_class, axis=0) + 0.5 * noise
    labels = np.repeat([f"class_{i}" for i in range(n_classes)], per_class)
    return features.astype(np.float32), labels
