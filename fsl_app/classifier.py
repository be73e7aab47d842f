"""THE fitted model: a learner, its calibration and "none of these", and one record per picture.

Every page, command, export and batch job classifies through :func:`fit_classifier` and
:meth:`CalibratedClassifier.predict_pictures`, so the same picture gets the same class, the same
confidence and the same "none of these" everywhere. The ranking of the classes comes from any
registered learner; the confidence from a temperature fitted on its held-out predictions of the
examples (:mod:`fsl_app.trust.calibration`); "none of these" from a distance threshold on the
embeddings (:mod:`fsl_app.trust.open_set`). The classifier keeps what it was fitted on, so
saving it needs nothing else.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import ArrayLike

from fsl_app.embedded_set import EmbeddedSet, waiting_note
from fsl_app.errors import UnusableInputError
from fsl_app.learners import DEFAULT_LEARNER, FewShotLearner, NotFittedError, create_learner
from fsl_app.learners.base import softmax
from fsl_app.threads import single_threaded
from fsl_app.trust.badges import MARKED, badge
from fsl_app.trust.calibration import MAX_FOLDS, calibrate_temperature
from fsl_app.trust.explanations import explain
from fsl_app.trust.open_set import DEFAULT_STRICTNESS, OpenSetDetector

# Pictures still to sort that a fit learns from, at most: a semi-supervised learner refines its
# class centres as well from 500 as from 10,000 (measured: the soft k-means default's own cap),
# and every refit, calibration fold and saved model stays small.
MAX_UNLABELED = 500


@dataclass(frozen=True)
class CalibratedPredictions:
    """Predictions for n queries over the classes ``classes`` (n_classes,), as arrays.

    ``probabilities`` (n, n_classes) are calibrated; ``distance`` (n,) is the
    cosine distance to the nearest class prototype and ``unknown`` (n,) marks
    queries beyond the threshold, or nearer to a picture marked "none of these"
    than to every class: "none of these". ``prediction`` is the most
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


@dataclass(frozen=True)
class Prediction:
    """What the model says about one picture, the same on every page, command and file.

    ``prediction`` is the most probable class (when ``unknown``, the class it is closest to);
    ``confidence`` its calibrated probability; ``probabilities`` every class's; ``uncertainty``
    is ``1 - confidence``, the calibrated chance that the class shown is wrong (one number a
    person reads one way: an entropy over all classes said 0.92 "no idea" beside a 53% answer);
    ``badge`` one of :data:`fsl_app.trust.badges.BADGES`; ``explanation`` a sentence,
    ``neighbours`` the ids of the
    examples of the predicted class nearest to it and ``runner_up`` the next most probable
    class. ``label`` is the picture's own class when it is an example; ``marked`` says the user
    marked it "none of these classes" (then ``unknown`` too, whatever the model thinks).
    """

    id: str
    name: str
    label: str | None
    prediction: str
    confidence: float
    unknown: bool
    probabilities: dict[str, float]
    uncertainty: float
    badge: str
    explanation: str
    neighbours: list[str]
    runner_up: str | None
    marked: bool = False

    @property
    def verdict(self) -> str:
        """The answer in words: the class, or "none of these" with the closest class."""
        if self.marked:
            return "none of these (marked by you)"
        return f"none of these (closest: {self.prediction})" if self.unknown else self.prediction


