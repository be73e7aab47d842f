"""Few-shot classification of image files, from class folders to predictions.

The glue between files and learners, shared by the command line and anything
else that classifies folders: scan, embed (through the cache), fit, predict.
Unreadable files are reported per file and skipped; only input that leaves
nothing to learn from or nothing to predict raises :class:`UnusableInputError`.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from fsl_app.datasets import ImageFolder, list_files, scan_image_folder
from fsl_app.embeddings import Embedder, ProgressCallback
from fsl_app.learners import create_learner


class UnusableInputError(ValueError):
    """The input as a whole cannot be classified; the message says what to fix."""


@dataclass(frozen=True)
class QueryResult:
    """One query file: a prediction with its probabilities, or why it was skipped."""

    path: str
    prediction: str | None = None
    confidence: float | None = None
    probabilities: dict[str, float] | None = None
    error: str | None = None


@dataclass
class Classification:
    classes: list[str]
    results: list[QueryResult]
    skipped_support: list[tuple[str, str]] = field(default_factory=list)  # (path, reason)

    @property
    def n_predicted(self) -> int:
        return sum(r.error is None for r in self.results)


def classify_files(
    embedder: Embedder,
    support_dir: str | os.PathLike,
    query: str | os.PathLike,
    *,
    learner: str = "protonet",
    progress: Callable[[str], ProgressCallback | None] = lambda stage: None,
) -> Classification:
    """Learn the classes in ``support_dir`` (one subfolder each) and classify ``query``.

    ``query`` is one image or a folder of images at any depth. ``progress(stage)``
    may return a callback for the "examples" and "queries" embedding stages.
    """
    support = _scan_support(support_dir)
    query_files = _list_queries(query)

    embedded = embedder.embed(support.paths, progress=progress("examples"))
    skipped = [(str(path), "it is not inside a class folder") for path in support.loose_files]
    skipped += [(str(support.paths[i]), reason) for i, reason in embedded.errors]
    labels = [support.labels[i] for i in embedded.indices]
    empty = [c for c in support.classes if c not in set(labels)]
    if empty:
        raise UnusableInputError(
            f"These classes have no readable image: {', '.join(empty)}. "
            "Add at least one image to each class folder (or remove the folder)."
        )

    model = create_learner(learner).fit(embedded.embeddings, labels)
    queries = embedder.embed(query_files, progress=progress("queries"))
    results: dict[int, QueryResult] = {
        i: QueryResult(str(query_files[i]), error=reason) for i, reason in queries.errors
    }
    if queries.indices:
        probabilities = model.predict_proba(queries.embeddings)
        classes = [str(c) for c in model.classes_]
        for index, row in zip(queries.indices, probabilities, strict=True):
            best = int(np.argmax(row))
            results[index] = QueryResult(
                str(query_files[index]),
                prediction=classes[best],
                confidence=float(row[best]),
                probabilities={c: float(p) for c, p in zip(classes, row, strict=True)},
            )
    classification = Classification(support.classes, [results[i] for i in sorted(results)], skipped)
    if classification.n_predicted == 0:
        raise UnusableInputError(
            f"None of the {len(query_files)} query file(s) is a readable image, "
            "so there is nothing to predict."
        )
    return classification


def _scan_support(support_dir: str | os.PathLike) -> ImageFolder:
    if not Path(support_dir).is_dir():
        raise UnusableInputError(
            f"The examples folder '{support_dir}' does not exist or is not a folder."
        )
    support = scan_image_folder(support_dir)
    if len(support.classes) < 2:
        found = f"only '{support.classes[0]}'" if support.classes else "none"
        raise UnusableInputError(
            f"The examples folder '{support_dir}' needs at least two class subfolders "
            f"(one per class, images inside); found {found}."
        )
    return support


def _list_queries(query: str | os.PathLike) -> list[Path]:
    try:
        files = list_files(query)
    except FileNotFoundError:
        raise UnusableInputError(f"The query '{query}' does not exist.") from None
    if not files:
        raise UnusableInputError(f"The query folder '{query}' has no files in it.")
    return files
