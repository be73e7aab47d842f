"""Probabilities a person can trust: a temperature fitted on the user's own examples.

The temperature comes from the learner's predictions for examples it was not fitted on
(leave-one-out, or k-fold when refits would be many). Too few examples leaves the learner's
own scale and a sentence saying what to add. "None of these" is :mod:`fsl_app.trust.open_set`;
how well calibrated the result is (expected calibration error) is measured in
:mod:`fsl_app.evaluation.metrics`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
from numpy.typing import ArrayLike

from fsl_app.evaluation.folds import deal_folds

if TYPE_CHECKING:
    from fsl_app.learners import FewShotLearner

# scipy and the learners (torch) are imported where they are used: the command line reads
# this package's constants to build its parser and must not wait for them.

TEMPERATURE_BOUNDS = (0.05, 20.0)
# Only classes with this many examples are held out. With 2, the held-out predictions are
# 1-shot predictions, much worse than the 2-shot ones they stand for: over fixed-seed real
# episodes (Tux Paint, Fashion-MNIST) the fitted T then raised the ECE of protonet, matching
# and linear; from 3 examples on it lowered it or left it alone.
MIN_CLASS_SIZE = 3
# Refits per calibration, unless the learner class sets ``calibration_folds``.
MAX_FOLDS = 10
# Weight of the prior (log T)^2 next to the summed held-out NLL: the learner's own scale is
# kept unless the held-out examples argue against it. Without it a handful of held-out
# predictions that all happen to be right drives T to its lower bound (certainty).
TEMPERATURE_PRIOR_WEIGHT = 1.0


@dataclass(frozen=True)
class Temperature:
    """A temperature for a learner's logits: ``softmax(logits / value)``.

    ``held_out`` counts the predictions it was fitted on; ``reason`` says, in
    plain words, why it was left at 1 (None when it was fitted).
    """

    value: float
    held_out: int
    reason: str | None = None


@dataclass(frozen=True)
class HeldOut:
    """Row i of ``logits`` and ``targets`` is example ``indices[i]`` of the support."""

    logits: np.ndarray
    targets: np.ndarray
    indices: np.ndarray


def held_out_predictions(
    make_learner: Callable[[], FewShotLearner],
    support: ArrayLike,
    labels: Sequence,
    *,
    min_class_size: int = MIN_CLASS_SIZE,
    max_folds: int = MAX_FOLDS,
    seed: int = 0,
    unlabeled: ArrayLike | None = None,
) -> HeldOut:
    """Logits of support examples from learners fitted without them.

    Only examples of classes with ``min_class_size`` (at least 2) or more examples are held
    out, so every refit still sees every class and the logits' columns follow
    ``np.unique(labels)``. With at most ``max_folds`` such examples this is leave-one-out;
    with more, they are shuffled (``seed``) and dealt into ``max_folds`` folds class by class
    (:func:`fsl_app.evaluation.folds.deal_folds`), so no fold takes a whole class. Row i of
    the result is example ``indices[i]``: logits (n_held_out, n_classes) and targets
    (n_held_out,) as indices into ``np.unique(labels)``; all empty when no class is that
    large. ``unlabeled`` (n_unlabeled, dim), the pictures still to sort, goes to every refit,
    so a semi-supervised learner is scored as it will predict.
    """
    support = np.asarray(support)
    labels = np.asarray(labels)
    classes, targets = np.unique(labels, return_inverse=True)
    folds = deal_folds(labels, min_class_size=min_class_size, max_folds=max_folds, seed=seed)
    logits, indices = [], []
    for fold in range(folds.max(initial=-1) + 1):
        out = folds == fold
        learner = make_learner().fit(support[~out], labels[~out], unlabeled=unlabeled)
        logits.append(learner.decision_function(support[out]))
        indices.append(np.flatnonzero(out))
    if not logits:
        return HeldOut(np.empty((0, len(classes))), np.empty(0, dtype=int), np.empty(0, dtype=int))
    held = np.concatenate(indices)
    return HeldOut(np.concatenate(logits), targets[held], held)


def fit_temperature(
    logits: np.ndarray,
    targets: np.ndarray,
    *,
    prior_weight: float = TEMPERATURE_PRIOR_WEIGHT,
    bounds: tuple[float, float] = TEMPERATURE_BOUNDS,
) -> float:
    """The T minimising the NLL of ``softmax(logits / T)`` plus ``prior_weight * log(T)^2``.

    Temperature scaling (Guo et al. 2017, arXiv:1706.04599): one scalar, so the
    ranking of the classes, hence the prediction, never changes. ``logits`` is
    (n, n_classes), ``targets`` (n,). The search runs over log T within
    ``bounds``; ``prior_weight=0`` gives the plain maximum-likelihood T.
    """
    from scipy.optimize import minimize_scalar
    from scipy.special import log_softmax

    logits = np.asarray(logits, dtype=float)
    rows = np.arange(len(targets))

    def objective(log_t: float) -> float:
        nll = -log_softmax(logits / np.exp(log_t), axis=1)[rows, targets].sum()
        return nll + prior_weight * log_t**2

    low, high = np.log(bounds[0]), np.log(bounds[1])
    return float(np.exp(minimize_scalar(objective, bounds=(low, high), method="bounded").x))


def calibrate_temperature(
    make_learner: Callable[[], FewShotLearner],
    support: ArrayLike,
    labels: Sequence,
    *,
    max_folds: int = MAX_FOLDS,
    unlabeled: ArrayLike | None = None,
) -> Temperature:
    """The temperature of the learner ``make_learner`` builds, fitted on ``support`` alone.

    Held-out logits come from :func:`held_out_predictions`. It takes two classes
    of :data:`MIN_CLASS_SIZE` or more examples; with fewer, the learner's own
    scale is kept (T = 1) and ``reason`` says what to add.

    Measured on held-out queries of fixed-seed real episodes (ECE at T = 1 ->
    fitted, 5 shots): ProtoNet 0.17 -> 0.05 (Tux Paint, 3-way), 0.27 -> 0.04
    (Fashion-MNIST, 5-way), 0.40 -> 0.10 (digits); the linear probe 0.25 ->
    0.08 and 0.26 -> 0.02. Learners already calibrated at their own scale
    (matching, MAML) move by a few hundredths either way.
    """
    labels = np.asarray(labels)
    _, counts = np.unique(labels, return_counts=True)
    if (counts >= MIN_CLASS_SIZE).sum() < 2:
        return Temperature(
            1.0,
            0,
            f"Confidence is not calibrated yet: give at least two classes {MIN_CLASS_SIZE} "
            "examples or more.",
        )
    held = held_out_predictions(
        make_learner, support, labels, max_folds=max_folds, unlabeled=unlabeled
    )
    return Temperature(fit_temperature(held.logits, held.targets), len(held.targets))