class CalibratedClassifier:
    """``learner`` (a registry name, built with ``params``) with calibrated confidence.

    ``strictness`` tunes "none of these" (see :class:`OpenSetDetector`): 1 is
    the default, higher flags more images, 0 turns it off. Calibration refits
    the learner at most ``calibration_folds`` times when the learner class
    sets that attribute (an expensive fit can ask for fewer), else
    :data:`MAX_FOLDS`.

    Rows are what the learner takes: embeddings (n, dim), or for a learner that adapts the
    image model's last stage the embedding followed by the activations entering that stage
    (:attr:`fsl_app.embedded_set.EmbeddedSet.inputs`); ``embedding_dim`` (default: the whole
    row) then says where the embedding ends, and "none of these" and the explanations read
    only that part.

    After ``fit``: ``learner_`` (fitted on every example), ``classes_``,
    ``temperature_``, ``open_set_``, ``threshold_``, what it was fitted on
    (``support_`` (n_support, width), ``labels_`` (n_support,) and ``ids_``, the
    examples' ids or None), ``embedding_dim_``, and ``notes``: plain sentences saying what the
    learner started from, where the support was too small to calibrate and
    what to add.
    """

    def __init__(
        self,
        learner: str = DEFAULT_LEARNER,
        *,
        strictness: float = DEFAULT_STRICTNESS,
        embedding_dim: int | None = None,
        **params: Any,
    ):
        self.learner = learner
        self.strictness = strictness
        self.embedding_dim = embedding_dim
        self.params = params

    def fit(
        self,
        support: ArrayLike,
        labels: Sequence,
        *,
        ids: Sequence[str] | None = None,
        unlabeled: ArrayLike | None = None,
        negatives: ArrayLike | None = None,
    ) -> CalibratedClassifier:
        """Fit on ``support`` (n_support, width) and ``labels`` (n_support,).

        ``unlabeled`` (n_unlabeled, width), the pictures still to sort, go to the learner and
        to calibration's refits (a semi-supervised learner learns from them; the others ignore
        them). ``negatives`` (n_negatives, dim) are embeddings of pictures a person said are
        none of the classes; "none of these" uses them (see :class:`OpenSetDetector`).
        """
        self._keep_examples(support, labels, ids)
        self.unlabeled_ = _pool(unlabeled, self.support_.shape[-1])
        with single_threaded(not self._carries_activations()):
            self.learner_ = self._make_learner().fit(
                self.support_, self.labels_, unlabeled=self.unlabeled_
            )
            max_folds = getattr(type(self.learner_), "calibration_folds", MAX_FOLDS)
            temperature = calibrate_temperature(
                self._make_learner,
                self.support_,
                self.labels_,
                max_folds=max_folds,
                unlabeled=self.unlabeled_,
            )
            self.open_set_ = OpenSetDetector(self.strictness).fit(
                self.embeddings_of(self.support_), self.labels_, negatives=negatives
            )
        self.classes_ = self.learner_.classes_
        self.temperature_ = temperature.value
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
        ids: Sequence[str] | None = None,
        unlabeled: ArrayLike | None = None,
        embedding_dim: int | None = None,
    ) -> CalibratedClassifier:
        """A fitted classifier restored without calibrating again, e.g. from a saved model.

        The learner is refitted on ``support`` (n_support, dim), ``labels``
        (n_support,) and the ``unlabeled`` pool it used (the fitted ``unlabeled_``):
        learners fit deterministically, so it comes back as ``fit`` left it, at the
        cost of one fit instead of the calibration's many. ``temperature`` and the
        fitted ``open_set`` are taken as given.
        """
        model = cls(learner, strictness=strictness, embedding_dim=embedding_dim, **params)
        model._keep_examples(support, labels, ids)
        model.unlabeled_ = _pool(unlabeled, model.support_.shape[-1])
        model.learner_ = model._make_learner().fit(
            model.support_, model.labels_, unlabeled=model.unlabeled_
        )
        model.classes_ = model.learner_.classes_
        model.temperature_ = float(temperature)
        model.open_set_ = open_set
        model.threshold_ = open_set.threshold_
        model.notes = list(notes)
        return model

    @property
    def needs_last_stage(self) -> bool:
        """Whether the rows it takes carry, after the embedding, the activations entering the
        image model's last stage (its learner adapts that stage): wider than the embedding."""
        self._check_fitted()
        return self._carries_activations()

    def _carries_activations(self) -> bool:
        """:attr:`needs_last_stage` once the examples are kept. Work on such rows is large and
        keeps torch's threads; work on embeddings alone runs on one (:mod:`fsl_app.threads`)."""
        return self.embedding_dim_ < self.support_.shape[-1]

    def embeddings_of(self, rows: ArrayLike) -> np.ndarray:
        """The embedding part (n, dim) of rows this classifier takes (n, width)."""
        return np.asarray(rows, dtype=np.float32)[:, : self.embedding_dim_]

    def predict_calibrated(self, query: ArrayLike) -> CalibratedPredictions:
        """Calibrated predictions for ``query`` of shape (n_query, width), as arrays."""
        self._check_fitted()
        query = np.asarray(query, dtype=np.float32)
        self._check_width(query)
        with single_threaded(not self.needs_last_stage):
            logits = self.learner_.decision_function(query)
            distance, unknown = self.open_set_.assess(self.embeddings_of(query))
        return CalibratedPredictions(
            classes=self.classes_,
            probabilities=softmax(logits / self.temperature_),
            distance=distance,
            unknown=unknown,
        )

    def predict_proba(self, query: ArrayLike) -> np.ndarray:
        """Calibrated probabilities (n_query, n_classes), as a learner's ``predict_proba``."""
        return self.predict_calibrated(query).probabilities

    def predict(self, query: ArrayLike) -> np.ndarray:
        """The most probable class of each query, of shape (n_query,), as a learner's."""
        return self.predict_calibrated(query).prediction

    def predict_pictures(
        self,
        embeddings: ArrayLike,
        *,
        ids: Sequence[str],
        names: Sequence[str],
        labels: Sequence[str | None] | None = None,
        none_of_these: Collection[str] = (),
    ) -> list[Prediction]:
        """One :class:`Prediction` per row of ``embeddings`` (n, width), in that order.

        ``ids`` and ``names`` (n,) identify the pictures; ``labels`` (n,) are their own
        classes when they are examples (default: none is); the ids in ``none_of_these`` are
        pictures the user marked so, and their records say so.
        """
        embeddings = np.asarray(embeddings, dtype=np.float32)
        if len(embeddings) == 0:
            return []
        predicted = self.predict_calibrated(embeddings)
        classes = [str(c) for c in predicted.classes]
        with single_threaded():  # on embeddings alone
            explanations = explain(
                self.embeddings_of(self.support_),
                self.labels_,
                self.embeddings_of(embeddings),
                predicted.probabilities,
                classes,
            )
        records = []
        for j, why in enumerate(explanations):
            confidence = float(predicted.confidence[j])
            marked = ids[j] in none_of_these
            unknown = marked or bool(predicted.unknown[j])
            prediction = str(predicted.prediction[j])
            records.append(
                Prediction(
                    id=ids[j],
                    name=names[j],
                    label=None if labels is None else labels[j],
                    prediction=prediction,
                    confidence=confidence,
                    unknown=unknown,
                    probabilities={
                        c: float(p)
                        for c, p in zip(classes, predicted.probabilities[j], strict=True)
                    },
                    uncertainty=1 - confidence,
                    badge=MARKED if marked else badge(confidence, unknown),
                    explanation=_explanation_text(
                        why.text,
                        unknown,
                        prediction,
                        marked,
                        beyond_threshold=bool(predicted.distance[j] > self.threshold_),
                    ),
                    neighbours=[]
                    if self.ids_ is None
                    else [self.ids_[n.index] for n in why.neighbours],
                    runner_up=why.runner_up,
                    marked=marked,
                )
            )
        return records

    def refit_factory(self) -> FewShotLearner:
        """A fresh learner of this classifier's kind whose probabilities use its temperature.

        What active learning's ensembles are made of, so that every number a reason quotes
        is on the scale the predictions are shown on.
        """
        self._check_fitted()
        return _Tempered(self._make_learner(), self.temperature_)

    def _keep_examples(
        self,
        support: ArrayLike,
        labels: Sequence,
        ids: Sequence[str] | None,
    ) -> None:
        self.support_ = np.asarray(support, dtype=np.float32)
        self.embedding_dim_ = int(self.embedding_dim or self.support_.shape[-1])
        self.labels_ = np.asarray(labels)
        if ids is not None and len(ids) != len(self.labels_):
            raise ValueError(f"Got {len(ids)} ids for {len(self.labels_)} examples.")
        self.ids_ = None if ids is None else [str(i) for i in ids]

    def _check_width(self, query: np.ndarray) -> None:
        width = self.support_.shape[-1]
        if query.ndim == 2 and query.shape[1] != width and width != self.embedding_dim_:
            raise ValueError(
                f"This model adapts the image model's last stage: each picture needs its "
                f"embedding and its activations entering that stage ({width} numbers), but got "
                f"{query.shape[1]}. Build the pictures with their last stage "
                "(fsl_app.embedded_set.with_last_stage)."
            )

    def _check_fitted(self) -> None:
        if not hasattr(self, "learner_"):
            raise NotFittedError(
                "This CalibratedClassifier has not been fitted yet: call fit(support, labels) "
                "with labeled examples before predicting."
            )

    def _make_learner(self) -> FewShotLearner:
        return create_learner(self.learner, **self.params)


