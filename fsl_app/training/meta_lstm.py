"""Meta-training of the LSTM optimiser of Ravi & Larochelle (2017) on base classes.

Each task trains a fresh head from its prototypes for ``steps`` steps of the meta-learner on
the task's examples (:func:`fsl_app.learners.meta_lstm.train_head`); the loss is the
cross-entropy of the queries under the trained head, back-propagated through the steps into the
meta-learner (the head's gradients are its inputs, not differentiated, as in the paper). The
outer loop, progress, resumable state and the comparison with the untrained learner (plain
gradient descent) and ProtoNet are :mod:`fsl_app.training.loop`'s.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from fsl_app.evaluation.episodes import Episode
from fsl_app.learners.meta_lstm import (
    DEFAULT_HIDDEN,
    DEFAULT_STEPS,
    LOGIT_SCALE,
    head_logits,
    init_meta_lstm,
    train_head,
)
from fsl_app.learners.protonet import simpleshot_normalize
from fsl_app.training.config import HeadOptions, MetaTrainingConfig
from fsl_app.training.loop import MetaTrainer, Tensors, query_loss, support_and_query


@dataclass(frozen=True)
class MetaLSTMOptions(HeadOptions):
    """The LSTM's hidden units and the head's training steps (``temperature`` is the head's
    fixed logit scale, recorded, not learned)."""

    hidden: int = DEFAULT_HIDDEN
    temperature: float = LOGIT_SCALE
    steps: int = DEFAULT_STEPS

    def __post_init__(self):
        super().__post_init__()
        if self.steps < 1:
            raise ValueError("steps must be at least 1.")


class MetaLSTMTrainer(MetaTrainer):
    """Trains the meta-learner's LSTM and its step-size and shrinkage gates."""

    Options = MetaLSTMOptions

    def initial_parameters(self, dim: int, config: MetaTrainingConfig) -> Tensors:
        params = init_meta_lstm(config.options.hidden, config.seed)
        return {k: v.requires_grad_() for k, v in params.items()}

    def task_loss(
        self,
        params: Tensors,
        features: torch.Tensor,
        labels: np.ndarray,
        task: Episode,
        config: MetaTrainingConfig,
    ) -> tuple[torch.Tensor, float]:
        """Cross-entropy of the queries under the head the meta-learner trained; accuracy."""
        support, support_targets, query, query_targets = support_and_query(features, labels, task)
        mean = support.mean(dim=0)
        weight, bias = train_head(
            params,
            simpleshot_normalize(support, "cl2", mean),
            support_targets,
            config.options.steps,
        )
        logits = head_logits(weight, bias, simpleshot_normalize(query, "cl2", mean))
        return query_loss(logits, query_targets)

    def checkpoint_header(self, config: MetaTrainingConfig) -> dict[str, str]:
        """The number of steps the optimiser was meta-trained for, which the learner takes."""
        return {"steps": str(config.options.steps)}
