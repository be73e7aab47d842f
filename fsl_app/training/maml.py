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
:mod:`fsl_app.training.loop`'s, shared with the other meta-trained heads; this
file is :class:`MAMLTrainer` and its options. The evaluation compares, on the
same fixed-seed episodes of classes never seen in meta-training, MAML from the
meta-learned initialisation, MAML from the plain prototype initialisation, and
ProtoNet.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F

from fsl_app.evaluation.episodes import Episode
from fsl_app.learners import MAML, ProtoNet
from fsl_app.learners.maml import (
    ADAPTER_KEYS,
    DEFAULT_HIDDEN,
    DEFAULT_INNER_LR,
    DEFAULT_INNER_STEPS,
    DEFAULT_STAGE_STEP,
    DEFAULT_TEMPERATURE,
    FAST_KEYS,
    Parameters,
    adapt,
    head_logits,
    init_adapter,
    initialisation_tensors,
)
from fsl_app.pretrained import Checkpoint
from fsl_app.training.config import HeadOptions, MetaTrainingConfig
from fsl_app.training.loop import (
    MetaTrainer,
    Tensors,
    episode_targets,
    query_loss,
    support_and_query,
)

Algorithm = Literal["maml", "fomaml", "reptile"]
ALGORITHMS: tuple[str, ...] = ("maml", "fomaml", "reptile")
# What Reptile moves: the adapter tensors its inner loop adapts.
REPTILE_KEYS = ("b1", "w2")


@dataclass(frozen=True)
class MAMLOptions(HeadOptions):
    """MAML's settings: its adapter's size and initial temperature, and its inner loop."""

    hidden: int = DEFAULT_HIDDEN
    temperature: float = DEFAULT_TEMPERATURE  # initial value; meta-training learns it
    algorithm: Algorithm = "maml"
    meta_sgd: bool = True
    inner_steps: int = DEFAULT_INNER_STEPS
    inner_lr: float = DEFAULT_INNER_LR  # every step size (Meta-SGD: their initial value)

    def __post_init__(self):
        super().__post_init__()
        if self.algorithm not in ALGORITHMS:
            raise ValueError(
                f"Unknown algorithm '{self.algorithm}': use one of {', '.join(ALGORITHMS)}."
            )
        if self.inner_steps < 1:
            raise ValueError("Meta-training needs at least one inner step.")


class MAMLTrainer(MetaTrainer):
    """Meta-learns MAML's initialisation: adapter, temperature and (Meta-SGD) step sizes."""

    Options = MAMLOptions

    def initial_parameters(self, dim: int, config: MetaTrainingConfig) -> Parameters:
        """Leaf tensors: adapter, ``log_temperature`` and ``step_size.*``.

        Meta-SGD learns one step size per element of ``b1`` and ``W2`` and one per
        classifier tensor (whose shape depends on the number of classes); without
        Meta-SGD the step sizes are fixed scalars, which do not require grad.
        """
        options = config.options
        meta = {
            k: v.requires_grad_() for k, v in init_adapter(dim, options.hidden, config.seed).items()
        }
        meta["log_temperature"] = torch.tensor(math.log(options.temperature), requires_grad=True)
        for name in FAST_KEYS:
            shape = meta[name].shape if options.meta_sgd and name in ADAPTER_KEYS else ()
            meta[f"step_size.{name}"] = torch.full(shape, options.inner_lr).requires_grad_(
                options.meta_sgd
            )
        return meta

    def task_loss(
        self,
        params: Parameters,
        features: torch.Tensor,
        labels: np.ndarray,
        task: Episode,
        config: MetaTrainingConfig,
    ) -> tuple[torch.Tensor, float]:
        """Query cross-entropy after the inner loop on the task's support, and the accuracy."""
        support, support_targets, query, query_targets = support_and_query(features, labels, task)
        temperature = params["log_temperature"].exp()
        head, _ = adapt(
            {k: params[k] for k in ADAPTER_KEYS},
            {k: params[f"step_size.{k}"] for k in FAST_KEYS},
            support,
            support_targets,
            steps=config.options.inner_steps,
            temperature=temperature,
            create_graph=config.options.algorithm == "maml",
        )
        return query_loss(head_logits(head, query, support.mean(dim=0), temperature), query_targets)

    def step(
        self,
        params: Parameters,
        features: torch.Tensor,
        labels: np.ndarray,
        task: Episode,
        config: MetaTrainingConfig,
        meta_batch: int,
    ) -> tuple[torch.Tensor, float]:
        """MAML and FOMAML back-propagate the query loss; Reptile adds its pseudo-gradient."""
        if config.options.algorithm == "reptile":
            return reptile_step(params, features, labels, task, config, meta_batch)
        return super().step(params, features, labels, task, config, meta_batch)

    def checkpoint_tensors(self, params: Parameters) -> Tensors:
        """The initialisation as :class:`fsl_app.learners.MAML` reads it."""
        return initialisation_tensors(
            {k: params[k].detach().clone() for k in ADAPTER_KEYS},
            {k: params[f"step_size.{k}"].detach().clone() for k in FAST_KEYS},
            params["log_temperature"].detach().clone(),
        )

    def checkpoint_header(self, config: MetaTrainingConfig) -> dict[str, str]:
        """The inner loop the initialisation was meta-learned for, which the learner repeats."""
        options = config.options
        return {
            "inner_steps": str(options.inner_steps),
            "inner_lr": str(options.inner_lr),
            "algorithm": options.algorithm,
            "meta_sgd": str(options.meta_sgd).lower(),
        }

    def baselines(self, checkpoint: Checkpoint) -> dict[str, Callable[[], object]]:
        """MAML from ``checkpoint`` vs from the prototypes (same steps and step size) vs ProtoNet.

        Results are named "maml (meta-learned init)", "maml (prototype init)" and "protonet".
        """
        inner_lr = float(checkpoint.metadata["inner_lr"])
        temperature = float(json.loads(checkpoint.metadata["config"])["temperature"])
        return {
            "maml (meta-learned init)": lambda: MAML(checkpoint=checkpoint),
            "maml (prototype init)": lambda: MAML(
                checkpoint=None,
                inner_steps=int(checkpoint.metadata["inner_steps"]),
                inner_lr=inner_lr,
                temperature=temperature,
            ),
            "protonet": ProtoNet,
        }


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
        steps=config.options.inner_steps,
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


