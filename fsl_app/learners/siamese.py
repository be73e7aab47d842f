"""Siamese networks (Koch, Zemel & Salakhutdinov, ICML 2015 Deep Learning Workshop).

One projection head, shared by both images of a pair, maps embeddings to a
space where a logistic score tells whether two images show the same class:

    p(same | a, b) = sigmoid(s * cos(f(a), f(b)) + t)

As in the paper, the head is trained on pairs of base-class images with the
binary cross-entropy of that score (:mod:`fsl_app.training.siamese`), then
classifies by comparing a query with the support examples. Koch et al. put
the logistic unit on a weighted L1 distance of convolutional features; here it
sits on the cosine of the projected embeddings.

The head ``f`` transforms every coordinate of the (unit-length, scaled to
order one) embedding by one learned function ``g`` shared by all dimensions,
a residual one-hidden-layer network ``g(x) = x + w2 . relu(w1 x + b1)``, then
scales the result to unit length: a learned power transform, of the kind that
makes pooled CNN features more Gaussian and helps few-shot classification
(Yang, Liu & Xu, ICLR 2021, arXiv:2101.06395). ``w2`` starts at zero, so an
untrained head is the identity. A head with weights per dimension (a residual
MLP like MAML's adapter) was tried first: trained on 10 base classes it told
their pairs apart almost perfectly (99.9%) and lost 1-10 points against
ProtoNet on 4-way episodes of 4 other classes of the same datasets (1 and 5
shots, 150 episodes each), where the shared function gained 1.5-4.5.

No support set is needed to verify pairs: :meth:`SiameseNet.same_class_probability`
only uses the head. The head is shipped per backbone as
``pretrained/siamese-<backbone>.safetensors`` (tensors ``w1``, ``b1``, ``w2``
(hidden,), ``log_scale`` and ``bias``).
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from numpy.typing import ArrayLike

from fsl_app.learners.base import (
    CheckpointedLearner,
    as_embeddings,
    check_temperature,
    usable_checkpoint,
)
from fsl_app.learners.protonet import class_means

if TYPE_CHECKING:
    from fsl_app.pretrained import Checkpoint

Tensors = dict[str, torch.Tensor]

PROJECTION_KEYS = ("w1", "b1", "w2")
DEFAULT_HIDDEN = 32
# Without a checkpoint: logits are cosines / 0.1 (ProtoNet's temperature), and two
# embeddings count as the same class above a cosine of 0.5 (a guess, not a measurement).
DEFAULT_SCALE = 10.0
DEFAULT_THRESHOLD = 0.5
_UNTRAINED = (
    "Siamese compared raw embeddings by cosine (identity projection, untrained verification)"
)


def init_projection(hidden: int = DEFAULT_HIDDEN, seed: int = 0) -> Tensors:
    """A fresh head: ``w1``, ``b1`` (hidden,) random, ``w2`` (hidden,) zero (the identity).

    The coordinates ``g`` sees are of order one, so standard normal slopes and
    offsets spread the hidden units' kinks over the range of the inputs.
    """
    generator = torch.Generator().manual_seed(seed)
    return {
        "w1": torch.randn(hidden, generator=generator),
        "b1": torch.randn(hidden, generator=generator),
        "w2": torch.zeros(hidden),
    }


def siamese_projection(head: Tensors | None, features: torch.Tensor) -> torch.Tensor:
    """The head's output f(x) of shape (n, dim), unit length; ``head=None`` is the identity."""
    h = F.normalize(features, dim=1)
    if head is None:
        return h
    x = math.sqrt(h.shape[1]) * h
    g = x
    # One hidden unit at a time: a (n, dim, hidden) tensor would take 80 MB for 500 embeddings.
    for slope, offset, weight in zip(head["w1"], head["b1"], head["w2"], strict=True):
        g = g + weight * F.relu(slope * x + offset)
    return F.normalize(g, dim=1)


def untrained_verifier() -> tuple[float, float]:
    """(scale, bias) of the logistic score without a checkpoint."""
    return DEFAULT_SCALE, -DEFAULT_SCALE * DEFAULT_THRESHOLD


