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
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from fsl_app.calibrated import CalibratedClassifier
from fsl_app.calibration import DEFAULT_STRICTNESS
from fsl_app.datasets import ImageFolder, list_files, scan_image_folder
from fsl_app.embeddings import Embedder, ImageSource, ProgressCallback
from fsl_app.learners import DEFAULT_LEARNER

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
    example_names = example_names or [str(s) for s in examples]
    query_names = query_names or [str(s) for s in queries]
    classes = list(classes) if classes is not None else sorted(set(labels))
    if len(classes) < 2:
        raise UnusableInputError(
            "At least two classes are needed to tell images apart; "
            f"found {len(classes)}. Add examples of another class."
        )
    if not queries:
        raise UnusableInputError("There are no images to predict.")

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

    embedded_queries = embedder.embed(queries, names=query_names, progress=progress("queries"))
    results = {i: QueryResult(query_names[i], error=why) for i, why in embedded_queries.errors}
    if embedded_queries.indices:
        predicted = model.predict(embedded_queries.embeddings)
        class_names = [str(c) for c in model.classes_]
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
        classes, [results[i] for i in sorted(results)], skipped, list(model.notes)
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
    query_files = list_input_files(query)
    classification = classify_images(
        embedder,
        support.paths,
        support.labels,
        query_files,
        classes=support.classes,
        learner=learner,
        strictness=strictness,
        progress=progress,
    )
    classification.skipped_examples[:0] = [
        (str(path), "it is not inside a class folder") for path in support.loose_files
    ]
    return classification


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


def list_input_files(path: str | os.PathLike, what: str = "query") -> list[Path]:
    """Files of one image or a folder of images, refused clearly when there are none."""
    try:
        files = list_files(path)
    except FileNotFoundError:
        raise UnusableInputError(f"The {what} '{path}' does not exist.") from None
    if not files:
        raise UnusableInputError(f"The {what} folder '{path}' has no files in it.")
    return files