# --- Last-stage MAML's initialisation ------------------------------------------------------------
#
# First-order MAML (Finn et al. 2017, section 5.2), not Reptile, for the stage: its outer
# gradient is the query loss after adapting, the quantity the app is scored on, and it also
# meta-learns the per-tensor step sizes and the temperature, which Reptile cannot move. Second
# order would back-propagate through every inner step of a million-parameter stage: twice the
# memory and time for a gain the MAML paper measured as small. The stage starts from the
# backbone's ImageNet weights.

STAGE_LEARNER = "maml-stage"  # the checkpoint's learner name: pretrained/maml-stage-<backbone>


def meta_train_last_stage(
    activations: torch.Tensor,
    labels: np.ndarray,
    config: MetaTrainingConfig,
    *,
    stage,
    out=None,
    resume: bool = False,
    progress=None,
    metadata: dict[str, object] | None = None,
    stage_step: float = DEFAULT_STAGE_STEP,
):
    """Meta-train last-stage MAML's initialisation on ``activations`` (n, C, H, W) of base classes
    ``labels`` (n,) by first-order MAML; the tasks, outer loop and resumable state are
    :func:`fsl_app.training.loop.train_episodically`'s.

    ``stage`` is the backbone's :class:`fsl_app.stage_cache.LastStage`; ``config.options`` are
    :class:`MAMLOptions` (``inner_steps``, ``inner_lr`` the classifier's step size,
    ``temperature`` and ``meta_sgd``); ``stage_step`` is the initial relative step of the stage
    tensors. With ``out``, writes the checkpoint there (``pretrained/maml-stage-<backbone>``)
    and the training state next to it. Returns a :class:`fsl_app.training.loop.TrainingResult`.
    """
    from fsl_app import pretrained
    from fsl_app.learners.maml import adapt_stage, stage_logits, uniform_stage_step_sizes
    from fsl_app.training.loop import TrainingResult, train_episodically, training_state_path
    from fsl_app.training.loop import training_tasks as draw_tasks

    labels = np.asarray(labels)
    options = config.options
    start = stage.parameters()
    params: Parameters = {f"stage.{k}": v.requires_grad_() for k, v in start.items()}
    for name, size in uniform_stage_step_sizes(start, stage_step, options.inner_lr).items():
        params[f"step_size.{name}"] = size.requires_grad_(options.meta_sgd)
    params["log_temperature"] = torch.tensor(math.log(options.temperature)).requires_grad_()
    trainable = [v for v in params.values() if v.requires_grad]
    optimizer = torch.optim.Adam(trainable, lr=config.outer_lr)
    dim = int(np.prod(activations.shape[1:]))

    def step(task: Episode, meta_batch: int) -> tuple[torch.Tensor, float]:
        support, support_targets, query, query_targets = support_and_query(
            activations, labels, task
        )
        temperature = params["log_temperature"].exp()
        fast, classifier, mean, _ = adapt_stage(
            stage.pooled,
            {k[len("stage.") :]: v for k, v in params.items() if k.startswith("stage.")},
            {k[len("step_size.") :]: v for k, v in params.items() if k.startswith("step_size.")},
            support,
            support_targets,
            steps=options.inner_steps,
            temperature=temperature,
        )
        logits = stage_logits(stage.pooled, fast, classifier, query, mean, temperature)
        loss, accuracy = query_loss(logits, query_targets)
        (loss / meta_batch).backward()
        return loss, accuracy

    state_path = training_state_path(out) if out is not None else None
    run = train_episodically(
        draw_tasks(labels, config), params, optimizer, config, dim, step,
        state_path=state_path, resume=resume, progress=progress,
    )  # fmt: skip
    backbone = stage.backbone
    record = {**(metadata or {}), "episodes_done": run.done, "seconds": round(run.seconds, 1)}
    checkpoint = Checkpoint(
        STAGE_LEARNER,
        {k: v.detach().clone() for k, v in params.items()},
        {
            "backbone": backbone.name,
            "backbone_id": backbone.id,
            "embedding_dim": str(backbone.embedding_dim),
            "stage_input": json.dumps(list(stage.input_shape)),
            "hidden": "0",
            "inner_steps": str(options.inner_steps),
            "inner_lr": str(options.inner_lr),
            "stage_step": str(stage_step),
            "algorithm": "fomaml",
            "meta_sgd": str(options.meta_sgd).lower(),
            "config": json.dumps(config.record()),
            "meta_training": json.dumps(record),
        },
    )
    if out is not None:
        checkpoint = pretrained.save(checkpoint, out)
    return TrainingResult(checkpoint, run.done, run.resumed_from, run.seconds, run.running)
