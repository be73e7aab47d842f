"""Relation Networks (Sung, Yang, Zhang, Xiang, Torr & Hospedales, CVPR 2018, arXiv:1711.06025).

A learned relation module scores each (query, class prototype) pair; the
scores of a query over the classes, divided by a temperature, are its logits.
As in the paper, the module is a small network over the pair and is
meta-trained episodically on base classes (:mod:`fsl_app.training.relation`); it
runs on the backbone's pooled embeddings instead of convolutional feature maps,
and with a residual form that starts from cosine similarity:

    r(q, c) = cos(q, c) + w2 . relu(W1 [sort(u * v), sort(|u - v|)] + b1),
    u = sqrt(d) q, v = sqrt(d) c

where ``q`` and ``c`` are unit-length, centred embeddings (SimpleShot ``cl2``
on the support mean) of the query and the class prototype (the mean of its
support embeddings, as Sung et al. sum them for K-shot), and ``u``, ``v`` are
scaled so the module's inputs are of order one. ``w2`` starts at zero, so an
untrained module is cosine-to-prototype scoring (ProtoNet with
``normalize="cl2"``).

The module sees the pair through the sorted element-wise product and
distance: how the agreement between the two embeddings is spread over the
dimensions (a few strong ones or many weak ones), not which dimensions agree.
A module over the unsorted pair (the paper's concatenation, or the same
features unsorted) memorised the few base classes instead: trained on 10
classes of Fashion-MNIST and digits, it lost 6-9 points against ProtoNet on
4-way episodes of 4 other classes of them (1 and 5 shots, 150 episodes each),
where the sorted form gained 0.6-2.6.

The paper regresses sigmoid scores onto one-hot targets with a squared error;
here the module is trained with the cross-entropy of the softmax over the
scores, the probabilities the app reads.

The module is shipped per backbone as ``pretrained/relation-<backbone>.safetensors``
(tensors ``w1`` (hidden, 2 d), ``b1`` (hidden,), ``w2`` (hidden,) and
``log_temperature``).
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, ClassVar

import torch
import torch.nn.functional as F

from fsl_app.learners.base import CheckpointedLearner, check_temperature, usable_checkpoint
from fsl_app.learners.protonet import class_means, simpleshot_normalize

if TYPE_CHECKING:
    pass

Tensors = dict[str, torch.Tensor]

MODULE_KEYS = ("w1", "b1", "w2")
DEFAULT_HIDDEN = 256
DEFAULT_TEMPERATURE = 0.1  # ProtoNet's cosine temperature, used without a checkpoint


def init_relation_module(dim: int, hidden: int = DEFAULT_HIDDEN, seed: int = 0) -> Tensors:
    """A fresh module for ``dim``-d embeddings: W1 (hidden, 2 dim) random, b1 and w2 zero.

    The pair features are 2 dim values of order one, so W1 with entries of
    variance 1/(2 dim) gives hidden units of order one. The zero ``w2`` makes
    the module score pairs by their cosine alone.
    """
    generator = torch.Generator().manual_seed(seed)
    return {
        "w1": torch.randn(hidden, 2 * dim, generator=generator) / math.sqrt(2 * dim),
        "b1": torch.zeros(hidden),
        "w2": torch.zeros(hidden),
    }


def relation_scores(
    module: Tensors | None, query: torch.Tensor, prototypes: torch.Tensor
) -> torch.Tensor:
    """Relation scores r(q, c) of shape (n_query, n_classes).

    ``query`` (n_query, d) and ``prototypes`` (n_classes, d) are centred
    embeddings; both are scaled to unit length here. ``module=None`` gives the
    cosines alone. The pair features take two (n_query, n_classes, d) tensors:
    about 13 MB each for 500 queries and 5 classes of 1280-d embeddings.
    """
    q, c = F.normalize(query, dim=1), F.normalize(prototypes, dim=1)
    cosines = q @ c.T
    if module is None:
        return cosines
    scale = math.sqrt(q.shape[1])
    u, v = scale * q[:, None, :], scale * c[None, :, :]  # (n_query, 1, d), (1, n_classes, d)
    w_product, w_distance = module["w1"].chunk(2, dim=1)
    products, distances = (u * v).sort(dim=2).values, (u - v).abs().sort(dim=2).values
    hidden = F.relu(products @ w_product.T + distances @ w_distance.T + module["b1"])
    return cosines + hidden @ module["w2"]


def relation_logits(
    module: Tensors | None,
    support: torch.Tensor,
    targets: torch.Tensor,
    query: torch.Tensor,
    temperature: torch.Tensor | float,
) -> torch.Tensor:
    """Logits (n_query, n_classes) of one task, as meta-training and ``fit`` compute them.

    Support (n_support, d) and query are centred on the support mean; the
    prototypes are the class means of the centred, unit-length support.
    """
    mean = support.mean(dim=0)
    prototypes = class_means(
        simpleshot_normalize(support, "cl2", mean), targets, int(targets.max()) + 1
    )
    return relation_scores(module, simpleshot_normalize(query, "cl2", mean), prototypes) / (
        temperature
    )


class RelationNet(CheckpointedLearner):
    """A meta-trained relation module over (query, prototype) pairs.

    ``checkpoint`` is the meta-trained module (:class:`fsl_app.pretrained.Checkpoint`,
    which :func:`fsl_app.learners.create_learner` finds for the backbone). Without one, or
    with one made for another embedding size, the relation score is the cosine to the
    prototype, and ``notes_`` says so, with ``missing_reason`` (why the factory found none)
    when given. ``temperature`` left at ``None`` comes from the checkpoint, else
    :data:`DEFAULT_TEMPERATURE`.

    After ``fit``: ``prototypes_`` (n_classes, dim) are the means of the
    centred, unit-length support, ``mean_`` (dim,) the support mean,
    ``module_`` the relation module's tensors (or None), ``temperature_``,
    ``checkpoint_`` the checkpoint used (or None) and ``notes_``. Logits are of
    shape (n_query, n_classes).
    """

    name: ClassVar[str] = "relation"

    def _fit(self, support: torch.Tensor, targets: torch.Tensor, unlabeled: torch.Tensor) -> None:
        check_temperature(self.temperature)
        found = usable_checkpoint(
            self,
            support.shape[1],
            self.notes_,
            what="head",
            untrained="Relation scored queries by their cosine to the class prototypes",
        )
        self.checkpoint_ = found
        self.module_ = {k: found.tensors[k] for k in MODULE_KEYS} if found else None
        learned = math.exp(found.tensors["log_temperature"].item()) if found else None
        self.temperature_ = float(self.temperature or learned or DEFAULT_TEMPERATURE)
        self.mean_ = support.mean(dim=0)
        self.prototypes_ = class_means(
            simpleshot_normalize(support, "cl2", self.mean_), targets, int(targets.max()) + 1
        )

    def _logits(self, query: torch.Tensor) -> torch.Tensor:
        centred = simpleshot_normalize(query, "cl2", self.mean_)
        return relation_scores(self.module_, centred, self.prototypes_) / self.temperature_
