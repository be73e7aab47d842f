"""One project's images as embeddings, and what the model makes of them.

The app's pages ask this module, never torch: the embeddings of a project's images (read from
the embedding cache by the hash the store already knows, so a rerun reads no image file), the
fitted classifier, predictions with their uncertainty and explanation, and the images most worth
labeling next. Adding a label changes the labels and refits a few-shot learner on embeddings
that are already there; nothing is embedded again.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from fsl_app.active import DEFAULT_STRATEGY, Suggestion, rank
from fsl_app.classifier import CalibratedClassifier
from fsl_app.embeddings import Embedder
from fsl_app.learners import DEFAULT_LEARNER, create_learner
from fsl_app.project.store import Prediction, ProjectImage, Store, StoreError
from fsl_app.trust.calibration import DEFAULT_STRICTNESS
from fsl_app.trust.explanations import explain
from fsl_app.trust.uncertainty import entropy

ProgressCallback = Callable[[int, int], None]

# Calibrated confidence below which a prediction is shown as unsure, and at or above which it
# is shown as sure; in between it is "fairly sure". Calibrated, so "sure" is right about 8 in 10.
SURE_CONFIDENCE = 0.8
UNSURE_CONFIDENCE = 0.5
# A class with fewer examples than this gets a hint to add more: calibration needs 3 per class.
FEW_EXAMPLES = 3


@dataclass(frozen=True)
class ProjectFeatures:
    """A project's usable images, one embedding row each, in the order they were added.

    ``labels[i]`` is the class of ``ids[i]`` (its sha256) or None when unlabeled. ``failed``
    lists (name, message) of stored images the backbone could not read.
    """

    ids: list[str]
    names: list[str]
    labels: list[str | None]
    matrix: np.ndarray  # (n, dim) float32
    failed: list[tuple[str, str]] = field(default_factory=list)

    @property
    def labeled(self) -> np.ndarray:
        return np.array([label is not None for label in self.labels], dtype=bool)

    def rows(self, ids: Sequence[str]) -> np.ndarray:
        position = {image_id: i for i, image_id in enumerate(self.ids)}
        return np.array([position[i] for i in ids if i in position], dtype=int)

    def support(self) -> tuple[np.ndarray, list[str]]:
        """Embeddings and labels of the labeled images."""
        mask = self.labeled
        return self.matrix[mask], [label for label in self.labels if label is not None]


def project_features(
    store: Store,
    project_id: int,
    embedder: Embedder,
    *,
    images: Sequence[ProjectImage] | None = None,
    progress: ProgressCallback | None = None,
) -> ProjectFeatures:
    """Embeddings of the project's images: from the cache by hash, the rest through the model.

    ``images`` (default: all of the project's) may be passed when the caller already listed
    them. ``progress(done, total)`` is called only while images go through the model.
    """
    images = list(store.list_images(project_id) if images is None else images)
    hashes = [image.sha256 for image in images]
    vectors = embedder.cache.get_many(embedder.cache_key, hashes)
    missing = [image for image in images if image.sha256 not in vectors]
    failed: list[tuple[str, str]] = []
    if missing:
        readable, sources = [], []
        for image in missing:
            try:
                sources.append(store.image_path(image.sha256))
                readable.append(image)
            except StoreError as err:  # a row whose file went away: report it, keep the rest
                failed.append((image.name, str(err)))
        embedded = embedder.embed(sources, progress=progress)
        vectors.update(zip(embedded.hashes, embedded.embeddings, strict=True))
        failed.extend((readable[i].name, message) for i, message in embedded.errors)
    usable = [image for image in images if image.sha256 in vectors]
    dim = embedder.backbone.embedding_dim
    matrix = (
        np.stack([vectors[image.sha256] for image in usable]).astype(np.float32, copy=False)
        if usable
        else np.zeros((0, dim), np.float32)
    )
    return ProjectFeatures(
        ids=[image.sha256 for image in usable],
        names=[image.name for image in usable],
        labels=[image.class_name for image in usable],
        matrix=matrix,
        failed=failed,
    )


def readiness(class_counts: Mapping[str, int]) -> list[str]:
    """Why the project cannot predict yet, as sentences to act on; empty when it can.

    ``class_counts`` maps every class of the project to its number of usable examples.
    """
    problems = []
    if len(class_counts) < 2:
        problems.append(
            "Add at least two classes: the app tells classes apart, so it needs two or more."
        )
    empty = [name for name, count in class_counts.items() if count == 0]
    if empty:
        problems.append(f"Add example images to: {', '.join(empty)}.")
    return problems


def few_example_hints(class_counts: Mapping[str, int]) -> list[str]:
    """Gentle hints for classes with too few examples to be learned or calibrated well."""
    return [
        f"'{name}' has {count} example{'s' if count != 1 else ''}: add a few more "
        f"(at least {FEW_EXAMPLES}, better 5 to 10) so the app learns it and knows how sure "
        "to be."
        for name, count in class_counts.items()
        if 0 < count < FEW_EXAMPLES
    ]


def fit_project_classifier(
    features: ProjectFeatures,
    *,
    learner: str = DEFAULT_LEARNER,
    strictness: float = DEFAULT_STRICTNESS,
    params: Mapping[str, Any] | None = None,
) -> CalibratedClassifier:
    """The calibrated classifier of the project's labeled images (ValueError if not ready)."""
    support, labels = features.support()
    counts = {label: labels.count(label) for label in dict.fromkeys(labels)}
    problems = readiness(counts)
    if problems:
        raise ValueError(" ".join(problems))
    return CalibratedClassifier(learner, strictness=strictness, **dict(params or {})).fit(
        support, labels
    )


@dataclass(frozen=True)
class ImagePrediction:
    """What the model says about one image, ready to show.

    ``uncertainty`` is the normalised entropy of the probabilities (0: certain, 1: no idea);
    ``badge`` one of "sure", "fairly sure", "unsure", "none of these"; ``neighbours`` the ids of
    the labeled images of the predicted class nearest to it, the explanation.
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

    def as_store_prediction(self) -> Prediction:
        return Prediction(
            self.id, self.prediction, self.confidence, self.unknown, self.probabilities
        )


def predict_images(
    classifier: CalibratedClassifier, features: ProjectFeatures, ids: Sequence[str]
) -> list[ImagePrediction]:
    """Predictions for the images ``ids`` of the project (others are skipped), in that order."""
    rows = features.rows(ids)
    if len(rows) == 0:
        return []
    query = features.matrix[rows]
    predicted = classifier.predict(query)
    classes = [str(c) for c in predicted.classes]
    support, labels = features.support()
    support_ids = [i for i, label in zip(features.ids, features.labels, strict=True) if label]
    explanations = explain(support, labels, query, predicted.probabilities, classes)
    spread = entropy(predicted.probabilities) if len(classes) > 1 else np.zeros(len(rows))
    results = []
    for j, row in enumerate(rows):
        confidence = float(predicted.confidence[j])
        unknown = bool(predicted.unknown[j])
        prediction = str(predicted.prediction[j])
        why = explanations[j]
        results.append(
            ImagePrediction(
                id=features.ids[row],
                name=features.names[row],
                label=features.labels[row],
                prediction=prediction,
                confidence=confidence,
                unknown=unknown,
                probabilities={
                    c: float(p) for c, p in zip(classes, predicted.probabilities[j], strict=True)
                },
                uncertainty=float(spread[j]),
                badge=badge(confidence, unknown),
                explanation=_explanation_text(why.text, unknown, prediction),
                neighbours=[support_ids[n.index] for n in why.neighbours],
                runner_up=why.runner_up,
            )
        )
    return results


def badge(confidence: float, unknown: bool) -> str:
    if unknown:
        return "none of these"
    if confidence >= SURE_CONFIDENCE:
        return "sure"
    if confidence >= UNSURE_CONFIDENCE:
        return "fairly sure"
    return "unsure"


def _explanation_text(text: str, unknown: bool, prediction: str) -> str:
    if not unknown:
        return text
    return (
        f"Unlike the examples of every class; the closest is '{prediction}', but it is further "
        "from it than the examples of each class are from each other."
    )


def suggest_next(
    features: ProjectFeatures,
    *,
    k: int = 3,
    strategy: str = DEFAULT_STRATEGY,
    learner: str = DEFAULT_LEARNER,
    params: Mapping[str, Any] | None = None,
    skipped: Sequence[str] = (),
) -> list[tuple[str, Suggestion]]:
    """The unlabeled images most worth labeling next, as (image id, suggestion), best first.

    Images in ``skipped`` (ids the user passed over) are left out of the pool.
    """
    left_out = set(skipped)
    pool_rows = [
        i
        for i, (image_id, label) in enumerate(zip(features.ids, features.labels, strict=True))
        if label is None and image_id not in left_out
    ]
    if not pool_rows:
        return []
    support, labels = features.support()
    factory_params = dict(params or {})
    chosen = strategy
    if strategy != "auto" and len(set(labels)) < 2:
        chosen = "auto"  # the model-based strategies need two classes; auto starts without
    suggestions = rank(
        chosen,
        support=support,
        labels=labels,
        pool=features.matrix[pool_rows],
        k=k,
        learner_factory=lambda: create_learner(learner, **factory_params),
    )
    return [(features.ids[pool_rows[s.index]], s) for s in suggestions]
