"""Semi-supervised prototypes: soft k-means over the pictures still to sort (Ren et al., ICLR
2018, arXiv:1803.00676), made safe for real pools.

Embeddings are power-transformed (``x ** 0.5``, PT-MAP: Hu et al. 2021, arXiv:2006.03806),
centred on the mean of examples and pool together and scaled to unit length. Each class
starts as the mean of its examples; each step soft-assigns the unlabeled pictures by cosine
similarity and moves every prototype to the weighted mean of its examples and of the
pictures assigned to it. Three guards keep a real pool from doing harm, where episodes of
the literature never test: a "none of these" column (Ren et al.'s distractor cluster) at the
similarity prototypes have to each other takes the weight of pictures close to no class;
the pool's weight in a prototype is at most ``pool_weight`` times the examples', so a pool
far larger than the examples cannot carry a class away; and a pool over ``max_pool`` is
subsampled (seeded), so a refit stays fast.
"""

from __future__ import annotations

from typing import ClassVar

import torch
import torch.nn.functional as F

from fsl_app.learners.base import FewShotLearner, check_temperature
from fsl_app.learners.protonet import class_means


class SoftKMeans(FewShotLearner):
    """Prototypes refined on the unlabeled pool; inductive (nearest mean) without one.

    ``prototypes_`` (n_classes, dim) live in the transformed space (``mean_``, ``power``);
    logits of shape (n_query, n_classes) are cosine similarities to them divided by
    ``temperature``. ``steps`` soft k-means steps; ``pool_weight`` bounds the pool's total
    weight in a class relative to that class's examples; ``max_pool`` caps the pictures
    used (a seeded subsample, ``random_state``).
    """

    name: ClassVar[str] = "soft_kmeans"

    def __init__(
        self,
        temperature: float = 0.1,
        power: float = 0.5,
        steps: int = 5,
        pool_weight: float = 2.0,
        outliers: bool = True,
        max_pool: int = 500,
        random_state: int = 0,
    ):
        self.temperature = temperature
        self.power = power
        self.steps = steps
        self.pool_weight = pool_weight
        self.outliers = outliers
        self.max_pool = max_pool
        self.random_state = random_state

    def _fit(self, support: torch.Tensor, targets: torch.Tensor, unlabeled: torch.Tensor) -> None:
        check_temperature(self.temperature)
        if len(unlabeled) > self.max_pool:
            generator = torch.Generator().manual_seed(self.random_state)
            keep = torch.randperm(len(unlabeled), generator=generator)[: self.max_pool]
            unlabeled = unlabeled[keep]
        support, unlabeled = self._power(support), self._power(unlabeled)
        self.mean_ = torch.cat([support, unlabeled]).mean(dim=0)
        support, unlabeled = self._transform(support), self._transform(unlabeled)
        n_classes = int(targets.max()) + 1
        one_hot = F.one_hot(targets, n_classes).to(support.dtype)
        labeled_sums, labeled_counts = one_hot.T @ support, one_hot.sum(0)
        prototypes = class_means(support, targets, n_classes)
        for _ in range(self.steps if len(unlabeled) else 0):
            weights = self._assignments(unlabeled, prototypes)  # (n_unlabeled, n_classes)
            mass = weights.sum(0)
            # The pool's weight in a class is bounded by a multiple of the examples'.
            scale = (self.pool_weight * labeled_counts / mass.clamp_min(1e-12)).clamp(max=1.0)
            pool_sums = (weights.T @ unlabeled) * scale[:, None]
            prototypes = (labeled_sums + pool_sums) / (labeled_counts + mass * scale)[:, None]
        self.prototypes_ = F.normalize(prototypes, dim=1)

    def _assignments(self, unlabeled: torch.Tensor, prototypes: torch.Tensor) -> torch.Tensor:
        prototypes = F.normalize(prototypes, dim=1)
        scores = unlabeled @ prototypes.T
        n = len(prototypes)
        if self.outliers:
            # Ren et al.'s distractor cluster: a picture less similar to its best class than
            # the prototypes are to each other on average goes mostly to "none of these".
            between = (prototypes @ prototypes.T)[~torch.eye(n, dtype=torch.bool)].mean()
            scores = torch.cat([scores, between.expand(len(scores), 1)], dim=1)
        return (scores / self.temperature).softmax(dim=1)[:, :n]

    def _power(self, features: torch.Tensor) -> torch.Tensor:
        magnitude = features.abs()
        # sqrt is several times faster than pow(0.5), and refits happen at every label
        magnitude = magnitude.sqrt() if self.power == 0.5 else magnitude.pow(self.power)
        return features.sign() * magnitude

    def _transform(self, features: torch.Tensor) -> torch.Tensor:
        return F.normalize(features - self.mean_, dim=1)

    def _logits(self, query: torch.Tensor) -> torch.Tensor:
        query = self._transform(self._power(query))
        return query @ self.prototypes_.T / self.temperature
