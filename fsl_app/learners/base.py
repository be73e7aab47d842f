"""The learner protocol: fit on support embeddings, predict class probabilities.

Learners follow scikit-learn's ``NearestCentroid``: ``__init__`` only stores
parameters, ``fit(support, labels)`` returns ``self``, learned state ends in
``_`` (``classes_``, ``prototypes_``), and predicting before fitting raises
:class:`NotFittedError`. They work on embeddings (arrays), never on images or
files, so the same learner serves the CLI, the app and the evaluation.

Gradient-based learners (MAML) fit the same way: ``fit`` runs their inner loop
on the support set and ``predict_proba`` runs the adapted head.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import ClassVar

import numpy as np
import torch
from numpy.typing import ArrayLike


class NotFittedError(RuntimeError):
    """A learner was asked to predict before it saw any examples."""


class FewShotLearner(ABC):
    """Base of every learner: label bookkeeping, input checks and softmax."""

    name: ClassVar[str]

    classes_: np.ndarray  # (n_classes,) sorted class labels; column order of predict_proba

    def fit(self, support: ArrayLike, labels: Sequence) -> FewShotLearner:
        """Learn the classes from ``support`` of shape (n_support, dim) and their labels."""
        features = as_embeddings(support, "support")
        labels = np.asarray(labels)
        if labels.shape != (len(features),):
            raise ValueError(
                f"Got {len(features)} support embeddings but {labels.size} labels; "
                "each example needs exactly one label."
            )
        classes, targets = np.unique(labels, return_inverse=True)
        if len(classes) < 2:
            raise ValueError("A few-shot learner needs at least two classes to tell apart.")
        self.classes_ = classes
        self.n_features_in_ = features.shape[1]
        self._fit(features, torch.as_tensor(targets, dtype=torch.long))
        return self

    def decision_function(self, query: ArrayLike) -> np.ndarray:
        """Unnormalised class scores (logits) of shape (n_query, n_classes).

        Calibration divides these by a temperature before the softmax.
        """
        features = self._check_query(query)
        with torch.no_grad():
            return self._logits(features).double().numpy()

    def predict_proba(self, query: ArrayLike) -> np.ndarray:
        """Class probabilities of shape (n_query, n_classes), columns in ``classes_`` order."""
        return softmax(self.decision_function(query))

    def predict(self, query: ArrayLike) -> np.ndarray:
        """The most probable class label of each query, of shape (n_query,)."""
        return self.classes_[self.predict_proba(query).argmax(axis=1)]

    def _check_query(self, query: ArrayLike) -> torch.Tensor:
        if not hasattr(self, "classes_"):
            raise NotFittedError(
                f"This {type(self).__name__} has not been fitted yet: call fit(support, labels) "
                "with labeled examples before predicting."
            )
        features = as_embeddings(query, "query")
        if features.shape[1] != self.n_features_in_:
            raise ValueError(
                f"Query embeddings have {features.shape[1]} dimensions but the learner was "
                f"fitted on {self.n_features_in_}; were they made with another backbone?"
            )
        return features

    @abstractmethod
    def _fit(self, support: torch.Tensor, targets: torch.Tensor) -> None:
        """Learn from support of shape (n_support, dim) and targets in [0, n_classes)."""

    @abstractmethod
    def _logits(self, query: torch.Tensor) -> torch.Tensor:
        """Unnormalised class scores of shape (n_query, n_classes)."""


def softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise softmax, stable for large logits."""
    shifted = logits - logits.max(axis=1, keepdims=True)
    exp = np.exp(shifted)
    return exp / exp.sum(axis=1, keepdims=True)


def as_embeddings(array: ArrayLike, what: str) -> torch.Tensor:
    """``array`` as a float32 tensor of shape (n, dim), or ValueError saying what is wrong.

    ``what`` ("support", "query") names the array in the message.
    """
    features = torch.as_tensor(np.asarray(array, dtype=np.float32))
    if features.ndim != 2 or len(features) == 0:
        raise ValueError(
            f"The {what} embeddings must be a non-empty 2-D array (n_images, dim); "
            f"got shape {tuple(features.shape)}."
        )
    if not torch.isfinite(features).all():
        raise ValueError(f"The {what} embeddings contain NaN or infinite values.")
    return features
