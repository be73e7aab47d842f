"""Says "none of these" for a picture farther from every class than the examples are.

Fitted on the user's examples alone: the threshold comes from how far each example lies from
its own class without it. With too few examples a rough rule stands in, and a sentence says
what to add.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from numpy.typing import ArrayLike

from fsl_app.errors import NotFittedError

DEFAULT_STRICTNESS = 1.0
# Quantile of the held-out distances to the own class that the threshold sits at: 0.95 kept
# the share of in-class queries called unknown under 7% on average in every real setting
# measured (0.9 reached 10.5%). Per-class thresholds and nearest-example distances were
# measured too and flagged more in-class queries for the same share of foreign ones.
DEFAULT_QUANTILE = 0.95


def power_normalize(features: ArrayLike) -> np.ndarray:
    """Signed square root, then unit length, row by row: shape (n, dim) in and out.

    Power normalisation (Perronnin, Sánchez & Mensink, ECCV 2010) damps the
    few large activations of pooled CNN features, so the distance reflects
    which features fire rather than how strongly the strongest one does. On
    real 1280-d embeddings it raised the share of foreign images (Fashion-MNIST,
    digits) flagged at the same false-alarm rate, e.g. digits at 5 shots from
    44% to 71%, without hurting in-class queries. That was measured on the
    default backbone's non-negative (post-ReLU) features; the signed root keeps
    signed features (e.g. a ViT's) well defined, untested.
    """
    features = np.asarray(features, dtype=np.float64)
    return _unit_rows(np.sign(features) * np.sqrt(np.abs(features)))


class OpenSetDetector:
    """Says "none of these" for a query farther from every class than its examples are.

    Distances are cosine distances, after :func:`power_normalize`, from a query
    to its nearest class mean (prototype); they work on embeddings alone, so
    the answer is the same whichever learner classifies. ``threshold_`` is the
    ``quantile`` of the leave-one-out distances of the support (each example
    to the mean of the rest of its class) divided by ``strictness``: higher
    strictness flags more, 0 turns the detector off (threshold infinite).
    When no class has 2 examples, the threshold falls back to the median
    distance between the (single-example) prototypes, and ``reason_`` says so.

    Measured with 3 known Tux Paint classes (all 10 triples, 10 draws each),
    at the default strictness, the share called unknown of: photos of the
    known classes / of the 2 other Tux Paint classes / Fashion-MNIST / digits:
    1 shot 7% / 20% / 32% / 55%, 2 shots 3% / 12% / 20% / 37%, 3 shots 4% /
    17% / 27% / 56%, 5 shots 4% / 23% / 37% / 71%. Strictness 1.1 gives 10%
    / 39% / 64% / 92% at 5 shots, 0.9 gives 1% / 10% / 15% / 41%.

    ``negatives`` (n_negatives, dim), embeddings of pictures a person said are
    none of the classes, move the decision: a query nearer to one of them than
    to every class mean is unknown whatever its distance. Three such pictures of
    other things (``benchmarks/open_set.py``) raised the share of other things
    flagged from 35% to 77% at 1 shot and from 46% to 68% at 5 shots; the cost
    falls on 1 shot, where a class is one picture: photos of the known classes
    flagged went from 9% to 20% (5.9% to 6.5% at 5 shots).

    Knowledge beyond the examples was measured in place of or beside the distance
    (``benchmarks/open_set.py``, 3 classes, 100 projects per row) and is not used: a
    background of ~1,300 clip-art pictures (distance minus the distance to the nearest
    one; relative Mahalanobis, Ren et al. 2021, arXiv:2106.09022; cosine after
    whitening by its covariance) separated known from foreign pictures worse than the
    plain distance, and so did the backbone's own ImageNet classifier rows taken as
    1,000 background directions (distance minus the distance to the nearest one: area
    under the ROC curve within a project 84.3% -> 79.1% at 3 shots). Relative
    Mahalanobis against those directions raised that area a little (84.3% -> 87.7% at
    3 shots, 88.1% -> 90.4% at 5) but flagged fewer photos of other Tux Paint
    categories (27.7% -> 22.7% at 3 shots and 8% of known photos flagged) while
    flagging more digits, and no threshold of any of them comes near flagging 85% of
    other things at 8% of known ones (at most 47% at 3 shots, 60% at 5).

    After ``fit``: ``classes_`` (n_classes,), ``prototypes_`` (n_classes, dim),
    ``negatives_`` (n_negatives, dim), power-normalised, ``threshold_``,
    ``reason_`` (None when the threshold is fitted).
    """

    def __init__(self, strictness: float = DEFAULT_STRICTNESS, quantile: float = DEFAULT_QUANTILE):
        self.strictness = strictness
        self.quantile = quantile

    def fit(
        self, support: ArrayLike, labels: Sequence, *, negatives: ArrayLike | None = None
    ) -> OpenSetDetector:
        if self.strictness < 0:
            raise ValueError("strictness must be 0 (off) or a positive number; 1 is the default.")
        from fsl_app.learners.base import as_embeddings  # torch: not when only reading constants

        features = power_normalize(as_embeddings(support, "support").numpy())
        if np.shape(labels) != (len(features),):
            raise ValueError(
                f"Got {len(features)} support embeddings but {np.size(labels)} labels; "
                "each example needs exactly one label."
            )
        self.classes_, targets = np.unique(np.asarray(labels), return_inverse=True)
        n_classes = len(self.classes_)
        if n_classes < 2:
            raise ValueError('"None of these" needs at least two classes to tell apart.')
        sums = np.zeros((n_classes, features.shape[1]))
        np.add.at(sums, targets, features)
        counts = np.bincount(targets, minlength=n_classes)
        self.prototypes_ = _unit_rows(sums)
        self.negatives_ = _negatives(negatives, features.shape[1])
        held_out = counts[targets] >= 2
        self.reason_ = None
        if held_out.any():
            # Each example against the mean of the other examples of its class.
            rest = sums[targets[held_out]] - features[held_out]
            distances = 1 - (features[held_out] * _unit_rows(rest)).sum(axis=1)
            base = float(np.quantile(distances, self.quantile))
        else:
            between = 1 - self.prototypes_ @ self.prototypes_.T
            base = float(np.median(between[np.triu_indices(n_classes, 1)]))
            self.reason_ = (
                '"None of these" uses a rough rule for now: add a second example to a class '
                "so it can learn how much your images of one class vary."
            )
        self.threshold_ = base / self.strictness if self.strictness > 0 else float("inf")
        return self

    @classmethod
    def from_fitted_state(
        cls,
        *,
        classes: ArrayLike,
        prototypes: ArrayLike,
        threshold: float,
        strictness: float = DEFAULT_STRICTNESS,
        reason: str | None = None,
        negatives: ArrayLike | None = None,
    ) -> OpenSetDetector:
        """A detector with the state ``fit`` learned, e.g. read back from a saved model.

        ``classes`` (n_classes,), ``prototypes`` (n_classes, dim) and
        ``threshold`` are taken as given, not recomputed, so a restored
        detector flags exactly what the fitted one did; ``negatives``
        (n_negatives, dim) are the fitted ``negatives_`` (default: none).
        """
        detector = cls(strictness)
        detector.classes_ = np.asarray(classes)
        detector.prototypes_ = np.asarray(prototypes, dtype=np.float64)
        detector.threshold_ = float(threshold)
        detector.reason_ = reason
        detector.negatives_ = _negatives(negatives, detector.prototypes_.shape[1], normalized=True)
        return detector

    def distance(self, query: ArrayLike) -> np.ndarray:
        """Cosine distance of each query to its nearest prototype, of shape (n_query,)."""
        return self.assess(query)[0]

    def is_unknown(self, query: ArrayLike) -> np.ndarray:
        """True for each query farther than ``threshold_`` from every class, or nearer to a
        negative than to every class, of shape (n_query,); never when strictness is 0."""
        return self.assess(query)[1]

    def assess(self, query: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
        """(:meth:`distance`, :meth:`is_unknown`) of ``query`` from one normalisation of it:
        the classifier needs both for every picture it predicts."""
        features = self._normalized(query)
        distance = 1 - (features @ self.prototypes_.T).max(axis=1)
        unknown = distance > self.threshold_
        if len(self.negatives_) and self.strictness > 0:
            unknown |= 1 - (features @ self.negatives_.T).max(axis=1) < distance
        return distance, unknown

    def _normalized(self, query: ArrayLike) -> np.ndarray:
        if not hasattr(self, "prototypes_"):
            raise NotFittedError(
                "This OpenSetDetector has not been fitted yet: call fit(support, labels) first."
            )
        from fsl_app.learners.base import as_embeddings

        query = as_embeddings(query, "query").numpy()
        if query.shape[1] != self.prototypes_.shape[1]:
            raise ValueError(
                f"Query embeddings have {query.shape[1]} dimensions but the detector was "
                f"fitted on {self.prototypes_.shape[1]}; were they made with another backbone?"
            )
        return power_normalize(query)


def _negatives(negatives: ArrayLike | None, dim: int, normalized: bool = False) -> np.ndarray:
    """``negatives`` power-normalised, of shape (n_negatives, dim); (0, dim) for None."""
    if negatives is None:
        return np.zeros((0, dim))
    negatives = np.asarray(negatives, dtype=np.float64)
    if negatives.size == 0:
        return np.zeros((0, dim))
    if negatives.ndim != 2 or negatives.shape[1] != dim or not np.isfinite(negatives).all():
        raise ValueError(
            f"The 'none of these' pictures must be finite {dim}-d embeddings, one per row, "
            "made with the backbone of the examples."
        )
    return negatives if normalized else power_normalize(negatives)


def _unit_rows(vectors: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    return vectors / np.where(norms > 0, norms, 1.0)