class SiameseNet(CheckpointedLearner):
    """Classification by similarity to the support examples in a learned space.

    A query's logit for class k is ``s * cos(f(q), c_k)``, with ``c_k`` the
    mean of the class's projected support examples: the query's average
    cosine to those examples, ``f(q) . c_k``, divided by ``|c_k|`` so that a
    class whose examples agree closely is not favoured (averaging the
    verification logits instead measured 1.5 points less accurate at 5 shots
    on validation classes split off the base classes). With one example per class it is the
    verification logit without the bias ``t``, which cancels in the softmax.
    ``temperature`` replaces ``1 / s`` when given.

    ``checkpoint`` is the meta-trained head (:class:`fsl_app.pretrained.Checkpoint`,
    which :func:`fsl_app.learners.create_learner` finds for the backbone). Without one, or
    with one made for another embedding size, the projection is the identity with ``s`` =
    10, and ``notes_`` says so, with ``missing_reason`` (why the factory found none) when
    given.

    After ``fit``: ``prototypes_`` (n_classes, dim) holds the unit-length
    ``c_k``, ``head_`` the projection's tensors (or None), ``scale_`` and
    ``bias_`` the verification score, ``temperature_``, ``checkpoint_`` and
    ``notes_``. Logits are of shape (n_query, n_classes).
    """

    name: ClassVar[str] = "siamese"

    def _fit(self, support: torch.Tensor, targets: torch.Tensor, unlabeled: torch.Tensor) -> None:
        check_temperature(self.temperature)
        self.head_, self.scale_, self.bias_, self.checkpoint_ = self._verifier(
            support.shape[1], self.notes_
        )
        self.temperature_ = float(self.temperature or 1.0 / self.scale_)
        projected = siamese_projection(self.head_, support)
        self.prototypes_ = F.normalize(
            class_means(projected, targets, int(targets.max()) + 1), dim=1
        )

    def _logits(self, query: torch.Tensor) -> torch.Tensor:
        return siamese_projection(self.head_, query) @ self.prototypes_.T / self.temperature_

    def same_class_probability(self, a: ArrayLike, b: ArrayLike) -> np.ndarray:
        """Probability that ``a[i]`` and ``b[i]`` show the same class, of shape (n_pairs,).

        ``a`` and ``b`` are embeddings of shape (n_pairs, dim), or one of them
        (1, dim) or (dim,) to compare with every row of the other. Needs no
        ``fit``: only the meta-trained head (after ``fit``, the one fit used).
        The head was trained on as many same-class as different-class pairs,
        so 0.5 is its decision threshold for that balance. Without a head the
        score is an uncalibrated guess on the raw cosine (see the module).
        """
        a = as_embeddings(np.atleast_2d(np.asarray(a, dtype=np.float32)), "first")
        b = as_embeddings(np.atleast_2d(np.asarray(b, dtype=np.float32)), "second")
        if a.shape[1] != b.shape[1]:
            raise ValueError(
                f"The embeddings of a pair must have the same size; got {a.shape[1]} and "
                f"{b.shape[1]}. Were they made with different backbones?"
            )
        if len(a) != len(b) and 1 not in (len(a), len(b)):
            raise ValueError(
                f"Got {len(a)} and {len(b)} embeddings: give as many of each, or one to "
                "compare with all of the other."
            )
        if getattr(self, "n_features_in_", None) == a.shape[1]:
            head, scale, bias = self.head_, self.scale_, self.bias_
        else:
            head, scale, bias, _ = self._verifier(a.shape[1], [])
        with torch.no_grad():
            cosines = (siamese_projection(head, a) * siamese_projection(head, b)).sum(dim=1)
            return torch.sigmoid(scale * cosines + bias).double().numpy()

    def _verifier(
        self, dim: int, notes: list[str]
    ) -> tuple[Tensors | None, float, float, Checkpoint | None]:
        """(head, scale, bias, checkpoint used) for ``dim``-d embeddings."""
        found = usable_checkpoint(self, dim, notes, what="head", untrained=_UNTRAINED)
        if found is None:
            return None, *untrained_verifier(), None
        head = {k: found.tensors[k] for k in PROJECTION_KEYS}
        scale = math.exp(found.tensors["log_scale"].item())
        return head, scale, found.tensors["bias"].item(), found
