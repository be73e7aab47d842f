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

The tasks are drawn up front from ``config.seed``, so a run interrupted and
resumed from its training state (written atomically every
``checkpoint_every`` tasks) sees the same tasks as an uninterrupted one. The
evaluation compares, on the same fixed-seed episodes of classes never seen in
meta-training, MAML from the meta-learned initialisation, MAML from the plain
prototype initialisation, and ProtoNet.
"""

from __future__ import annotations

import json
import math
import os
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F

from fsl_app.evaluation.episodes import Episode, EvaluationResult, evaluate_learner, sample_episodes
from fsl_app.files import write_atomically_with
from fsl_app.learners import MAML, ProtoNet
from fsl_app.learners.maml import (
    ADAPTER_KEYS,
    DEFAULT_HIDDEN,
    DEFAULT_INNER_LR,
    DEFAULT_INNER_STEPS,
    DEFAULT_TEMPERATURE,
    FAST_KEYS,
    MAMLCheckpoint,
    Parameters,
    adapt,
    head_logits,
    init_adapter,
    save_checkpoint,
)

Algorithm = Literal["maml", "fomaml", "reptile"]
ALGORITHMS: tuple[str, ...] = ("maml", "fomaml", "reptile")
# (tasks done, tasks in all, running means of the query "loss" and "accuracy")
MetaProgress = Callable[[int, int, dict[str, float]], None]
# What Reptile moves: the adapter tensors its inner loop adapts.
REPTILE_KEYS = ("b1", "w2")
STATE_VERSION = 1
# Settings that may change when a run is resumed; any other change is refused.
_RESUMABLE_CHANGES = ("episodes", "checkpoint_every")


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


@dataclass
class MetaTrainingResult:
    checkpoint: MAMLCheckpoint  # path is set when it was written
    episodes: int  # tasks meta-trained on in all, resumed runs included
    resumed_from: int  # tasks already done when this call started (0 if fresh)
    seconds: float  # meta-training time in all, resumed runs included
    running: dict[str, float] = field(default_factory=dict)  # final running loss / accuracy


def training_state_path(out: str | os.PathLike) -> Path:
    """The resumable training state kept next to the checkpoint ``out``."""
    out = Path(out)
    return out.with_name(out.name.removesuffix(".safetensors") + ".train.pt")


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
) -> MetaTrainingResult:
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
    checkpoint = MAMLCheckpoint(
        None,
        {k: meta[k].detach().clone() for k in ADAPTER_KEYS},
        {k: meta[f"step_size.{k}"].detach().clone() for k in FAST_KEYS},
        meta["log_temperature"].detach().clone(),
        _checkpoint_metadata(
            config,
            backbone,
            backbone_id,
            features.shape[1],
            {**(metadata or {}), "episodes_done": run.done, "seconds": round(run.seconds, 1)},
        ),
    )
    if out is not None:
        checkpoint = replace(checkpoint, path=save_checkpoint(checkpoint, out))
    return MetaTrainingResult(checkpoint, run.done, run.resumed_from, run.seconds, run.running)


@dataclass
class TrainingRun:
    done: int  # tasks trained on in all, resumed runs included
    resumed_from: int  # tasks already done when this run started (0 if fresh)
    seconds: float  # training time in all, resumed runs included
    running: dict[str, float]  # running means of the last tasks' loss and accuracy


def train_episodically(
    tasks: Sequence[Episode],
    params: Parameters,
    optimizer: torch.optim.Optimizer,
    config: MetaTrainingConfig,
    dim: int,
    step: Callable[[Episode, int], tuple[torch.Tensor, float]],
    *,
    state_path: Path | None,
    resume: bool,
    progress: MetaProgress | None,
) -> TrainingRun:
    """The outer loop every episodic trainer shares: meta-batches of ``tasks``, one optimiser step
    each, progress, and the resumable training state at ``state_path``.

    ``step(task, meta_batch_size)`` computes one task's loss and accuracy and leaves its
    contribution in the parameters' ``.grad``. ``config`` needs ``episodes``, ``meta_batch`` and
    ``checkpoint_every``.
    """
    done, seconds_before = 0, 0.0
    if resume:
        if state_path is None or not state_path.is_file():
            raise FileNotFoundError(
                f"Nothing to resume: there is no training state at '{state_path}'."
            )
        done, seconds_before = load_training_state(state_path, params, optimizer, config, dim)
    resumed_from = done
    recent: deque = deque(maxlen=100)
    started = time.perf_counter()
    with single_threaded():
        for first in range(done, config.episodes, config.meta_batch):
            batch = tasks[first : min(first + config.meta_batch, config.episodes)]
            optimizer.zero_grad()
            for task in batch:
                loss, accuracy = step(task, len(batch))
                recent.append((loss.item(), accuracy))
            optimizer.step()
            done = first + len(batch)
            if progress is not None:
                progress(done, config.episodes, running_means(recent))
            if state_path is not None and (
                done // config.checkpoint_every > first // config.checkpoint_every
                or done == config.episodes
            ):
                seconds = seconds_before + time.perf_counter() - started
                save_training_state(state_path, params, optimizer, config, done, dim, seconds)
    seconds = seconds_before + time.perf_counter() - started
    return TrainingRun(done, resumed_from, seconds, running_means(recent))


@contextmanager
def single_threaded() -> Iterator[None]:
    """Run torch on one thread inside, as before outside.

    The head's tensors are small, so intra-op threads cost more in hand-offs
    than they gain: on this busy 2-core machine meta-training ran 6-10x faster
    on one thread than on two.
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


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


