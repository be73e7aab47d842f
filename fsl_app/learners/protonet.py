"""Prototypical Networks (Snell, Swersky & Zemel, NeurIPS 2017, arXiv:1703.05175).

Each class is the mean of its support embeddings (its prototype); a query's
logits are its negative squared Euclidean distances to the prototypes, or its
cosine similarities to them, divided by a temperature.
"""

from __future__ import annotations

from typing import ClassVar, Literal

import torch
import torch.nn.functional as F

from fsl_app.learners.base import FewShotLearner

Metric = Literal["euclidean", "cosine"]


class ProtoNet(FewShotLearner):
    """Nearest class mean.

    ``metric="cosine"`` (the default) compares directions, which suits pooled
    CNN features whose norms vary with image content; ``temperature`` scales
    the logits (smaller = sharper). ``prototypes_`` is of shape (n_classes, dim).
    """

    name: ClassVar[str] = "protonet"

    def __init__(self, metric: Metric = "cosine", temperature: float | None = None):
        self.metric = metric
        self.temperature = temperature

    def _fit(self, support: torch.Tensor, targets: torch.Tensor) -> None:
        if self.metric not in ("euclidean", "cosine"):
            raise ValueError(f"Unknown metric '{self.metric}': use 'euclidean' or 'cosine'.")
        n_classes = int(targets.max()) + 1
        sums = torch.zeros(n_classes, support.shape[1]).index_add_(0, targets, support)
        counts = torch.bincount(targets, minlength=n_classes).unsqueeze(1)
        self.prototypes_ = sums / counts

    def _logits(self, query: torch.Tensor) -> torch.Tensor:
        if self.metric == "cosine":
            scores = F.normalize(query, dim=1) @ F.normalize(self.prototypes_, dim=1).T
            default_temperature = 0.1
        else:
            scores = -torch.cdist(query, self.prototypes_).pow(2)
            default_temperature = 1.0
        return scores / (self.temperature or default_temperature)
