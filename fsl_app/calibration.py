"""Probabilities a person can trust: calibration error, temperature, "none of these"."""

from __future__ import annotations

import numpy as np


def expected_calibration_error(
    probabilities: np.ndarray, targets: np.ndarray, n_bins: int = 15
) -> float:
    """Expected calibration error (Guo et al. 2017, arXiv:1706.04599).

    Queries are binned by confidence (top probability) into ``n_bins`` equal
    bins; ECE is the average |accuracy - confidence| over bins, weighted by how
    many queries fall in each. ``probabilities`` is (n, n_classes), ``targets``
    (n,) class indices. 0 means a confidence of 0.8 is right 80% of the time.
    """
    probabilities = np.asarray(probabilities, dtype=float)
    targets = np.asarray(targets)
    if len(targets) == 0:
        return float("nan")
    confidence = probabilities.max(axis=1)
    correct = probabilities.argmax(axis=1) == targets
    # Bin i holds confidences in (i/n, (i+1)/n]; a confidence of exactly 0 joins the first.
    bins = np.clip(np.ceil(confidence * n_bins).astype(int) - 1, 0, n_bins - 1)
    error = 0.0
    for b in range(n_bins):
        in_bin = bins == b
        if in_bin.any():
            error += in_bin.mean() * abs(correct[in_bin].mean() - confidence[in_bin].mean())
    return float(error)
