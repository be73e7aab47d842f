"""Example-based explanations: which labeled examples a prediction rests on.

A few-shot prediction is a comparison with the user's own examples, so the
most honest explanation shows them: "looks most like these 3 examples of
'cat'; next closest: 'fox'". Distances are cosine distances (1 - cosine
similarity) between embeddings, the geometry the default learner uses.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Neighbour:
    index: int  # row of the support set
    label: str
    distance: float  # cosine distance in [0, 2]


@dataclass(frozen=True)
class Explanation:
    prediction: str
    neighbours: list[Neighbour]  # nearest examples of the predicted class, closest first
    runner_up: str | None  # the next most probable class

    @property
    def text(self) -> str:
        count = len(self.neighbours)
        noun = "example" if count == 1 else f"{count} examples"
        sentence = (
            f"Looks most like {'this' if count == 1 else 'these'} {noun} of '{self.prediction}'"
        )
        if self.runner_up is not None:
            sentence += f"; next closest: '{self.runner_up}'"
        return sentence + "."


def cosine_distances(query: np.ndarray, support: np.ndarray) -> np.ndarray:
    """(n_query, n_support) cosine distances."""
    q = query / np.maximum(np.linalg.norm(query, axis=1, keepdims=True), 1e-12)
    s = support / np.maximum(np.linalg.norm(support, axis=1, keepdims=True), 1e-12)
    return np.clip(1.0 - q @ s.T, 0.0, 2.0)


def explain(
    support: np.ndarray,
    labels: Sequence[str],
    query: np.ndarray,
    probabilities: np.ndarray,
    classes: Sequence[str],
    k: int = 3,
) -> list[Explanation]:
    """For each query: its ``k`` nearest examples of the predicted class and the runner-up.

    ``probabilities`` is (n_query, n_classes) with columns in ``classes`` order
    (a learner's ``predict_proba`` and ``classes_``).
    """
    labels = np.asarray(labels)
    distances = cosine_distances(np.asarray(query, np.float32), np.asarray(support, np.float32))
    order = np.argsort(-np.asarray(probabilities), axis=1, kind="stable")
    explanations = []
    for row, ranking in enumerate(order):
        prediction = str(classes[ranking[0]])
        members = np.flatnonzero(labels == prediction)
        nearest = members[np.argsort(distances[row, members], kind="stable")[:k]]
        explanations.append(
            Explanation(
                prediction,
                [Neighbour(int(i), prediction, float(distances[row, i])) for i in nearest],
                str(classes[ranking[1]]) if len(ranking) > 1 else None,
            )
        )
    return explanations
