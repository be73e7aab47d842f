"""Meta-training of the relation module of Relation Networks on base classes.

Relation Networks (Sung et al. 2018, arXiv:1711.06025) train episodically, on cached
embeddings of base classes and on the same fixed-seed N-way K-shot tasks as every meta-trained
method (:func:`fsl_app.training.loop.training_tasks`): the relation module scores each query
against each class prototype of the task's support, and the loss is the cross-entropy of the
queries over the task's classes. The outer loop, progress, resumable state and the comparison
with the untrained learner and ProtoNet are :mod:`fsl_app.training.loop`'s.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from fsl_app.evaluation.episodes import Episode
from fsl_app.learners.relation import (
    DEFAULT_HIDDEN,
    DEFAULT_TEMPERATURE,
    init_relation_module,
    relation_logits,
)
from fsl_app.training.config import HeadOptions, MetaTrainingConfig
from fsl_app.training.loop import MetaTrainer, Tensors, query_loss, support_and_query


@dataclass(frozen=True)
class RelationOptions(HeadOptions):
    """The relation module's hidden units and initial temperature (the untrained learner's)."""

    hidden: int = DEFAULT_HIDDEN
    temperature: float = DEFAULT_TEMPERATURE


class RelationTrainer(MetaTrainer):
    """Trains the relation module: ``w1``, ``b1``, ``w2`` and ``log_temperature``."""

    Options = RelationOptions

    def initial_parameters(self, dim: int, config: MetaTrainingConfig) -> Tensors:
        """The module as the untrained learner scores (cosines), every tensor a leaf to train."""
        params = init_relation_module(dim, config.options.hidden, config.seed)
        params["log_temperature"] = torch.tensor(math.log(config.options.temperature))
        return {k: v.requires_grad_() for k, v in params.items()}

    def task_loss(
        self,
        params: Tensors,
        features: torch.Tensor,
        labels: np.ndarray,
        task: Episode,
        config: MetaTrainingConfig,
    ) -> tuple[torch.Tensor, float]:
        """Cross-entropy of the queries' relation scores over the task's classes; accuracy."""
        support, support_targets, query, query_targets = support_and_query(features, labels, task)
        logits = relation_logits(
            params, support, support_targets, query, params["log_temperature"].exp()
        )
        return query_loss(logits, query_targets)
