"""How well a project's model does on its own labeled images, measured honestly.

Every labeled image is predicted by a calibrated classifier fitted without it (leave-one-out;
for a learner too slow to refit that often, a few folds dealt class by class), so the accuracy,
the confusion matrix and the reliability chart all describe images the model had not seen.
Accuracy comes with a 95% Wilson score interval, which stays honest with a handful of images
where the normal approximation does not (:func:`fsl_app.evaluation.metrics.accuracy_interval`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from fsl_app.classifier import CalibratedClassifier
from fsl_app.evaluation.folds import deal_folds
from fsl_app.evaluation.metrics import (
    ReliabilityBin,
    accuracy_interval,
    expected_calibration_error,
    reliability_bins,
)
from fsl_app.learners import DEFAULT_LEARNER, learner_entry
from fsl_app.trust.open_set import DEFAULT_STRICTNESS

# Folds for learners that declare an expensive fit (``calibration_folds``); others get LOO.
SLOW_LEARNER_FOLDS = 5
# A class lends images to hold out from two on: its last image cannot be predicted without it.
MIN_CLASS_SIZE = 2
RELIABILITY_BINS = 5  # the chart's bins; the calibration error uses finer ones
# Calibration errors (ECE) up to which confidence reads as honest / roughly honest.
HONEST_ECE = 0.05
ROUGHLY_HONEST_ECE = 0.12


@dataclass(frozen=True)
class HeldOutEvaluation:
    """Predictions of held-out labeled images and what they add up to.

    ``confusion[i, j]`` counts images of ``classes[i]`` predicted as ``classes[j]``.
    ``unknown`` marks held-out images the model called "none of these" although they belong
    to a class (false alarms); the accuracy counts the closest class either way.
    """

    method: str
    classes: list[str]
    ids: list[str]
    true: list[str]
    predicted: list[str]
    confidence: np.ndarray
    unknown: np.ndarray
    accuracy: float
    low: float
    high: float
    confusion: np.ndarray
    ece: float
    reliability: list[ReliabilityBin]
    notes: list[str] = field(default_factory=list)

    @property
    def n(self) -> int:
        return len(self.ids)

    @property
    def correct(self) -> int:
        return int(sum(t == p for t, p in zip(self.true, self.predicted, strict=True)))

    def per_class(self) -> dict[str, tuple[int, int]]:
        """Class -> (right, held out)."""
        return {
            c: (int(self.confusion[i, i]), int(self.confusion[i].sum()))
            for i, c in enumerate(self.classes)
        }

    def images(self, true_class: str, predicted_class: str) -> list[str]:
        """Ids of held-out images of ``true_class`` predicted as ``predicted_class``."""
        return [
            i
            for i, t, p in zip(self.ids, self.true, self.predicted, strict=True)
            if t == true_class and p == predicted_class
        ]

    @property
    def method_words(self) -> str:
        """How the numbers were measured, for someone who does not know "leave-one-out"."""
        if self.method == "leave-one-out":
            return (
                "each labeled picture was hidden in turn and predicted by a model that learned "
                "from all the others (leave-one-out)"
            )
        return (
            f"the labeled pictures were dealt into {self.method.split('-')[0]} groups, and each "
            f"group was predicted by a model that learned from the other groups ({self.method})"
        )

    def confidence_verdict(self) -> tuple[str, str]:
        """(a word or two, a sentence) on whether its confidence can be taken at its word,
        judged by the calibration error (ECE) and whether it is too sure or too modest."""
        too_sure = float(np.mean(self.confidence)) > self.accuracy if self.n else False
        if self.ece <= HONEST_ECE:
            return "Honest", "When it says it is 80% sure, it is right about 8 times in 10."
        if self.ece <= ROUGHLY_HONEST_ECE:
            lean = "a little too sure" if too_sure else "a little too modest"
            return "Roughly honest", f"Its confidence is roughly right; on average {lean}."
        if too_sure:
            return (
                "Too sure",
                "It is right less often than its confidence says: take 'sure' with care until "
                "the classes have more examples.",
            )
        return (
            "Too modest",
            "It is right more often than its confidence says: an 'unsure' answer is often right.",
        )

    def summary(self) -> str:
        return (
            f"{self.accuracy:.0%} right ({self.correct} of {self.n} labeled images, each "
            f"predicted without it; 95% interval {self.low:.0%} to {self.high:.0%})"
        )


def evaluate_held_out(
    support: np.ndarray,
    labels: Sequence[str],
    ids: Sequence[str],
    *,
    learner: str = DEFAULT_LEARNER,
    strictness: float = DEFAULT_STRICTNESS,
    params: Mapping[str, Any] | None = None,
    backbone: str | None = None,
    embedding_dim: int | None = None,
) -> HeldOutEvaluation:
    """Held-out evaluation of the project's classifier on its labeled images.

    ``support`` holds the rows the learner takes (:attr:`fsl_app.embedded_set.EmbeddedSet.
    inputs`; ``embedding_dim`` says where the embedding ends when they are wider), ``backbone``
    the image model that made them (a meta-trained learner looks up its start by it).

    ValueError when fewer than two classes have two or more images: nothing can be held out.
    """
    labels_array = np.asarray(labels)
    classes = sorted(set(labels))
    slow = hasattr(learner_entry(learner).learner_class, "calibration_folds")
    folds = deal_folds(
        labels, min_class_size=MIN_CLASS_SIZE, max_folds=SLOW_LEARNER_FOLDS if slow else None
    )
    if len(classes) < 2 or len(np.unique(labels_array[folds >= 0])) < 2:
        raise ValueError(
            "To measure accuracy, give at least two classes two or more examples each."
        )
    held, predicted, confidence, unknown = [], [], [], []
    for fold in range(folds.max() + 1):
        out = folds == fold
        image_model = {"backbone": backbone} if backbone else {}
        model = CalibratedClassifier(
            learner,
            strictness=strictness,
            embedding_dim=embedding_dim,
            **image_model,
            **dict(params or {}),
        )
        result = model.fit(support[~out], labels_array[~out]).predict_calibrated(support[out])
        held.extend(np.flatnonzero(out).tolist())
        predicted.extend(str(p) for p in result.prediction)
        confidence.extend(result.confidence.tolist())
        unknown.extend(result.unknown.tolist())
    true = [str(labels_array[i]) for i in held]
    correct = sum(t == p for t, p in zip(true, predicted, strict=True))
    low, high = accuracy_interval(correct, len(held))
    index = {c: i for i, c in enumerate(classes)}
    confusion = np.zeros((len(classes), len(classes)), dtype=int)
    for t, p in zip(true, predicted, strict=True):
        confusion[index[t], index[p]] += 1
    confidence_array = np.asarray(confidence, dtype=float)
    correct_mask = np.array([t == p for t, p in zip(true, predicted, strict=True)])
    notes = []
    if (folds < 0).any():
        left = sorted({str(labels_array[i]) for i in np.flatnonzero(folds < 0)})
        notes.append(
            f"Not measured: {', '.join(left)} (a class needs two examples to hold one out)."
        )
    return HeldOutEvaluation(
        method=f"{folds.max() + 1}-fold cross-validation" if slow else "leave-one-out",
        classes=classes,
        ids=[ids[i] for i in held],
        true=true,
        predicted=predicted,
        confidence=confidence_array,
        unknown=np.asarray(unknown, dtype=bool),
        accuracy=correct / len(held),
        low=low,
        high=high,
        confusion=confusion,
        ece=expected_calibration_error(confidence_array, correct_mask),
        reliability=reliability_bins(confidence_array, correct_mask, RELIABILITY_BINS),
        notes=notes,
    )
