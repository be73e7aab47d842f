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
