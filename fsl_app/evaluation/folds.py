"""Which examples to hold out together, for every place that predicts an example without it.

Calibration (:mod:`fsl_app.trust.calibration`) and a project's measured accuracy
(:mod:`fsl_app.evaluation.held_out`) both refit a learner without some of the user's examples
and predict those. They differ in the rules (how large a class must be to lend examples, how
many refits are affordable, whether to shuffle), not in how examples are dealt, so the dealing
is here once and the rules are parameters.

Only numpy: the calibration that :mod:`fsl_app.classifier` runs imports this, and the held-out
evaluation that imports the classifier does too, without a cycle.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import ArrayLike


def deal_folds(
    labels: ArrayLike,
    *,
    min_class_size: int,
    max_folds: int | None = None,
    seed: int | None = None,
) -> np.ndarray:
    """The fold of each example, of shape (n,); -1 for examples never held out.

    Only classes with ``min_class_size`` or more examples lend examples, so a refit without one
    fold still sees every class (a class's last example cannot be predicted without the class).
    Their examples are dealt class by class (in ``np.unique`` order), round robin, into
    ``max_folds`` folds, so with two or more folds no fold takes a whole class; with
    ``max_folds=None``, or no more examples than folds, each is its own fold (leave-one-out).
    Folds are numbered 0 to n_folds - 1 and none is empty. ``seed`` shuffles each class's
    examples before dealing; ``None`` deals them in their order.
    """
    labels = np.asarray(labels)
    _, targets, counts = np.unique(labels, return_inverse=True, return_counts=True)
    rng = None if seed is None else np.random.default_rng(seed)
    order = []
    for c in np.flatnonzero(counts >= min_class_size):
        members = np.flatnonzero(targets == c)
        order.extend(members if rng is None else rng.permutation(members))
    n_folds = len(order) if max_folds is None else min(max_folds, len(order))
    folds = np.full(len(labels), -1)
    if n_folds:
        folds[order] = np.arange(len(order)) % n_folds
    return folds
