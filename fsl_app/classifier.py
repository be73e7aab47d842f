"""A learner with calibrated confidence and a "none of these" answer, fitted in one call.

What the app and the command line classify with: any registered learner for
the ranking of the classes, a temperature fitted on its held-out support
predictions for the confidence, and a distance threshold on the embeddings for
"none of these" (both from :mod:`fsl_app.trust.calibration`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import ArrayLike

from fsl_app.learners import DEFAULT_LEARNER, FewShotLearner, NotFittedError, create_learner
from fsl_app.learners.base import softmax
from fsl_app.trust.calibration import (
    DEFAULT_STRICTNESS,
    MAX_FOLDS,
    OpenSetDetector,
    calibrate_temperature,
)


@dataclass(frozen=True)
class CalibratedPredictions:
    """Predictions for n queries over the classes ``classes`` (n_classes,).

    ``probabilities`` (n, n_classes) are calibrated; ``distance`` (n,) is the
    cosine distance to the nearest class prototype and ``unknown`` (n,) marks
    queries beyond the threshold: "none of these". ``prediction`` is the most
    probable class even when unknown, so a user sees what it was closest to.
    """

    classes: np.ndarray
    probabilities: np.ndarray
    distance: np.ndarray
    unknown: np.ndarray

    @property
    def prediction(self) -> np.ndarray:
        return self.classes[self.probabilities.argmax(axis=1)]

    @property
    def confidence(self) -> np.ndarray:
        return self.probabilities.max(axis=1)


class CalibratedClassifier:
    """``learner`` (a registry name, built with ``params``) with calibrated confidence.

    ``strictness`` tunes "none of these" (see :class:`OpenSetDetector`): 1 is
    the default, higher flags more images, 0 turns it off. Calibration refits
    the learner at most ``calibration_folds`` times when the learner class
    sets that attribute (an expensive fit can ask for fewer), else
    :data:`MAX_FOLDS`.

    After ``fit``: ``learner_`` (fitted on every example), ``classes_``,
    ``temperature_``, ``threshold_`` and ``notes``, plain sentences saying
    what the learner started from and where the support was too small to
    calibrate and what to add.
    """

    def __init__(
        self,
        learner: str = DEFAULT_LEARNER,
        *,
        strictness: float = DEFAULT_STRICTNESS,
        **params: Any,
    ):
        self.learner = learner
        self.strictness = strictness
        self.params = params

    def fit(self, support: ArrayLike, labels: Sequence) -> CalibratedClassifier:
        support = np.asarray(support, dtype=np.float32)
        labels = np.asarray(labels)
        self.learner_ = self._make_learner().fit(support, labels)
        self.classes_ = self.learner_.classes_
        max_folds = getattr(type(self.learner_), "calibration_folds", MAX_FOLDS)
        temperature = calibrate_temperature(
            self._make_learner, support, labels, max_folds=max_folds
        )
        self.temperature_ = temperature.value
        self.open_set_ = OpenSetDetector(self.strictness).fit(support, labels)
        self.threshold_ = self.open_set_.threshold_
        open_set_note = (
            '"None of these" is switched off: every image gets one of your classes.'
            if self.strictness == 0
            else self.open_set_.reason_
        )
        # The learner's notes first: what it started from (a meta-trained checkpoint or why none).
        notes = (*self.learner_.notes_, temperature.reason, open_set_note)
        self.notes = [note for note in notes if note]
        return self

    @classmethod
    def from_fitted_state(
        cls,
        learner: str,
        support: ArrayLike,
        labels: Sequence,
        *,
        params: dict[str, Any],
        strictness: float,
        temperature: float,
        open_set: OpenSetDetector,
        notes: Sequence[str] = (),
    ) -> CalibratedClassifier:
        """A fitted classifier restored without calibrating again, e.g. from a saved model.

        The learner is refitted on ``support`` (n_support, dim) and ``labels``
        (n_support,): learners fit deterministically, so it comes back as
        ``fit`` left it, at the cost of one fit instead of the calibration's
        many. ``temperature`` and the fitted ``open_set`` are taken as given.
        """
        model = cls(learner, strictness=strictness, **params)
        model.learner_ = model._make_learner().fit(
            np.asarray(support, dtype=np.float32), np.asarray(labels)
        )
        model.classes_ = model.learner_.classes_
        model.temperature_ = float(temperature)
        model.open_set_ = open_set
        model.threshold_ = open_set.threshold_
        model.notes = list(notes)
        return model

    def predict(self, query: ArrayLike) -> CalibratedPredictions:
        """Calibrated predictions for ``query`` of shape (n_query, dim)."""
        if not hasattr(self, "learner_"):
            raise NotFittedError(
                "This CalibratedClassifier has not been fitted yet: call fit(support, labels) "
                "with labeled examples before predicting."
            )
        logits = self.learner_.decision_function(query)
        distance = self.open_set_.distance(query)
        return CalibratedPredictions(
            classes=self.classes_,
            probabilities=softmax(logits / self.temperature_),
            distance=distance,
            unknown=distance > self.threshold_,
        )

    def predict_proba(self, query: ArrayLike) -> np.ndarray:
        """Calibrated probabilities (n_query, n_classes), as a learner's ``predict_proba``."""
        return self.predict(query).probabilities

    def _make_learner(self) -> FewShotLearner:
        return create_learner(self.learner, **self.params)
