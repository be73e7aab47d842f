"""Meta-training of the graph neural network of Garcia & Bruna (2018) on base classes.

Each task's graph is its examples and, in three tasks of four, its queries as unlabeled nodes
(the pictures still to sort, as the evaluation and the app pass them; the fourth task trains
the graph without them, as for a single picture); each query then reads its class off its own
node (:func:`fsl_app.learners.gnn.gnn_logits`). The loss is the cross-entropy of the queries
over the task's classes. The outer loop, progress, resumable state and the comparison with the
untrained learner and ProtoNet are :mod:`fsl_app.training.loop`'s.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from fsl_app.evaluation.episodes import Episode
from fsl_app.learners.gnn import (
    DEFAULT_HIDDEN,
    DEFAULT_LAYERS,
    DEFAULT_TEMPERATURE,
    DEFAULT_WIDTH,
    gnn_logits,
    init_gnn,
)
from fsl_app.training.config import HeadOptions, MetaTrainingConfig
from fsl_app.training.loop import MetaTrainer, Tensors, query_loss, support_and_query


@dataclass(frozen=True)
class GraphOptions(HeadOptions):
    """The MLPs' hidden units, the node state size, the layers and the initial temperature."""

    hidden: int = DEFAULT_HIDDEN
    temperature: float = DEFAULT_TEMPERATURE
    width: int = DEFAULT_WIDTH
    layers: int = DEFAULT_LAYERS

    def __post_init__(self):
        super().__post_init__()
        if self.width < 1 or self.layers < 1:
            raise ValueError("width and layers must be at least 1.")


class GraphTrainer(MetaTrainer):
    """Trains every tensor of the network and its ``log_temperature``."""

    Options = GraphOptions

    def initial_parameters(self, dim: int, config: MetaTrainingConfig) -> Tensors:
        options = config.options
        params = init_gnn(dim, options.width, options.hidden, options.layers, config.seed)
        params["log_temperature"] = torch.tensor(math.log(options.temperature))
        return {k: v.requires_grad_() for k, v in params.items()}

    def task_loss(
        self,
        params: Tensors,
        features: torch.Tensor,
        labels: np.ndarray,
        task: Episode,
        config: MetaTrainingConfig,
    ) -> tuple[torch.Tensor, float]:
        """Cross-entropy of the queries read off their nodes; accuracy."""
        support, support_targets, query, query_targets = support_and_query(features, labels, task)
        with_pool = int(task.query[0]) % 4 != 0
        pool = query if with_pool else query[:0]
        logits = gnn_logits(
            params, support, support_targets, pool, query, params["log_temperature"].exp()
        )
        return query_loss(logits, query_targets)
