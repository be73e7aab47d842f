"""The one config of a meta-training run, for every meta-trained learner.

What every method reads (the tasks: ways, shots, queries, episodes; the optimiser: meta-batch,
outer learning rate; the resumable state: checkpoint_every; the seed) is a field of
:class:`MetaTrainingConfig`. What only one method reads (MAML's inner loop, the head's size and
initial temperature) is a small frozen options dataclass of that method's file, held in
``options``: typed, with the method's own defaults and checks, so a relation run cannot be
handed MAML's ``inner_steps`` by mistake, and the shared fields are written and checked once.

Checkpoints and training states record the config flat (:meth:`MetaTrainingConfig.record`), one
name per setting as before, so resuming refuses a change by naming the setting
(``inner_lr changed``) and a checkpoint's ``config`` reads the same whatever the method.

Importing this module imports no torch; building a config imports its learner's trainer (the
learner registry names it) to take the options' defaults.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field, fields
from typing import Any

from fsl_app.learners import learner_entry


@dataclass(frozen=True)
class HeadOptions:
    """What every method's options have: the head's hidden units and its initial temperature.

    Each method subclasses it with its own defaults and adds what only it reads.
    """

    hidden: int
    temperature: float  # initial value; meta-training learns it

    def __post_init__(self):
        if self.hidden < 1:
            raise ValueError("hidden must be at least 1.")
        if not self.temperature > 0:
            raise ValueError("temperature must be positive.")


@dataclass(frozen=True)
class MetaTrainingConfig:
    """Hyper-parameters of one run; ``episodes`` counts tasks, not optimiser steps.

    ``options`` are ``learner``'s (its trainer's ``Options``); None takes their defaults.
    """

    learner: str = "maml"
    ways: int = 5
    shots: tuple[int, ...] = (1, 5)  # each task draws one of these
    queries: int = 10  # per class and task
    episodes: int = 1200
    meta_batch: int = 4  # tasks per optimiser step
    outer_lr: float = 1e-3  # Adam's learning rate
    checkpoint_every: int = 200  # tasks between writes of the resumable training state
    seed: int = 0
    options: HeadOptions = field(default=None)  # type: ignore[assignment]

    def __post_init__(self):
        expected = learner_entry(self.learner).trainer_class.Options
        if self.options is None:
            object.__setattr__(self, "options", expected())
        elif type(self.options) is not expected:
            raise ValueError(
                f"{self.learner}'s options are {expected.__name__}, not "
                f"{type(self.options).__name__}."
            )
        object.__setattr__(self, "shots", tuple(self.shots))
        for name in ("ways", "queries", "episodes", "meta_batch", "checkpoint_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1.")
        if self.ways < 2:
            raise ValueError("Tasks need at least 2 ways (classes).")
        if not self.shots or min(self.shots) < 1:
            raise ValueError("shots must list at least one number of examples, each at least 1.")
        if not self.outer_lr > 0:
            raise ValueError("outer_lr must be positive.")

    def record(self) -> dict[str, Any]:
        """Every setting under its own name, the options' beside the shared ones (JSON-ready)."""
        shared = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "options"}
        return {**shared, **dataclasses.asdict(self.options)}

    def with_settings(self, **settings: Any) -> MetaTrainingConfig:
        """A copy with ``settings`` changed, each a shared field or one of the options'."""
        own = {f.name for f in fields(self)} - {"learner", "options"}
        unknown = settings.keys() - own - {f.name for f in fields(self.options)}
        if unknown:
            raise ValueError(f"{self.learner} has no setting {', '.join(sorted(unknown))}.")
        options = dataclasses.replace(
            self.options, **{k: v for k, v in settings.items() if k not in own}
        )
        return dataclasses.replace(
            self, options=options, **{k: v for k, v in settings.items() if k in own}
        )
