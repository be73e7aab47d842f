"""Episodic meta-training of the MAML initialisation on base classes, and its evaluation.

Meta-training (Finn et al. 2017, arXiv:1703.03400) runs on cached embeddings,
never on images: each task is an N-way K-shot episode of base classes; the
inner loop of :mod:`fsl_app.learners.maml` adapts the head on the support, and
the outer step moves the initialisation (adapter, temperature and, with
Meta-SGD, the per-parameter step sizes) to lower the loss on the queries,
averaged over a meta-batch of tasks. ``algorithm="maml"`` differentiates
through the inner steps (second order), ``"fomaml"`` treats the inner
gradients as constants (first order, cheaper), and ``"reptile"`` (Nichol et
al. 2018, arXiv:1803.02999) needs no outer gradient at all: it adapts on all
of a task's images and moves the initialisation toward the adapted weights
(the difference, averaged over the meta-batch, is the pseudo-gradient the
outer optimiser steps on). Reptile moves only what the inner loop adapts (the
adapter's ``b1`` and ``w2``): the projection ``w1``, the temperature and the
step sizes stay as initialised.

The outer loop, tasks, progress and resumable state are
:mod:`fsl_app.training.loop`'s, shared with the other meta-trained heads. The
evaluation compares, on the same fixed-seed episodes of classes never seen in
meta-training, MAML from the meta-learned initialisation, MAML from the plain
prototype initialisation, and ProtoNet.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F

from fsl_app import pretrained
from fsl_app.evaluation.episodes import Episode, EvaluationResult
from fsl_app.learners import MAML, ProtoNet
from fsl_app.learners.maml import (
    ADAPTER_KEYS,
    DEFAULT_HIDDEN,
    DEFAULT_INNER_LR,
    DEFAULT_INNER_STEPS,
    DEFAULT_TEMPERATURE,
    FAST_KEYS,
    Parameters,
    adapt,
    head_logits,
    init_adapter,
    initialisation_tensors,
)
from fsl_app.training.loop import (
    MetaProgress,
    TrainingResult,
    checkpoint_metadata,
    episode_targets,
    score_on_episodes,
    train_episodically,
    training_state_path,
    training_tasks,
)

Algorithm = Literal["maml", "fomaml", "reptile"]
ALGORITHMS: tuple[str, ...] = ("maml", "fomaml", "reptile")
# What Reptile moves: the adapter tensors its inner loop adapts.
REPTILE_KEYS = ("b1", "w2")


@dataclass(frozen=True)
class MetaTrainingConfig:
    """Hyper-parameters of one meta-training run; ``episodes`` counts tasks, not outer steps."""

    ways: int = 5
    shots: tuple[int, ...] = (1, 5)  # each task draws one of these
    queries: int = 10  # per class and task
    episodes: int = 1200
    meta_batch: int = 4  # tasks per outer step
    algorithm: Algorithm = "maml"
    meta_sgd: bool = True
    inner_steps: int = DEFAULT_INNER_STEPS
    inner_lr: float = DEFAULT_INNER_LR  # every step size (Meta-SGD: their initial value)
    outer_lr: float = 1e-3
    hidden: int = DEFAULT_HIDDEN
    temperature: float = DEFAULT_TEMPERATURE  # initial value; meta-training learns it
    checkpoint_every: int = 200
    seed: int = 0

    def __post_init__(self):
        if self.algorithm not in ALGORITHMS:
            raise ValueError(
                f"Unknown algorithm '{self.algorithm}': use one of {', '.join(ALGORITHMS)}."
            )
        positive = ("ways", "queries", "episodes", "meta_batch", "hidden", "checkpoint_every")
        for name in positive:
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1.")
        if self.ways < 2:
            raise ValueError("Tasks need at least 2 ways (classes).")
        if not self.shots or min(self.shots) < 1:
            raise ValueError("shots must list at least one number of examples, each at least 1.")
        if self.inner_steps < 1:
            raise ValueError("Meta-training needs at least one inner step.")


def meta_train(
    features: np.ndarray,
    labels: Sequence[str],
    config: MetaTrainingConfig,
    *,
    backbone: str,
    backbone_id: str = "",
    out: str | os.PathLike | None = None,
    resume: bool = False,
    progress: MetaProgress | None = None,
    metadata: dict[str, object] | None = None,
) -> TrainingResult:
    """Meta-train the MAML initialisation on ``features`` (n, dim) of base classes ``labels``.

    With ``out``, the checkpoint is written there at the end and the training
    state next to it (:func:`training_state_path`) every
    ``config.checkpoint_every`` tasks; ``resume=True`` continues from that
    state. ``metadata`` (datasets, classes, ...) is recorded in the
    checkpoint's ``meta_training`` entry.
    """
    features = torch.as_tensor(np.asarray(features, dtype=np.float32))
    labels = np.asarray(labels)
    tasks = training_tasks(labels, config)
    meta = initial_meta_parameters(features.shape[1], config)
    trainable = [v for v in meta.values() if v.requires_grad]
    optimizer = torch.optim.Adam(trainable, lr=config.outer_lr)
    state_path = training_state_path(out) if out is not None else None

    def step(task: Episode, batch_size: int) -> tuple[torch.Tensor, float]:
        if config.algorithm == "reptile":
            return reptile_step(meta, features, labels, task, config, batch_size)
        loss, accuracy = task_loss(meta, features, labels, task, config)
        (loss / batch_size).backward()
        return loss, accuracy

    run = train_episodically(
        tasks, meta, optimizer, config, features.shape[1], step,
        state_path=state_path, resume=resume, progress=progress,
    )  # fmt: skip
    record = {**(metadata or {}), "episodes_done": run.done, "seconds": round(run.seconds, 1)}
    checkpoint = pretrained.Checkpoint(
        "maml",
        initialisation_tensors(
            {k: meta[k].detach().clone() for k in ADAPTER_KEYS},
            {k: meta[f"step_size.{k}"].detach().clone() for k in FAST_KEYS},
            meta["log_temperature"].detach().clone(),
        ),
        checkpoint_metadata(
            config,
            backbone,
            backbone_id,
            features.shape[1],
            record,
            inner_steps=str(config.inner_steps),
            inner_lr=str(config.inner_lr),
            algorithm=config.algorithm,
            meta_sgd=str(config.meta_sgd).lower(),
        ),
    )
    if out is not None:
        checkpoint = pretrained.save(checkpoint, out)
    return TrainingResult(checkpoint, run.done, run.resumed_from, run.seconds, run.running)


def initial_meta_parameters(dim: int, config: MetaTrainingConfig) -> Parameters:
    """Leaf tensors: adapter, ``log_temperature`` and ``step_size.*``.

    Meta-SGD learns one step size per element of ``b1`` and ``W2`` and one per
    classifier tensor (whose shape depends on the number of classes); without
    Meta-SGD the step sizes are fixed scalars.
    """
    meta = {k: v.requires_grad_() for k, v in init_adapter(dim, config.hidden, config.seed).items()}
    meta["log_temperature"] = torch.tensor(math.log(config.temperature), requires_grad=True)
    for name in FAST_KEYS:
        shape = meta[name].shape if config.meta_sgd and name in ADAPTER_KEYS else ()
        meta[f"step_size.{name}"] = torch.full(shape, config.inner_lr).requires_grad_(
            config.meta_sgd
        )
    return meta


def task_loss(
    meta: Parameters,
    features: torch.Tensor,
    labels: np.ndarray,
    task: Episode,
    config: MetaTrainingConfig,
) -> tuple[torch.Tensor, float]:
    """Query cross-entropy after the inner loop on the task's support, and the query accuracy."""
    support_targets = episode_targets(labels[task.support], task.classes)
    query_targets = episode_targets(labels[task.query], task.classes)
    support = features[torch.as_tensor(task.support)]
    query = features[torch.as_tensor(task.query)]
    temperature = meta["log_temperature"].exp()
    head, _ = adapt(
        {k: meta[k] for k in ADAPTER_KEYS},
        {k: meta[f"step_size.{k}"] for k in FAST_KEYS},
        support,
        support_targets,
        steps=config.inner_steps,
        temperature=temperature,
        create_graph=config.algorithm == "maml",
    )
    logits = head_logits(head, query, support.mean(dim=0), temperature)
    accuracy = (logits.argmax(dim=1) == query_targets).float().mean().item()
    return F.cross_entropy(logits, query_targets), accuracy


