"""How unsure a prediction is, per image, as scores in [0, 1] a person can read.

Three scores look at one set of class probabilities: **entropy** (how spread
the belief is), **margin** (how far the best guess leads the runner-up) and
**least confidence** (how far the best guess is from certain). They measure
total uncertainty and cannot tell "this image is truly between two classes"
from "the model has seen too few examples to know". The fourth, **BALD**
(Houlsby et al. 2011, arXiv:1112.5745; Gal, Islam & Ghahramani, ICML 2017,
arXiv:1703.02910), measures the second kind: the mutual information between
the prediction and the model, estimated from several models that each saw a
slightly different support set (bootstrap resamples) and/or several
augmented views of the image. Members that are each confident but disagree
give a high score; members that agree, even on a 50/50 answer, give zero.

Everything here works on arrays of probabilities; :func:`ensemble_probabilities`
builds the stack of member predictions from embeddings. Augmented views must
be embedded by the caller: this module never sees an image.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

import numpy as np
from numpy.typing import ArrayLike

if TYPE_CHECKING:  # light to import: active's strategy table is read by the command line
    from fsl_app.learners.base import FewShotLearner

# One line per score, for people who label images rather than read code.
MEANINGS: dict[str, str] = {
    "entropy": (
        "How spread the model's belief is over the classes: "
        "0 = sure of one class, 1 = every class equally likely."
    ),
    "margin": (
        "How far the best guess is ahead of the second best: "
        "1 = no contest, 0 = a tie between the top two."
    ),
    "least_confidence": (
        "How far the best guess is from certain: 0 = fully sure, 1 = no better than a blind guess."
    ),
    "bald": (
        "How much versions of the model that saw slightly different examples disagree: "
        "0 = they all agree, 1 = each is sure of a different class; more labels settle it."
    ),
}


def entropy(proba: ArrayLike) -> np.ndarray:
    """Shannon entropy divided by log(n_classes), of shape (n,), from proba (n, n_classes).

    0 for a one-hot row, 1 for a uniform one.
    """
    proba = _check_proba(proba)
    n_classes = proba.shape[1]
    if n_classes < 2:
        return np.zeros(len(proba))
    from scipy.special import entr

    return np.clip(entr(proba).sum(axis=1) / np.log(n_classes), 0.0, 1.0)


def margin(proba: ArrayLike) -> np.ndarray:
    """Top-1 minus top-2 probability, of shape (n,), from proba (n, n_classes).

    Unlike the other scores, high means *sure*: 1 for a one-hot row, 0 for a tie.
    """
    proba = _check_proba(proba)
    if proba.shape[1] < 2:
        return np.ones(len(proba))
    top2 = np.partition(proba, -2, axis=1)[:, -2:]
    return np.clip(top2[:, 1] - top2[:, 0], 0.0, 1.0)


def least_confidence(proba: ArrayLike) -> np.ndarray:
    """1 - max probability, scaled by C / (C - 1) to [0, 1], of shape (n,).

    0 for a one-hot row, 1 for a uniform one (whose max is 1 / C).
    """
    proba = _check_proba(proba)
    n_classes = proba.shape[1]
    if n_classes < 2:
        return np.zeros(len(proba))
    return np.clip((1.0 - proba.max(axis=1)) * n_classes / (n_classes - 1), 0.0, 1.0)


def bald(members: ArrayLike) -> np.ndarray:
    """BALD mutual information divided by log(n_classes), of shape (n,).

    ``members`` of shape (n_members, n, n_classes) holds each member's
    probabilities. The score is H(mean of members) - mean of H(member): the
    part of the uncertainty that comes from the members disagreeing, in [0, 1].
    """
    members = np.asarray(members, dtype=float)
    if members.ndim != 3:
        raise ValueError(
            "BALD needs a stack of predictions of shape (n_members, n_images, n_classes); "
            f"got shape {members.shape}."
        )
    n_members, n, n_classes = members.shape
    if n_members == 0:
        raise ValueError("BALD needs at least one member's predictions.")
    for member in members:
        _check_proba(member)
    if n_classes < 2:
        return np.zeros(n)
    from scipy.special import entr

    total = entr(members.mean(axis=0)).sum(axis=1)
    expected = entr(members).sum(axis=2).mean(axis=0)
    information = (total - expected) / np.log(n_classes)
    # Identical members differ only by rounding: call that 0, so ties stay ties.
    return np.where(information < 1e-9, 0.0, np.clip(information, 0.0, 1.0))


def uncertainty_scores(proba: ArrayLike, members: ArrayLike | None = None) -> dict[str, np.ndarray]:
    """Every score of :data:`MEANINGS` for ``proba`` (n, n_classes), each of shape (n,).

    ``bald`` is present only when ``members`` (n_members, n, n_classes) is given.
    """
    scores = {
        "entropy": entropy(proba),
        "margin": margin(proba),
        "least_confidence": least_confidence(proba),
    }
    if members is not None:
        scores["bald"] = bald(members)
    return scores


def bootstrap_indices(labels: Sequence, rng: np.random.Generator) -> np.ndarray:
    """Indices of a stratified bootstrap resample of ``labels``, of shape (n_labels,).

    Each class is resampled with replacement to its own size, so every class
    keeps at least one example and every member predicts the same classes.
    A class with a single example is the same in every resample: with one
    example per class the bootstrap cannot disagree, which is honest.
    """
    labels = np.asarray(labels)
    picks = [
        rng.choice(members, size=len(members), replace=True)
        for members in (np.flatnonzero(labels == c) for c in np.unique(labels))
    ]
    return np.sort(np.concatenate(picks))


def ensemble_probabilities(
    learner_factory: Callable[[], FewShotLearner],
    support: ArrayLike,
    labels: Sequence,
    pool: ArrayLike,
    *,
    n_members: int = 10,
    seed: int = 0,
    augmented_pools: Sequence[ArrayLike] = (),
) -> np.ndarray:
    """Member predictions for :func:`bald`, of shape (n_members + n_views, n_pool, n_classes).

    The first ``n_members`` rows come from fresh learners fitted on stratified
    bootstrap resamples of ``support`` (n_support, dim) and ``labels``, each
    predicting ``pool`` (n_pool, dim). Then, for test-time augmentation, one
    learner fitted on the whole support predicts each array of
    ``augmented_pools``: embeddings of the same pool images under an
    augmentation, each of shape (n_pool, dim), row i an augmented view of
    ``pool[i]``. Columns follow the sorted class labels, as ``classes_``.
    """
    if n_members < 0:
        raise ValueError("n_members must be zero or more.")
    support = np.asarray(support)
    pool = np.asarray(pool)
    labels = np.asarray(labels)
    rng = np.random.default_rng(seed)
    stack = []
    for _ in range(n_members):
        keep = bootstrap_indices(labels, rng)
        stack.append(learner_factory().fit(support[keep], labels[keep]).predict_proba(pool))
    if len(augmented_pools):
        learner = learner_factory().fit(support, labels)
        for view in augmented_pools:
            view = np.asarray(view)
            if view.shape != pool.shape:
                raise ValueError(
                    f"An augmented view of the pool has shape {view.shape}; it must match the "
                    f"pool's {pool.shape}, one augmented embedding per pool image."
                )
            stack.append(learner.predict_proba(view))
    if not stack:
        raise ValueError("Ask for at least one bootstrap member or one augmented view.")
    return np.stack(stack)


def _check_proba(proba: ArrayLike) -> np.ndarray:
    proba = np.asarray(proba, dtype=float)
    if proba.ndim != 2:
        raise ValueError(
            f"Probabilities must be a 2-D array (n_images, n_classes); got shape {proba.shape}."
        )
    if proba.size and ((proba < -1e-9).any() or not np.allclose(proba.sum(axis=1), 1.0, atol=1e-4)):
        raise ValueError("Each row of probabilities must be non-negative and sum to 1.")
    return np.clip(proba, 0.0, 1.0)