class _Tempered:
    """A learner whose ``predict_proba`` divides its logits by a fixed temperature."""

    def __init__(self, learner: FewShotLearner, temperature: float):
        self.learner = learner
        self.temperature = temperature

    def fit(
        self, support: ArrayLike, labels: Sequence, unlabeled: ArrayLike | None = None
    ) -> _Tempered:
        self.learner.fit(support, labels, unlabeled=unlabeled)
        self.classes_ = self.learner.classes_
        return self

    def predict_proba(self, query: ArrayLike) -> np.ndarray:
        return softmax(self.learner.decision_function(query) / self.temperature)


def _pool(unlabeled: ArrayLike | None, dim: int) -> np.ndarray:
    """The pictures still to sort that a fit uses, (n <= MAX_UNLABELED, dim) float32.

    A seeded subsample of a larger pool: the same pool gives the same model, a refit at every
    label stays fast, and a saved model carries the pool it was fitted with.
    """
    if unlabeled is None or np.size(unlabeled) == 0:
        return np.zeros((0, dim), np.float32)
    unlabeled = np.asarray(unlabeled, dtype=np.float32)
    if len(unlabeled) > MAX_UNLABELED:
        keep = np.random.default_rng(0).choice(len(unlabeled), MAX_UNLABELED, replace=False)
        unlabeled = unlabeled[np.sort(keep)]
    return unlabeled


