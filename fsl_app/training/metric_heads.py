"""Meta-training of the metric learners' heads on base classes, and their evaluation.

Both heads train on cached embeddings of base classes, never on images, and
on the same fixed-seed tasks as MAML's meta-training
(:func:`fsl_app.training.loop.training_tasks`: N-way tasks of K support and Q
query images per class):

- ``relation`` (Sung et al. 2018, arXiv:1711.06025): episodic. The relation
  module scores each query against each class prototype of the task's support;
  the loss is the cross-entropy of the queries over the task's classes.
- ``siamese`` (Koch et al. 2015): pairs. Every pair of the task's images
  (support and query alike) is a verification example, same class or not; the
  loss is the binary cross-entropy of the verification score, with the few
  same-class pairs weighted to count as much as all the others, as in Koch et
  al.'s balanced pair sets.

Adam steps once per ``meta_batch`` tasks. The training state is written
atomically every ``checkpoint_every`` tasks next to the checkpoint, so an
interrupted run resumes where it stopped and ends as an uninterrupted one. The
evaluation compares, on the same fixed-seed episodes of classes never trained
on, the meta-trained head, the untrained learner and ProtoNet.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal, get_args

import numpy as np
import torch
import torch.nn.functional as F

from fsl_app import pretrained
from fsl_app.evaluation.episodes import Episode, EvaluationResult
from fsl_app.learners import ProtoNet, create_learner
from fsl_app.learners.relation import DEFAULT_HIDDEN as RELATION_HIDDEN
from fsl_app.learners.relation import init_relation_module, relation_logits
from fsl_app.learners.siamese import DEFAULT_HIDDEN as SIAMESE_HIDDEN
from fsl_app.learners.siamese import DEFAULT_THRESHOLD, init_projection, siamese_projection
from fsl_app.training.loop import (
    MetaProgress,
    Tensors,
    TrainingResult,
    checkpoint_metadata,
    episode_targets,
    score_on_episodes,
    train_episodically,
    training_state_path,
    training_tasks,
)

MetricLearner = Literal["relation", "siamese"]


@dataclass(frozen=True)
class MetricTrainingConfig:
    """Hyper-parameters of one run; ``episodes`` counts tasks, not optimiser steps.

    For ``siamese`` a task only supplies images: ``ways`` classes with
    ``shots + queries`` images each, all paired with each other.
    """

    learner: MetricLearner = "relation"
    ways: int = 5
    shots: tuple[int, ...] = (1, 5)  # each task draws one of these
    queries: int = 10  # per class and task
    episodes: int = 1200
    meta_batch: int = 4  # tasks per optimiser step
    lr: float = 1e-3
    hidden: int | None = None  # None: the learner's default (relation 256, siamese 32)
    temperature: float = 0.1  # initial value (siamese: 1 / the initial scale); learned
    checkpoint_every: int = 200
    seed: int = 0

    def __post_init__(self):
        if self.learner not in get_args(MetricLearner):
            choices = " or ".join(get_args(MetricLearner))
            raise ValueError(f"Unknown learner '{self.learner}': use {choices}.")
        if self.hidden is None:
            default = RELATION_HIDDEN if self.learner == "relation" else SIAMESE_HIDDEN
            object.__setattr__(self, "hidden", default)
        positive = ("ways", "queries", "episodes", "meta_batch", "hidden", "checkpoint_every")
        for name in positive:
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1.")
        if self.ways < 2:
            raise ValueError("Tasks need at least 2 ways (classes).")
        if not self.shots or min(self.shots) < 1:
            raise ValueError("shots must list at least one number of examples, each at least 1.")
        if not (self.lr > 0 and self.temperature > 0):
            raise ValueError("lr and temperature must be positive.")


def initial_parameters(dim: int, config: MetricTrainingConfig) -> Tensors:
    """Leaf tensors of the head, as the learner reads them from a checkpoint.

    ``relation``: ``w1``, ``b1``, ``w2``, ``log_temperature``. ``siamese``:
    ``w1``, ``b1``, ``w2``, ``log_scale`` and ``bias`` of the verification score.
    Either starts as the untrained learner (cosine scores; identity projection).
    """
    if config.learner == "relation":
        params = init_relation_module(dim, config.hidden, config.seed)
        params["log_temperature"] = torch.tensor(math.log(config.temperature))
    else:
        params = init_projection(config.hidden, config.seed)
        params["log_scale"] = torch.tensor(-math.log(config.temperature))
        params["bias"] = torch.tensor(-DEFAULT_THRESHOLD / config.temperature)
    return {k: v.requires_grad_() for k, v in params.items()}


def task_loss(
    params: Tensors,
    features: torch.Tensor,
    labels: np.ndarray,
    task: Episode,
    config: MetricTrainingConfig,
) -> tuple[torch.Tensor, float]:
    """The task's loss and accuracy (relation: of the queries; siamese: balanced, of the pairs)."""
    if config.learner == "relation":
        support_targets = episode_targets(labels[task.support], task.classes)
        query_targets = episode_targets(labels[task.query], task.classes)
        logits = relation_logits(
            params,
            features[torch.as_tensor(task.support)],
            support_targets,
            features[torch.as_tensor(task.query)],
            params["log_temperature"].exp(),
        )
        accuracy = (logits.argmax(dim=1) == query_targets).float().mean().item()
        return F.cross_entropy(logits, query_targets), accuracy
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