def training_tasks(labels: np.ndarray, config: MetaTrainingConfig) -> list[Episode]:
    """``config.episodes`` tasks, each with one of ``config.shots``, fixed by ``config.seed``."""
    by_shots = [
        sample_episodes(
            labels,
            ways=config.ways,
            shots=shots,
            queries=config.queries,
            n_episodes=config.episodes,
            seed=config.seed + i,
        )
        for i, shots in enumerate(config.shots)
    ]
    choice = np.random.default_rng(config.seed).integers(len(config.shots), size=config.episodes)
    return [by_shots[c][i] for i, c in enumerate(choice)]


def split_classes(
    labels: Sequence[str], domains: Sequence[str] | None = None, *, holdout: int, seed: int = 0
) -> list[str]:
    """``holdout`` classes of each domain (dataset) drawn with ``seed``, never to meta-train on.

    At least two classes per domain stay for meta-training.
    """
    labels = np.asarray(labels)
    domains = np.asarray(domains) if domains is not None else np.zeros(len(labels), dtype=str)
    rng = np.random.default_rng(seed)
    held_out = []
    for domain in np.unique(domains):
        classes = np.unique(labels[domains == domain])
        if len(classes) - holdout < 2:
            raise ValueError(
                f"Holding out {holdout} classes of {domain or 'the data'} leaves "
                f"{len(classes) - holdout} to meta-train on; hold out fewer."
            )
        held_out.extend(rng.permutation(classes)[:holdout].tolist())
    return sorted(held_out)