def fit_classifier(
    embedded: EmbeddedSet,
    *,
    learner: str = DEFAULT_LEARNER,
    strictness: float = DEFAULT_STRICTNESS,
    params: Mapping[str, Any] | None = None,
) -> CalibratedClassifier:
    """The calibrated classifier of the set's examples; :class:`UnusableInputError` when the
    set is not ready (fewer than two classes with a usable example). Classes still without an
    example are left out of the model, and its first note names them.

    The examples are fitted in one canonical order (by class, then id), so the same pictures
    give the same model, and the same numbers, wherever they come from.
    """
    problems = embedded.readiness()
    if problems:
        raise UnusableInputError(" ".join(problems))
    _, labels, ids = embedded.examples()
    support = embedded.inputs[embedded.labeled]
    # One order for the same examples, however they were added: calibration deals examples
    # into folds by their order, so a project and the folders exported from it must agree.
    order = sorted(range(len(ids)), key=lambda i: (labels[i], ids[i]))
    # The image model goes with the learner's parameters: a meta-trained learner looks up its
    # checkpoint by it, here and wherever a saved model is loaded.
    backbone = {"backbone": embedded.backbone} if embedded.backbone else {}
    model = CalibratedClassifier(
        learner,
        strictness=strictness,
        embedding_dim=embedded.embedding_dim,
        **backbone,
        **dict(params or {}),
    )
    model.fit(
        support[order],
        [labels[i] for i in order],
        ids=[ids[i] for i in order],
        # The learner that adapts the last stage (the only one given its activations) learns
        # from the examples alone.
        unlabeled=embedded.pool() if embedded.stage is None else None,
        negatives=embedded.negatives(),
    )
    # A class still without examples is left out, and the model says so wherever it is shown.
    if note := waiting_note(embedded.class_counts()):
        model.notes.insert(0, note)
    return model


def predict_set(
    classifier: CalibratedClassifier, embedded: EmbeddedSet, ids: Sequence[str] | None = None
) -> list[Prediction]:
    """Predictions for the pictures ``ids`` of the set (default: every unlabeled one).

    Ids not in the set are left out; the order is that of ``ids``.
    """
    rows = np.flatnonzero(~embedded.labeled) if ids is None else embedded.rows(ids)
    return classifier.predict_pictures(
        embedded.inputs[rows],
        ids=[embedded.ids[i] for i in rows],
        names=[embedded.names[i] for i in rows],
        labels=[embedded.labels[i] for i in rows],
        none_of_these=embedded.none_of_these,
    )


def _explanation_text(
    text: str, unknown: bool, prediction: str, marked: bool, *, beyond_threshold: bool
) -> str:
    if marked:
        return (
            "You marked it as none of these classes; the app learns from it what is foreign "
            f"(the class it looks closest to is '{prediction}')."
        )
    if not unknown:
        return text
    if not beyond_threshold:  # a picture marked "none of these" decided it
        return (
            "Closer to a picture you marked 'none of these' than to the examples of any "
            f"class; the closest class is '{prediction}'."
        )
    return (
        f"Unlike the examples of every class; the closest is '{prediction}', but it is further "
        "from it than the examples of each class are from each other."
    )
