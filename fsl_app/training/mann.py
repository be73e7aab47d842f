"""Meta-training of the memory-augmented network's controller on base classes.

Santoro et al. (2016) train the controller episodically: each task writes its examples into an
empty memory, one after the other (:func:`fsl_app.learners.mann.write_memory`), and the loss is
the cross-entropy of the queries' reads over the task's classes. What is learned: the
controller, the read sharpness ``beta``, the write gate and the usage decay. The outer loop,
progress, resumable state and the comparison with the untrained learner and ProtoNet are
:mod:`fsl_app.training.loop`'s.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from fsl_app.evaluation.episodes import Episode
from fsl_app.learners.mann import DEFAULT_HIDDEN, DEFAULT_SHARPNESS, init_mann, mann_logits
from fsl_app.training.config import HeadOptions, MetaTrainingConfig
from fsl_app.training.loop import MetaTrainer, Tensors, query_loss, support_and_query


@dataclass(frozen=True)
class MemoryOptions(HeadOptions):
    """The controller's hidden units and the initial temperature (1 / the read sharpness)."""

    hidden: int = DEFAULT_HIDDEN
    temperature: float = 1 / DEFAULT_SHARPNESS


class MemoryTrainer(MetaTrainer):
    """Trains ``w1``, ``b1``, ``w2``, ``log_beta``, ``gate_logit`` and ``decay_logit``."""

    Options = MemoryOptions

    def initial_parameters(self, dim: int, config: MetaTrainingConfig) -> Tensors:
        params = init_mann(config.options.hidden, config.seed)
        params["log_beta"] = -torch.tensor(config.options.temperature).log()
        return {k: v.requires_grad_() for k, v in params.items()}

    def task_loss(
        self,
        params: Tensors,
        features: torch.Tensor,
        labels: np.ndarray,
        task: Episode,
        config: MetaTrainingConfig,
    ) -> tuple[torch.Tensor, float]:
        """Cross-entropy of the queries' reads of the memory written with the examples."""
        support, support_targets, query, query_targets = support_and_query(features, labels, task)
        return query_loss(mann_logits(params, support, support_targets, query), query_targets)