def compare_initialisations(
    checkpoint: MAMLCheckpoint,
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
    if checkpoint.path is None:
        raise ValueError("Save the checkpoint before evaluating it: the learner reads the file.")
    inner_lr = float(checkpoint.metadata["inner_lr"])
    temperature = float(json.loads(checkpoint.metadata["config"])["temperature"])
    learners = {
        "maml (meta-learned init)": lambda: MAML(checkpoint=checkpoint.path),
        "maml (prototype init)": lambda: MAML(
            checkpoint=None,
            inner_steps=checkpoint.inner_steps,
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


def score_on_episodes(
    learners: dict[str, Callable[[], object]],
    features: np.ndarray,
    labels: Sequence[str],
    *,
    ways: int,
    shots: Sequence[int],
    queries: int,
    n_episodes: int,
    seed: int = 0,
) -> list[EvaluationResult]:
    """Each of ``learners`` (name -> factory) on the same fixed-seed episodes, per shot count.

    ``ways`` and ``queries`` shrink to what the classes allow.
    """
    labels = np.asarray(labels)
    _, counts = np.unique(labels, return_counts=True)
    counts = np.sort(counts)[::-1]
    ways = min(ways, len(counts))
    results = []
    with single_threaded():
        for n_shots in shots:
            n_queries = min(queries, int(counts[ways - 1]) - n_shots)
            if n_queries < 1:
                raise ValueError(
                    f"{ways}-way {n_shots}-shot evaluation needs {ways} classes with more than "
                    f"{n_shots} images each."
                )
            episodes = sample_episodes(
                labels,
                ways=ways,
                shots=n_shots,
                queries=n_queries,
                n_episodes=n_episodes,
                seed=seed,
            )
            for name, make in learners.items():
                results.append(evaluate_learner(make, features, labels, episodes, name=name))
    return results


def episode_targets(labels: np.ndarray, classes: tuple[str, ...]) -> torch.Tensor:
    index = {c: i for i, c in enumerate(classes)}
    return torch.as_tensor([index[label] for label in labels], dtype=torch.long)


def running_means(recent: deque) -> dict[str, float]:
    if not recent:
        return {}
    losses, accuracies = zip(*recent, strict=True)
    return {"loss": float(np.mean(losses)), "accuracy": float(np.mean(accuracies))}


def _checkpoint_metadata(
    config: MetaTrainingConfig,
    backbone: str,
    backbone_id: str,
    dim: int,
    meta_training: dict[str, object],
) -> dict[str, str]:
    return {
        "backbone": backbone,
        "backbone_id": backbone_id,
        "embedding_dim": str(dim),
        "hidden": str(config.hidden),
        "inner_steps": str(config.inner_steps),
        "inner_lr": str(config.inner_lr),
        "algorithm": config.algorithm,
        "meta_sgd": str(config.meta_sgd).lower(),
        "config": json.dumps(asdict(config)),
        "meta_training": json.dumps(meta_training),
    }


def save_training_state(
    path: Path,
    meta: Parameters,
    optimizer: torch.optim.Optimizer,
    config: MetaTrainingConfig,
    done: int,
    dim: int,
    seconds: float,
) -> None:
    """Write the training state to a temporary file, then move it over the old one."""
    state = {
        "version": STATE_VERSION,
        "episode": done,
        "embedding_dim": dim,
        "seconds": seconds,
        "config": asdict(config),
        "meta": {k: v.detach() for k, v in meta.items()},
        "optimizer": optimizer.state_dict(),
    }
    write_atomically_with(path, lambda temporary: torch.save(state, temporary))


def load_training_state(
    path: Path,
    meta: Parameters,
    optimizer: torch.optim.Optimizer,
    config: MetaTrainingConfig,
    dim: int,
) -> tuple[int, float]:
    state = torch.load(path, map_location="cpu", weights_only=True)
    if state.get("version") != STATE_VERSION:
        raise ValueError(f"'{path}' is a training state of another version of this app.")
    if state["embedding_dim"] != dim:
        raise ValueError(
            f"'{path}' was meta-trained on {state['embedding_dim']}-d embeddings, "
            f"these have {dim}: resume with the same backbone."
        )
    saved, now = state["config"], asdict(config)
    changed = [
        k for k in now if k not in _RESUMABLE_CHANGES and _comparable(saved.get(k)) != now[k]
    ]
    if changed:
        raise ValueError(
            f"Cannot resume '{path}' with other settings ({', '.join(changed)} changed); "
            "use the same settings, or start afresh without --resume."
        )
    with torch.no_grad():
        for name, value in state["meta"].items():
            meta[name].copy_(value)
    optimizer.load_state_dict(state["optimizer"])
    return int(state["episode"]), float(state["seconds"])


def _comparable(value: object) -> object:
    return tuple(value) if isinstance(value, list) else value
