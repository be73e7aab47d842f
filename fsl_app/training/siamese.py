"""Meta-training of the projection head of Siamese networks on base classes.

Siamese networks (Koch et al. 2015) train on pairs, drawn from the same fixed-seed tasks as
every meta-trained method (:func:`fsl_app.training.loop.training_tasks`): a task only supplies
images, ``ways`` classes with ``shots + queries`` images each, and every pair of them (support
and query alike) is a verification example, same class or not. The loss is the binary
cross-entropy of the verification score, with the few same-class pairs weighted to count as
much as all the others, as in Koch et al.'s balanced pair sets. The outer loop, progress,
resumable state and the comparison with the untrained learner and ProtoNet are
:mod:`fsl_app.training.loop`'s.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from fsl_app.evaluation.episodes import Episode
from fsl_app.learners.siamese import (
    DEFAULT_HIDDEN,
    DEFAULT_SCALE,
    DEFAULT_THRESHOLD,
    init_projection,
    siamese_projection,
)
from fsl_app.training.config import HeadOptions, MetaTrainingConfig
from fsl_app.training.loop import MetaTrainer, Tensors, episode_targets


@dataclass(frozen=True)
class SiameseOptions(HeadOptions):
    """The projection's hidden units and initial temperature (1 / the verification scale)."""

    hidden: int = DEFAULT_HIDDEN
    temperature: float = 1 / DEFAULT_SCALE  # the untrained verifier's


class SiameseTrainer(MetaTrainer):
    """Trains the projection head: ``w1``, ``b1``, ``w2``, ``log_scale`` and ``bias``."""

    Options = SiameseOptions

    def initial_parameters(self, dim: int, config: MetaTrainingConfig) -> Tensors:
        """The untrained learner's identity projection and scaled-cosine verifier, as leaves."""
        temperature = config.options.temperature
        params = init_projection(config.options.hidden, config.seed)
        params["log_scale"] = torch.tensor(-math.log(temperature))
        params["bias"] = torch.tensor(-DEFAULT_THRESHOLD / temperature)
        return {k: v.requires_grad_() for k, v in params.items()}

    def task_loss(
        self,
        params: Tensors,
        features: torch.Tensor,
        labels: np.ndarray,
        task: Episode,
        config: MetaTrainingConfig,
    ) -> tuple[torch.Tensor, float]:
        """Balanced binary cross-entropy of every pair's verification score; its accuracy."""
        images = np.concatenate([task.support, task.query])
        targets = episode_targets(labels[images], task.classes)
        z = siamese_projection(params, features[torch.as_tensor(images)])
        first, second = torch.triu_indices(len(images), len(images), offset=1)
        logits = params["log_scale"].exp() * (z[first] * z[second]).sum(dim=1) + params["bias"]
        same = (targets[first] == targets[second]).float()
        # Each side (same class, different class) weighs half, however many pairs it has.
        weights = torch.where(same.bool(), 0.5 / same.sum(), 0.5 / (1 - same).sum())
        loss = F.binary_cross_entropy_with_logits(logits, same, weight=weights, reduction="sum")
        correct = ((logits > 0).float() == same).float()
        return loss, (weights * correct).sum().item()
