"""The numbers fsl_app reports about a model, each computed in one place.

Calibration error is shown on the Evaluate page, in benchmark tables and in the episode
evaluation; if each computed its own, the same predictions could get two different numbers.
So the binning lives here once, and the expected calibration error is read off the same bins
the reliability chart draws.

Two 95% intervals live here too, for two different questions: how far the mean accuracy over
many episodes may be from the truth (normal approximation, the few-shot literature's
convention), and how far one accuracy measured on a handful of images may be (Wilson score
interval, honest where the normal approximation is not: 5 of 5 right is not proof of 100%).

Only numpy (scipy when an interval is asked for): calibration, evaluation, benchmarks and the
command line's parser all import this without cycles or waiting.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from statistics import NormalDist

import numpy as np
from numpy.typing import ArrayLike

ECE_BINS = 15


@dataclass(frozen=True)
class ReliabilityBin:
    low: float
    high: float
    count: int
    confidence: float  # mean confidence of the predictions in the bin
    accuracy: float  # fraction of them that were right


def top_label(probabilities: ArrayLike, targets: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    """Confidence (top probability) and whether the top class is right, each of shape (n,).

    ``probabilities`` is (n, n_classes), ``targets`` (n,) class indices: the form the
    calibration metrics below take.
    """
    probabilities = np.asarray(probabilities, dtype=float)
    return probabilities.max(axis=1), probabilities.argmax(axis=1) == np.asarray(targets)


def reliability_bins(
    confidence: ArrayLike, correct: ArrayLike, n_bins: int = ECE_BINS
) -> list[ReliabilityBin]:
    """Equal-width confidence bins with their mean confidence and accuracy; empty bins left out.

    Bin i holds confidences in (i/n_bins, (i+1)/n_bins]; a confidence of exactly 0 joins the
    first. ``confidence`` and ``correct`` are of shape (n,).
    """
    confidence = np.asarray(confidence, dtype=float)
    correct = np.asarray(correct, dtype=bool)
    if confidence.ndim != 1 or correct.shape != confidence.shape:
        raise ValueError(
            "confidence and correct must be two arrays of shape (n,); from probabilities, "
            "use top_label(probabilities, targets)."
        )
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    which = np.clip(np.ceil(confidence * n_bins).astype(int) - 1, 0, n_bins - 1)
    bins = []
    for b in range(n_bins):
        members = which == b
        if members.any():
            bins.append(
                ReliabilityBin(
                    float(edges[b]),
                    float(edges[b + 1]),
                    int(members.sum()),
                    float(confidence[members].mean()),
                    float(correct[members].mean()),
                )
            )
    return bins


def expected_calibration_error(
    confidence: ArrayLike, correct: ArrayLike, n_bins: int = ECE_BINS
) -> float:
    """Expected calibration error of the top label (Guo et al. 2017, arXiv:1706.04599).

    The average |accuracy - confidence| over the :func:`reliability_bins`, weighted by how
    many predictions fall in each. 0 means a confidence of 0.8 is right 80% of the time.
    ``confidence`` and ``correct`` are of shape (n,) (see :func:`top_label`); NaN when n = 0.
    """
    bins = reliability_bins(confidence, correct, n_bins)
    n = sum(b.count for b in bins)
    if n == 0:
        return float("nan")
    return float(sum(b.count / n * abs(b.accuracy - b.confidence) for b in bins))


def negative_log_likelihood(probabilities: ArrayLike, targets: ArrayLike) -> float:
    """Mean -log p(true class) of ``probabilities`` (n, n_classes) and ``targets`` (n,)."""
    probabilities, targets = np.asarray(probabilities, dtype=float), np.asarray(targets)
    picked = probabilities[np.arange(len(targets)), targets]
    return float(-np.log(np.clip(picked, 1e-12, None)).mean())


def confidence_interval95(values: Sequence[float]) -> float:
    """Half-width 1.96 * std / sqrt(n) of the normal 95% interval of the mean of ``values``.

    For accuracy averaged over many episodes (e.g. Chen et al. 2019); NaN with fewer than two.
    """
    values = np.asarray(values, dtype=float)
    if len(values) < 2:
        return float("nan")
    return float(1.96 * values.std(ddof=1) / np.sqrt(len(values)))


def accuracy_interval(correct: int, n: int) -> tuple[float, float]:
    """95% Wilson score interval (low, high) of an accuracy of ``correct`` out of ``n``.

    For one accuracy measured on a few images; (0, 1) when there are none. Written out
    (Wilson 1927; the same numbers as scipy's ``binomtest(...).proportion_ci(method="wilson")``)
    because importing scipy.stats for it took seconds on a page's first visit.
    """
    if n == 0:
        return 0.0, 1.0
    z = NormalDist().inv_cdf(0.975)
    share = correct / n
    denominator = 1 + z * z / n
    centre = (share + z * z / (2 * n)) / denominator
    half = z * math.sqrt(share * (1 - share) / n + z * z / (4 * n * n)) / denominator
    return max(0.0, centre - half), min(1.0, centre + half)