def metric_train(
    features: np.ndarray,
    labels: Sequence[str],
    config: MetricTrainingConfig,
    *,
    backbone: str,
    backbone_id: str = "",
    out: str | os.PathLike | None = None,
    resume: bool = False,
    progress: MetaProgress | None = None,
    metadata: dict[str, object] | None = None,
) -> TrainingResult:
    """Train ``config.learner``'s head on ``features`` (n, dim) of base classes ``labels``.

    With ``out``, the checkpoint is written there at the end and the training
    state next to it (:func:`fsl_app.training.loop.training_state_path`) every
    ``config.checkpoint_every`` tasks; ``resume=True`` continues from that
    state. ``metadata`` (datasets, classes, ...) is recorded in the
    checkpoint's ``meta_training`` entry.
    """
    features = torch.as_tensor(np.asarray(features, dtype=np.float32))
    labels = np.asarray(labels)
    dim = features.shape[1]
    tasks = training_tasks(labels, config)
    params = initial_parameters(dim, config)
    optimizer = torch.optim.Adam(params.values(), lr=config.lr)
    state_path = training_state_path(out) if out is not None else None

    def step(task: Episode, batch_size: int) -> tuple[torch.Tensor, float]:
        loss, accuracy = task_loss(params, features, labels, task, config)
        (loss / batch_size).backward()
        return loss, accuracy

    run = train_episodically(
        tasks, params, optimizer, config, dim, step,
        state_path=state_path, resume=resume, progress=progress,
    )  # fmt: skip
    record = {**(metadata or {}), "episodes_done": run.done, "seconds": round(run.seconds, 1)}
    checkpoint = pretrained.Checkpoint(
        config.learner,
        {k: v.detach().clone() for k, v in params.items()},
        checkpoint_metadata(config, backbone, backbone_id, dim, record),
    )
    if out is not None:
        checkpoint = pretrained.save(checkpoint, out)
    return TrainingResult(checkpoint, run.done, run.resumed_from, run.seconds, run.running)


def compare_with_protonet(
    checkpoint: pretrained.Checkpoint,
    features: np.ndarray,
    labels: Sequence[str],
    *,
    ways: int,
    shots: Sequence[int],
    queries: int,
    n_episodes: int,
    seed: int = 0,
) -> list[EvaluationResult]:
    """The learner with ``checkpoint`` vs without it (untrained) vs ProtoNet, per shot count.

    Every learner sees the same fixed-seed episodes, drawn as
    :func:`fsl_app.training.maml.compare_initialisations` draws them;
    ``ways`` and ``queries`` shrink to what the classes allow. Results are
    named "<learner> (meta-trained)", "<learner> (untrained)" and "protonet".
    """
    name = checkpoint.learner
    learners = {
        f"{name} (meta-trained)": lambda: create_learner(name, checkpoint=checkpoint),
        f"{name} (untrained)": lambda: create_learner(name, checkpoint=None),
        "protonet": ProtoNet,
    }
    return score_on_episodes(
        learners,
        features,
        labels,
        ways=ways,
        shots=shots,
        queries=queries,
        n_episodes=n_episodes,
        seed=seed,
    )
