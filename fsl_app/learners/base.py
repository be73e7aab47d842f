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
from typing import TYPE_CHECKING, ClassVar

import numpy as np
import torch
from numpy.typing import ArrayLike

from fsl_app.errors import NotFittedError
from fsl_app.threads import single_threaded

if TYPE_CHECKING:
    from fsl_app.pretrained import Checkpoint


class FewShotLearner(ABC):
    """Base of every learner: label bookkeeping, input checks and softmax."""

    name: ClassVar[str]

    classes_: np.ndarray  # (n_classes,) sorted class labels; column order of predict_proba
    # Plain sentences for the user about how the fit went (e.g. which checkpoint it started
    # from, or why none); the classifier passes them on, so the app and the CLI show them.
    notes_: list[str]

    def fit(
        self, support: ArrayLike, labels: Sequence, unlabeled: ArrayLike | None = None
    ) -> FewShotLearner:
        """Learn the classes from ``support`` of shape (n_support, dim) and their labels.

        ``unlabeled`` (n_unlabeled, dim), optional, holds embeddings of pictures still to
        sort. Every learner accepts them; a semi-supervised learner learns from them too,
        an inductive one ignores them.
        """
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
        self.notes_: list[str] = []
        pool = as_unlabeled(unlabeled, features.shape[1])
        with single_threaded(self._small_work(features)):
            self._fit(features, torch.as_tensor(targets, dtype=torch.long), pool)
        return self

    def decision_function(self, query: ArrayLike) -> np.ndarray:
        """Unnormalised class scores (logits) of shape (n_query, n_classes).

        Calibration divides these by a temperature before the softmax.
        """
        features = self._check_query(query)
        with torch.no_grad(), single_threaded(self._small_work(features)):
            return self._logits(features).double().numpy()

    def predict_proba(self, query: ArrayLike) -> np.ndarray:
        """Class probabilities of shape (n_query, n_classes), columns in ``classes_`` order."""
        return softmax(self.decision_function(query))

    def predict(self, query: ArrayLike) -> np.ndarray:
        """The most probable class label of each query, of shape (n_query,)."""
        return self.classes_[self.predict_proba(query).argmax(axis=1)]

    def logits_module(self) -> torch.nn.Module:
        """The fitted learner's logits as a torch module (n, dim) -> (n, n_classes), for export.

        By default the learner's own ``_logits``, which torch.export traces; a learner whose
        logits are not traceable torch code overrides this with an equivalent module, or raises
        ValueError saying why its model cannot be exported.
        """
        return _OwnLogits(self)

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
    def _fit(self, support: torch.Tensor, targets: torch.Tensor, unlabeled: torch.Tensor) -> None:
        """Learn from support of shape (n_support, dim) and targets in [0, n_classes).

        ``unlabeled`` is of shape (n_unlabeled, dim), possibly (0, dim).
        """

    @abstractmethod
    def _logits(self, query: torch.Tensor) -> torch.Tensor:
        """Unnormalised class scores of shape (n_query, n_classes)."""

    def _small_work(self, rows: torch.Tensor) -> bool:
        """Whether fitting on or scoring ``rows`` is small work, run on one torch thread
        (:mod:`fsl_app.threads`): embeddings are; a learner that adapts the image model's last
        stage on rows carrying its activations says otherwise."""
        return True


class CheckpointedLearner(FewShotLearner):
    """A learner whose tensors come from a meta-trained checkpoint (relation, siamese, gnn,
    mann): the constructor they share. ``checkpoint`` is what
    :func:`fsl_app.learners.create_learner` found for the backbone (None: none asked for, or
    ``missing_reason`` says why none was found); ``temperature`` replaces the learned one when
    given. :func:`usable_checkpoint` decides, in ``_fit``, whether it fits the embeddings.
    """

    def __init__(
        self,
        checkpoint: Checkpoint | None = None,
        missing_reason: str | None = None,
        temperature: float | None = None,
    ):
        self.checkpoint = checkpoint
        self.missing_reason = missing_reason
        self.temperature = temperature


class _OwnLogits(torch.nn.Module):
    """A fitted learner's own ``_logits``, for learners written in traceable torch."""

    def __init__(self, learner: FewShotLearner):
        super().__init__()
        self.learner = learner

    def forward(self, embedding: torch.Tensor) -> torch.Tensor:
        return self.learner._logits(embedding)


def check_temperature(temperature: float | None) -> None:
    """Refuse a temperature that is not a positive number (None means "the learner's own")."""
    if temperature is not None and not temperature > 0:
        raise ValueError(f"temperature must be positive; got {temperature}.")


def usable_checkpoint(
    learner: FewShotLearner, dim: int, notes: list[str], *, what: str, untrained: str
) -> Checkpoint | None:
    """``learner.checkpoint`` when it was made for ``dim``-d embeddings, else None.

    The one fall-back rule of the meta-trainable learners, which read their tensors from a
    :class:`fsl_app.pretrained.Checkpoint` passed to their constructor. Appends to ``notes``
    what the learner starts from: the checkpoint (``what`` it holds: "head"), or
    ``untrained`` (what the learner does without one, a sentence start) and why: the
    checkpoint is for another embedding size, or ``learner.missing_reason`` (why the factory
    found none).
    """
    checkpoint = learner.checkpoint
    reason = learner.missing_reason or f"no meta-trained {what} was asked for"
    if checkpoint is not None:
        mismatch = checkpoint.mismatch(dim)
        if mismatch is None:
            source = checkpoint.describe()
            notes.append(f"Used the {learner.name} {what} meta-trained for {source}.")
            return checkpoint
        reason = mismatch
    notes.append(f"{untrained}: {reason}.")
    return None


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


def as_unlabeled(array: ArrayLike | None, dim: int) -> torch.Tensor:
    """Pictures still to sort as a float32 tensor of shape (n, ``dim``); None or empty: (0, dim).

    ValueError when they are not ``dim``-d (made with another backbone) or not finite.
    """
    if array is None or np.size(array) == 0:
        return torch.zeros(0, dim)
    features = as_embeddings(array, "unlabeled")
    if features.shape[1] != dim:
        raise ValueError(
            f"The unlabeled embeddings have {features.shape[1]} dimensions but the support "
            f"has {dim}; were they made with another backbone?"
        )
    return features
