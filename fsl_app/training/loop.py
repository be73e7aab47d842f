"""The one episodic outer loop of meta-training, shared by every meta-trained method.

Meta-training runs on cached embeddings of base classes, never on images: each task is an
N-way K-shot episode (:func:`training_tasks`, drawn up front from the config's seed, so a run
interrupted and resumed from its training state sees the same tasks as an uninterrupted one).
:func:`meta_train` builds the learner's :class:`MetaTrainer` (the learner registry names it),
and :func:`train_episodically` steps the optimiser once per meta-batch of tasks, reports progress
and writes the resumable training state atomically every ``checkpoint_every`` tasks. A method
(:mod:`fsl_app.training.maml`, :mod:`fsl_app.training.relation`,
:mod:`fsl_app.training.siamese`) only says how its parameters start, what one task's loss is
and which tensors its checkpoint holds, so nothing here asks which learner it is training.
:func:`score_on_episodes` compares learners (a trainer's :meth:`MetaTrainer.baselines`) on the
same fixed-seed episodes of classes never trained on.
"""

from __future__ import annotations

import json
import os
import time
from abc import ABC, abstractmethod
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

import numpy as np
import torch
import torch.nn.functional as F

from fsl_app import pretrained
from fsl_app.evaluation.episodes import Episode, EvaluationResult, evaluate_learner, sample_episodes
from fsl_app.files import write_atomically_with
from fsl_app.learners import ProtoNet, create_learner, learner_entry
from fsl_app.pretrained import Checkpoint
from fsl_app.threads import single_threaded
from fsl_app.training.config import HeadOptions, MetaTrainingConfig

Tensors = dict[str, torch.Tensor]
# (tasks done, tasks in all, running means of the query "loss" and "accuracy")
MetaProgress = Callable[[int, int, dict[str, float]], None]
STATE_VERSION = 1
# Settings that may change when a run is resumed; any other change is refused.
_RESUMABLE_CHANGES = ("episodes", "checkpoint_every")


@dataclass
class TrainingResult:
    """What a meta-training run made, for every method."""

    checkpoint: Checkpoint  # path is set when it was written
    episodes: int  # tasks trained on in all, resumed runs included
    resumed_from: int  # tasks already done when this call started (0 if fresh)
    seconds: float  # training time in all, resumed runs included
    running: dict[str, float] = field(default_factory=dict)  # final running loss / accuracy


class MetaTrainer(ABC):
    """One meta-trained method, as :func:`meta_train` drives it: a stateless object.

    A method says how its parameters start (:meth:`initial_parameters`) and what one task's
    loss is (:meth:`task_loss`); what most methods do alike (back-propagate the loss, save every
    parameter, compare with the untrained learner) is done here and overridden where a method
    differs (MAML: Reptile's step, the tensors and header its learner reads).
    """

    Options: ClassVar[type[HeadOptions]]  # the method's options, with their defaults

    @abstractmethod
    def initial_parameters(self, dim: int, config: MetaTrainingConfig) -> Tensors:
        """Leaf tensors for ``dim``-d embeddings; those that require grad are optimised."""

    @abstractmethod
    def task_loss(
        self,
        params: Tensors,
        features: torch.Tensor,
        labels: np.ndarray,
        task: Episode,
        config: MetaTrainingConfig,
    ) -> tuple[torch.Tensor, float]:
        """The task's loss (differentiable in ``params``) and its accuracy."""

    def step(
        self,
        params: Tensors,
        features: torch.Tensor,
        labels: np.ndarray,
        task: Episode,
        config: MetaTrainingConfig,
        meta_batch: int,
    ) -> tuple[torch.Tensor, float]:
        """Leave the task's share of the meta-batch's gradient in ``.grad``; its loss, accuracy."""
        loss, accuracy = self.task_loss(params, features, labels, task, config)
        (loss / meta_batch).backward()
        return loss, accuracy

    def checkpoint_tensors(self, params: Tensors) -> Tensors:
        """The tensors the learner reads from the checkpoint: here, every parameter."""
        return {k: v.detach().clone() for k, v in params.items()}

    def checkpoint_header(self, config: MetaTrainingConfig) -> dict[str, str]:
        """What the learner reads back from the header besides the shared entries."""
        return {}

    def baselines(self, checkpoint: Checkpoint) -> dict[str, Callable[[], object]]:
        """Learners (name -> factory) to compare: with ``checkpoint``, without it, ProtoNet."""
        name = checkpoint.learner
        return {
            f"{name} (meta-trained)": lambda: create_learner(name, checkpoint=checkpoint),
            f"{name} (untrained)": lambda: create_learner(name, checkpoint=None),
            "protonet": ProtoNet,
        }


