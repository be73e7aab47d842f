"""Labeled examples that look like another class: probably put in the wrong folder.

Each example is judged by a model that has not seen it (leave-one-out, so a wrong label cannot
vouch for itself), with the temperature calibrated on the whole support, and by its nearest
neighbours among the other examples. An example is flagged when the held-out model gives another
class a calibrated probability of at least ``min_score`` and at least ``1 / max_own_ratio`` times
what it gives the example's own label, and fewer than half of its nearest examples share its
label.

Measured on Tux Paint photos (4 classes x 8 examples, 4 of them moved to a wrong class, 4
seeds): without the ``max_own_ratio`` rule 12 of 16 planted mistakes were found with 7 of 112
correct examples flagged — all of those between fruit and vegetable, which overlap (tomatoes,
peppers). Their own label kept 0.25-0.59 of the other class's probability, the planted
mistakes' at most 0.17. With ``max_own_ratio`` 0.2: the same 12 found, none of the correct
ones flagged.

A person acts on a suggestion ("move it"), so only confident ones are made: ``min_score`` is
the "sure" badge's threshold (:data:`~fsl_app.trust.badges.SURE_CONFIDENCE`, 80%), the
probability at which a prediction is called sure everywhere else, and the example's own label
must keep at most a fifth of it (``max_own_ratio``). Fewer mistakes are found, mostly in small
classes, where calibrated probabilities stay modest: on the draws above 7 of the 16 planted
mistakes instead of 12 at 50%; in the demo's 5 classes (``benchmarks/label_check.py``, 10
draws, 5 planted each) 5 of 50 instead of 29 with 4 examples per class, 31 of 50 instead of 44
with 8; no correct example was doubted at either threshold. What goes is the kind of
suggestion a user could not trust: a sliced orange put among birds was suggested for "flower"
at 65%.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike

from fsl_app.learners import DEFAULT_LEARNER, create_learner
from fsl_app.trust.badges import SURE_CONFIDENCE
from fsl_app.trust.calibration import calibrate_temperature, held_out_predictions
from fsl_app.trust.explanations import cosine_distances

DEFAULT_MIN_SCORE = SURE_CONFIDENCE
DEFAULT_MAX_OWN_RATIO = 0.2
NEIGHBOURS = 5


@dataclass(frozen=True)
class SuspectLabel:
    """Example ``index`` is labeled ``label`` but looks like ``suspected`` (with ``score``)."""

    index: int
    label: str
    suspected: str
    score: float
    reason: str


def find_mislabeled(
    support: ArrayLike,
    labels: Sequence[str],
    *,
    learner: str = DEFAULT_LEARNER,
    min_score: float = DEFAULT_MIN_SCORE,
    max_own_ratio: float = DEFAULT_MAX_OWN_RATIO,
    neighbours: int = NEIGHBOURS,
) -> list[SuspectLabel]:
    """Examples whose label looks wrong, most suspicious first.

    Only classes with two or more examples can be judged (a class's only example has nothing
    to be compared with); with fewer than two classes nothing is flagged.
    """
    support = np.asarray(support, dtype=np.float32)
    labels_array = np.asarray([str(label) for label in labels])
    classes, counts = np.unique(labels_array, return_counts=True)
    if len(classes) < 2 or (counts >= 2).sum() == 0:
        return []

    def make() -> object:
        return create_learner(learner)

    temperature = calibrate_temperature(make, support, labels_array).value
    # Leave-one-out: as many folds as judged examples. Logit columns follow ``classes``.
    judged = np.flatnonzero(np.isin(labels_array, classes[counts >= 2]))
    held = held_out_predictions(
        make, support, labels_array, min_class_size=2, max_folds=len(judged)
    )
    from fsl_app.learners.base import softmax  # torch: not for the parser's DEFAULT_MIN_SCORE

    probabilities = softmax(held.logits / temperature)
    distances = cosine_distances(support, support)
    np.fill_diagonal(distances, np.inf)
    suspects = []
    for row, index in enumerate(held.indices):
        own = int(held.targets[row])
        ranked = np.argsort(-probabilities[row])
        best = int(ranked[0]) if ranked[0] != own else int(ranked[1])
        score, own_score = float(probabilities[row, best]), float(probabilities[row, own])
        if score < min_score or own_score > max_own_ratio * score:
            continue
        nearest = np.argsort(distances[index], kind="stable")[:neighbours]
        alike = int((labels_array[nearest] == classes[own]).sum())
        if alike * 2 >= len(nearest):  # most of its nearest examples share its label
            continue
        suspects.append(
            SuspectLabel(
                index=int(index),
                label=str(classes[own]),
                suspected=str(classes[best]),
                score=score,
                reason=(
                    f"labeled '{classes[own]}' but looks more like '{classes[best]}': "
                    f"{score:.0%} '{classes[best]}' against {own_score:.0%} '{classes[own]}', "
                    f"judged by a model that has not seen it; {_of_nearest(alike, len(nearest))} "
                    f"'{classes[own]}'"
                ),
            )
        )
    return sorted(suspects, key=lambda s: -s.score)


def _of_nearest(alike: int, nearest: int) -> str:
    """ "none of the 5 examples most like it is", "1 of the 5 ... is", "2 of the 5 ... are"."""
    count = "none" if alike == 0 else str(alike)
    return f"{count} of the {nearest} examples most like it {'are' if alike > 1 else 'is'}"