def reptile_direction(
    meta: Parameters,
    features: torch.Tensor,
    labels: np.ndarray,
    task: Episode,
    config: MetaTrainingConfig,
) -> tuple[dict[str, torch.Tensor], torch.Tensor, float]:
    """Reptile's inner loop on all of the task's images: (adapted - initial) for ``b1`` and
    ``w2``, the task's loss after adapting, and its accuracy on the queries."""
    images = np.concatenate([task.support, task.query])
    targets = episode_targets(labels[images], task.classes)
    data = features[torch.as_tensor(images)]
    temperature = meta["log_temperature"].exp().detach()
    # Leaves of their own: the inner loop differentiates with respect to them, the outer does not.
    adapter = {k: meta[k].detach().requires_grad_() for k in ADAPTER_KEYS}
    head, _ = adapt(
        adapter,
        {k: meta[f"step_size.{k}"].detach() for k in FAST_KEYS},
        data,
        targets,
        steps=config.inner_steps,
        temperature=temperature,
    )
    with torch.no_grad():
        logits = head_logits(head, data, data.mean(dim=0), temperature)
        loss = F.cross_entropy(logits, targets)
        in_query = torch.arange(len(images)) >= len(task.support)
        accuracy = (logits[in_query].argmax(dim=1) == targets[in_query]).float().mean().item()
    direction = {k: (head[k] - adapter[k]).detach() for k in REPTILE_KEYS}
    return direction, loss, accuracy


def reptile_step(
    meta: Parameters,
    features: torch.Tensor,
    labels: np.ndarray,
    task: Episode,
    config: MetaTrainingConfig,
    meta_batch: int,
) -> tuple[torch.Tensor, float]:
    """Add one task's Reptile pseudo-gradient (initial - adapted) / ``meta_batch`` to ``.grad``."""
    direction, loss, accuracy = reptile_direction(meta, features, labels, task, config)
    for name, step in direction.items():
        pseudo_gradient = -step / meta_batch
        if meta[name].grad is None:
            meta[name].grad = pseudo_gradient.clone()
        else:
            meta[name].grad += pseudo_gradient
    return loss, accuracy


def compare_initialisations(
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
    """MAML from ``checkpoint`` vs from the prototypes (same steps and step size) vs ProtoNet.

    Every learner sees the same fixed-seed episodes; ``ways`` and ``queries``
    shrink to what the classes allow. Results are named "maml (meta-learned
    init)", "maml (prototype init)" and "protonet", one set per shot count.
    """
    inner_lr = float(checkpoint.metadata["inner_lr"])
    temperature = float(json.loads(checkpoint.metadata["config"])["temperature"])
    learners = {
        "maml (meta-learned init)": lambda: MAML(checkpoint=checkpoint),
        "maml (prototype init)": lambda: MAML(
            checkpoint=None,
            inner_steps=int(checkpoint.metadata["inner_steps"]),
            inner_lr=inner_lr,
            temperature=temperature,
        ),
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