def trainer_for(learner: str) -> MetaTrainer:
    """The trainer the learner registry names for ``learner``; ValueError for any other."""
    return learner_entry(learner).trainer_class()


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
    """Meta-train ``config.learner`` on ``features`` (n, dim) of base classes ``labels``.

    With ``out``, the checkpoint is written there at the end and the training state next to it
    (:func:`training_state_path`) every ``config.checkpoint_every`` tasks; ``resume=True``
    continues from that state. ``metadata`` (datasets, classes, ...) is recorded in the
    checkpoint's ``meta_training`` entry.
    """
    trainer = trainer_for(config.learner)
    features = torch.as_tensor(np.asarray(features, dtype=np.float32))
    labels = np.asarray(labels)
    dim = features.shape[1]
    tasks = training_tasks(labels, config)
    params = trainer.initial_parameters(dim, config)
    trainable = [v for v in params.values() if v.requires_grad]
    optimizer = torch.optim.Adam(trainable, lr=config.outer_lr)
    state_path = training_state_path(out) if out is not None else None

    def step(task: Episode, meta_batch: int) -> tuple[torch.Tensor, float]:
        return trainer.step(params, features, labels, task, config, meta_batch)

    run = train_episodically(
        tasks, params, optimizer, config, dim, step,
        state_path=state_path, resume=resume, progress=progress,
    )  # fmt: skip
    record = {**(metadata or {}), "episodes_done": run.done, "seconds": round(run.seconds, 1)}
    checkpoint = Checkpoint(
        config.learner,
        trainer.checkpoint_tensors(params),
        {
            "backbone": backbone,
            "backbone_id": backbone_id,
            "embedding_dim": str(dim),
            "hidden": str(config.options.hidden),
            **trainer.checkpoint_header(config),
            "config": json.dumps(config.record()),
            "meta_training": json.dumps(record),
        },
    )
    if out is not None:
        checkpoint = pretrained.save(checkpoint, out)
    return TrainingResult(checkpoint, run.done, run.resumed_from, run.seconds, run.running)


def training_state_path(out: str | os.PathLike) -> Path:
    """The resumable training state kept next to the checkpoint ``out``."""
    out = Path(out)
    return out.with_name(out.name.removesuffix(".safetensors") + ".train.pt")


@dataclass
class TrainingRun:
    done: int  # tasks trained on in all, resumed runs included
    resumed_from: int  # tasks already done when this run started (0 if fresh)
    seconds: float  # training time in all, resumed runs included
    running: dict[str, float]  # running means of the last tasks' loss and accuracy


def train_episodically(
    tasks: Sequence[Episode],
    params: Tensors,
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
    contribution in the parameters' ``.grad``.
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


def support_and_query(
    features: torch.Tensor, labels: np.ndarray, task: Episode
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """The task's support embeddings and targets, then its query embeddings and targets."""
    return (
        features[torch.as_tensor(task.support)],
        episode_targets(labels[task.support], task.classes),
        features[torch.as_tensor(task.query)],
        episode_targets(labels[task.query], task.classes),
    )


def query_loss(logits: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, float]:
    """Cross-entropy of the queries' ``logits`` over the task's classes, and their accuracy."""
    accuracy = (logits.argmax(dim=1) == targets).float().mean().item()
    return F.cross_entropy(logits, targets), accuracy


def episode_targets(labels: np.ndarray, classes: tuple[str, ...]) -> torch.Tensor:
    index = {c: i for i, c in enumerate(classes)}
    return torch.as_tensor([index[label] for label in labels], dtype=torch.long)


def running_means(recent: deque) -> dict[str, float]:
    if not recent:
        return {}
    losses, accuracies = zip(*recent, strict=True)
    return {"loss": float(np.mean(losses)), "accuracy": float(np.mean(accuracies))}


def save_training_state(
    path: Path,
    meta: Tensors,
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
        "config": config.record(),
        "meta": {k: v.detach() for k, v in meta.items()},
        "optimizer": optimizer.state_dict(),
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomically_with(path, lambda temporary: torch.save(state, temporary))


def load_training_state(
    path: Path,
    meta: Tensors,
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
    saved, now = state["config"], config.record()
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
