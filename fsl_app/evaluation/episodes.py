"""N-way K-shot episodes and honest evaluation over them.

Every learner is scored on the same fixed-seed episodes, so differences between
learners are not differences in luck. Accuracy is the mean over episodes with a
95% confidence half-width of 1.96 * std / sqrt(episodes) (the convention of the
few-shot literature, e.g. Chen et al. 2019), next to the expected calibration
error of the probabilities and the seconds each episode took.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any, Protocol

import numpy as np

from fsl_app.evaluation.metrics import confidence_interval95, expected_calibration_error, top_label


class Classifier(Protocol):
    """What evaluation needs: a learner, or a learner wrapped with calibration."""

    classes_: np.ndarray

    def fit(
        self, support: np.ndarray, labels: Sequence, *, unlabeled: np.ndarray | None = None
    ) -> Any: ...

    def predict_proba(self, query: np.ndarray) -> np.ndarray: ...


@dataclass(frozen=True)
class Episode:
    """One task: indices into a labeled array, support and query drawn from ``classes``."""

    classes: tuple[str, ...]
    support: np.ndarray  # (ways * shots,) indices
    query: np.ndarray  # (ways * queries,) indices


def sample_episodes(
    labels: Sequence[str],
    *,
    ways: int,
    shots: int,
    queries: int,
    n_episodes: int,
    seed: int = 0,
) -> list[Episode]:
    """``n_episodes`` tasks of ``ways`` classes, each with ``shots`` + ``queries`` images.

    Only classes with at least ``shots + queries`` images take part; the same
    seed gives the same episodes.
    """
    labels = np.asarray(labels)
    names, counts = np.unique(labels, return_counts=True)
    eligible = names[counts >= shots + queries]
    if len(eligible) < ways:
        raise ValueError(
            f"A {ways}-way {shots}-shot episode with {queries} queries per class needs "
            f"{ways} classes of at least {shots + queries} images; only {len(eligible)} "
            "classes have that many."
        )
    members = {name: np.flatnonzero(labels == name) for name in eligible}
    rng = np.random.default_rng(seed)
    episodes = []
    for _ in range(n_episodes):
        classes = tuple(rng.choice(eligible, size=ways, replace=False))
        picks = [rng.choice(members[c], size=shots + queries, replace=False) for c in classes]
        episodes.append(
            Episode(
                classes,
                np.concatenate([p[:shots] for p in picks]),
                np.concatenate([p[shots:] for p in picks]),
            )
        )
    return episodes


@dataclass(frozen=True)
class EvaluationResult:
    learner: str
    ways: int
    shots: int
    accuracy: float  # mean over episodes, a fraction in [0, 1]
    ci95: float  # half-width of the 95% confidence interval of ``accuracy``
    ece: float  # expected calibration error over all queries
    episodes: int
    seconds_per_episode: float

    def as_dict(self) -> dict:
        return asdict(self)


def evaluate_learner(
    make_learner: Callable[[], Classifier],
    features: np.ndarray,
    labels: Sequence[str],
    episodes: Sequence[Episode],
    *,
    name: str,
    transductive: bool = True,
) -> EvaluationResult:
    """Fit a fresh learner on each episode's support and score its queries.

    The queries are passed as the pictures still to sort (``unlabeled``), as the app passes
    its pool; ``transductive=False`` scores the learner inductively, without them.
    """
    labels = np.asarray(labels)
    accuracies, probabilities, targets = [], [], []
    started = time.perf_counter()
    for episode in episodes:
        unlabeled = features[episode.query] if transductive else None
        learner = make_learner().fit(
            features[episode.support], labels[episode.support], unlabeled=unlabeled
        )
        proba = learner.predict_proba(features[episode.query])
        truth = np.searchsorted(learner.classes_, labels[episode.query])
        accuracies.append(float((proba.argmax(axis=1) == truth).mean()))
        probabilities.append(proba)
        targets.append(truth)
    elapsed = time.perf_counter() - started
    ways = len(episodes[0].classes)
    return EvaluationResult(
        learner=name,
        ways=ways,
        shots=len(episodes[0].support) // ways,
        accuracy=float(np.mean(accuracies)),
        ci95=confidence_interval95(accuracies),
        ece=expected_calibration_error(
            *top_label(np.concatenate(probabilities), np.concatenate(targets))
        ),
        episodes=len(episodes),
        seconds_per_episode=elapsed / len(episodes),
    )
