"""Few-shot classification of images, from labeled examples to predictions.

The glue between image sources and learners, shared by the command line and
the app: embed (through the cache), fit a calibrated classifier, predict.
Confidence is calibrated on the examples, and an image unlike every class is
marked ``unknown`` ("none of these"). Unreadable images are
reported one by one and skipped; only input that leaves nothing to learn from
or nothing to predict raises :class:`UnusableInputError`.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from fsl_app.classifier import CalibratedClassifier
from fsl_app.datasets import ImageFolder, scan_image_folder
from fsl_app.embeddings import Embedder, ImageSource, ProgressCallback
from fsl_app.files import LeftOut, iter_image_files
from fsl_app.learners import DEFAULT_LEARNER
from fsl_app.trust.calibration import DEFAULT_STRICTNESS

# Given a stage ("examples" or "queries"), a progress callback for it, or None.
ProgressFactory = Callable[[str], ProgressCallback | None]


class UnusableInputError(ValueError):
    """The input as a whole cannot be classified; the message says what to fix."""


@dataclass(frozen=True)
class QueryResult:
    """One query image: a prediction with its probabilities, or why it was skipped.

    ``name`` is the file path, or the upload's name for raw bytes. ``confidence``
    is the calibrated probability of ``prediction``; ``unknown`` means the image
    is unlike every class ("none of these"), and ``prediction`` is then the
    class it is closest to.
    """

    name: str
    prediction: str | None = None
    confidence: float | None = None
    probabilities: dict[str, float] | None = None
    unknown: bool = False
    error: str | None = None


@dataclass
class Classification:
    classes: list[str]
    results: list[QueryResult]
    skipped_examples: list[tuple[str, str]] = field(default_factory=list)  # (name, reason)
    notes: list[str] = field(default_factory=list)  # what more examples would make more honest

    @property
    def n_predicted(self) -> int:
        return sum(r.error is None for r in self.results)


@dataclass
class FittedClassifier:
    """A classifier fitted on the readable examples, with what it was fitted on.

    ``support`` (n, dim) and ``labels`` (n,) are the embeddings and class
    names of the readable examples, what :func:`fsl_app.deploy.bundle.save_bundle`
    keeps; ``skipped`` the (name, reason) of the others.
    """

    model: CalibratedClassifier
    support: np.ndarray
    labels: list[str]
    skipped: list[tuple[str, str]]


def classify_images(
    embedder: Embedder,
    examples: Sequence[ImageSource],
    labels: Sequence[str],
    queries: Sequence[ImageSource],
    *,
    example_names: Sequence[str] | None = None,
    query_names: Sequence[str] | None = None,
    classes: Sequence[str] | None = None,
    learner: str = DEFAULT_LEARNER,
    strictness: float = DEFAULT_STRICTNESS,
    progress: ProgressFactory = lambda stage: None,
) -> Classification:
    """Learn the classes from labeled ``examples`` and classify ``queries``.

    Sources are file paths or raw bytes; ``*_names`` name raw bytes in messages
    and results. ``classes`` lists every class the user defined, so that one
    whose examples are all unreadable is reported instead of silently dropped.
    ``strictness`` tunes "none of these": higher marks more images unknown, 0
    never does.
    """
    classes = list(classes) if classes is not None else sorted(set(labels))
    _require_two_classes(classes)
    if not queries:
        raise UnusableInputError("There are no images to predict.")
    fitted = fit_classifier(
        embedder,
        examples,
        labels,
        example_names=example_names,
        classes=classes,
        learner=learner,
        strictness=strictness,
        progress=progress,
    )
    classification = classify_with(
        embedder, fitted.model, queries, query_names=query_names, progress=progress
    )
    return replace(classification, classes=classes, skipped_examples=fitted.skipped)


def fit_classifier(
    embedder: Embedder,
    examples: Sequence[ImageSource],
    labels: Sequence[str],
    *,
    example_names: Sequence[str] | None = None,
    classes: Sequence[str] | None = None,
    learner: str = DEFAULT_LEARNER,
    strictness: float = DEFAULT_STRICTNESS,
    progress: ProgressFactory = lambda stage: None,
) -> FittedClassifier:
    """Embed labeled ``examples`` and fit a calibrated classifier on the readable ones.

    Arguments are those of :func:`classify_images`.
    """
    example_names = example_names or [str(s) for s in examples]
    classes = list(classes) if classes is not None else sorted(set(labels))
    _require_two_classes(classes)
    embedded = embedder.embed(examples, names=example_names, progress=progress("examples"))
    skipped = [(example_names[i], reason) for i, reason in embedded.errors]
    fitted_labels = [labels[i] for i in embedded.indices]
    empty = [c for c in classes if c not in set(fitted_labels)]
    if empty:
        raise UnusableInputError(
            f"These classes have no readable image: {', '.join(empty)}. "
            "Add at least one image to each class (or remove the class)."
        )
    model = CalibratedClassifier(learner, strictness=strictness).fit(
        embedded.embeddings, fitted_labels
    )
    return FittedClassifier(model, embedded.embeddings, fitted_labels, skipped)


def classify_with(
    embedder: Embedder,
    model: CalibratedClassifier,
    queries: Sequence[ImageSource],
    *,
    query_names: Sequence[str] | None = None,
    progress: ProgressFactory = lambda stage: None,
) -> Classification:
    """Classify ``queries`` with a fitted ``model``, e.g. one loaded from a saved bundle.

    ``embedder`` must use the backbone the model's examples were embedded
    with. The result's classes are the model's, in its column order.
    """
    if not queries:
        raise UnusableInputError("There are no images to predict.")
    query_names = query_names or [str(s) for s in queries]
    embedded_queries = embedder.embed(queries, names=query_names, progress=progress("queries"))
    results = {i: QueryResult(query_names[i], error=why) for i, why in embedded_queries.errors}
    class_names = [str(c) for c in model.classes_]
    if embedded_queries.indices:
        predicted = model.predict(embedded_queries.embeddings)
        for index, row, unknown in zip(
            embedded_queries.indices, predicted.probabilities, predicted.unknown, strict=True
        ):
            best = int(np.argmax(row))
            results[index] = QueryResult(
                query_names[index],
                prediction=class_names[best],
                confidence=float(row[best]),
                probabilities=dict(zip(class_names, row.tolist(), strict=True)),
                unknown=bool(unknown),
            )
    classification = Classification(
        class_names, [results[i] for i in sorted(results)], notes=list(model.notes)
    )
    if classification.n_predicted == 0:
        raise UnusableInputError(
            f"None of the {len(queries)} query image(s) is readable, so there is nothing to "
            "predict."
        )
    return classification


def classify_files(
    embedder: Embedder,
    support_dir: str | os.PathLike,
    query: str | os.PathLike,
    *,
    learner: str = DEFAULT_LEARNER,
    strictness: float = DEFAULT_STRICTNESS,
    progress: ProgressFactory = lambda stage: None,
) -> Classification:
    """Learn the classes in ``support_dir`` (one subfolder each) and classify ``query``.

    ``query`` is one image or a folder of images at any depth; ``strictness``
    is that of :func:`classify_images`.
    """
    support = scan_examples_folder(support_dir)
    left_out = support.left_out
    query_files = list_input_files(query, left_out=left_out)
    fitted = fit_folder(
        embedder, support, learner=learner, strictness=strictness, progress=progress
    )
    classification = classify_with(embedder, fitted.model, query_files, progress=progress)
    return replace(
        classification,
        classes=support.classes,
        skipped_examples=fitted.skipped,
        notes=_with_left_out(classification.notes, left_out),
    )


def classify_files_with(
    embedder: Embedder,
    model: CalibratedClassifier,
    query: str | os.PathLike,
    *,
    progress: ProgressFactory = lambda stage: None,
) -> Classification:
    """Classify ``query`` (one image or a folder of images) with a fitted ``model``."""
    left_out = LeftOut()
    classification = classify_with(
        embedder, model, list_input_files(query, left_out=left_out), progress=progress
    )
    return replace(classification, notes=_with_left_out(classification.notes, left_out))


def _with_left_out(notes: list[str], left_out: LeftOut) -> list[str]:
    """The notes, and a last one saying how many files were left out as not images."""
    note = left_out.note()
    return [*notes, note] if note else notes


def fit_folder(
    embedder: Embedder,
    support: ImageFolder,
    *,
    learner: str = DEFAULT_LEARNER,
    strictness: float = DEFAULT_STRICTNESS,
    progress: ProgressFactory = lambda stage: None,
) -> FittedClassifier:
    """:func:`fit_classifier` on the class folders of ``support``, one class each.

    Files outside every class folder are reported as skipped examples.
    """
    fitted = fit_classifier(
        embedder,
        support.paths,
        support.labels,
        classes=support.classes,
        learner=learner,
        strictness=strictness,
        progress=progress,
    )
    loose = [(str(path), "it is not inside a class folder") for path in support.loose_files]
    return replace(fitted, skipped=loose + fitted.skipped)


def _require_two_classes(classes: Sequence[str]) -> None:
    if len(classes) < 2:
        raise UnusableInputError(
            "At least two classes are needed to tell images apart; "
            f"found {len(classes)}. Add examples of another class."
        )


def scan_examples_folder(support_dir: str | os.PathLike, *, min_classes: int = 2) -> ImageFolder:
    """The class folders under ``support_dir``, refused clearly when there are too few."""
    if not Path(support_dir).is_dir():
        raise UnusableInputError(
            f"The examples folder '{support_dir}' does not exist or is not a folder."
        )
    support = scan_image_folder(support_dir)
    if len(support.classes) < min_classes:
        found = f"only '{support.classes[0]}'" if support.classes else "none"
        raise UnusableInputError(
            f"The examples folder '{support_dir}' needs at least {min_classes} class folders "
            f"(one per class, images inside); found {found}."
        )
    return support


def list_input_files(
    path: str | os.PathLike, what: str = "query", *, left_out: LeftOut | None = None
) -> list[Path]:
    """One image, or the images in a folder, refused clearly when there are none.

    Files in the folder that are not images are counted in ``left_out``.
    """
    left_out = left_out if left_out is not None else LeftOut()
    before = left_out.count
    try:
        files = list(iter_image_files(path, left_out))
    except FileNotFoundError:
        raise UnusableInputError(f"The {what} '{path}' does not exist.") from None
    if not files:
        others = left_out.count - before
        raise UnusableInputError(
            f"The {what} folder '{path}' has no files in it."
            if not others
            else f"The {what} folder '{path}' has no images in it, only other files."
        )
    return files
