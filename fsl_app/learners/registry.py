"""THE registry of few-shot learners: what the CLI's ``--learner``, the app's picker, export and
meta-training read, so adding a learner is one file and one entry here.

Entries are plain data and name their class as ``"module:Class"``, imported on first use: the
registry imports no torch, so ``python -m fsl_app --help`` and the app's pages stay light.
:func:`create_learner` is the one factory; for a meta-trainable learner it resolves the shipped
checkpoint (:mod:`fsl_app.pretrained`) for the backbone and hands the learner tensors, so
learners never touch files.
"""

from __future__ import annotations

import importlib
import inspect
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from fsl_app.learners.base import FewShotLearner
    from fsl_app.training.loop import MetaTrainer


@dataclass(frozen=True)
class LearnerEntry:
    """One learner: its name in settings and files, the words the app shows, and what it supports.

    ``display_name`` and ``description`` are plain words for someone who does not know the
    field (what the app shows by default); ``technical_name`` is the method's name in the
    literature, which the app keeps in its "Advanced" areas for experts.

    ``onnx_exportable``: :func:`fsl_app.deploy.onnx.export_onnx` can write its models.
    ``trainer_path``: the trainer (``"package.module:Trainer"``, :mod:`fsl_app.training`) with
    which ``python -m fsl_app meta-train --learner <name>`` trains a checkpoint for it, which
    :func:`create_learner` looks for under ``pretrained/``; None for a learner that is not
    meta-trained. Naming the trainer here makes it the one place that says a learner is
    meta-trainable, so there is no flag that could claim a trainer that does not exist.
    """

    name: str
    display_name: str
    technical_name: str
    description: str
    class_path: str  # "package.module:Class", imported by learner_class
    onnx_exportable: bool
    trainer_path: str | None = None
    # Reads statistics of the base classes shipped as a checkpoint like a meta-trained head's
    # (``pretrained/<name>-<backbone>.safetensors``), though nothing is meta-trained.
    base_statistics: bool = False
    # Adapts the image model's last stage where a meta-learned start of it is shipped for the
    # backbone (``pretrained/maml-stage-<backbone>.safetensors``): it then takes, per picture,
    # the embedding followed by the activations entering that stage (see needs_last_stage).
    adapts_last_stage: bool = False

    @property
    def meta_trainable(self) -> bool:
        return self.trainer_path is not None

    @property
    def learner_class(self) -> type[FewShotLearner]:
        return _imported(self.class_path)

    @property
    def trainer_class(self) -> type[MetaTrainer]:
        """The trainer's class, imported now (with torch); ValueError if not meta-trainable."""
        if self.trainer_path is None:
            raise ValueError(
                f"'{self.name}' is not meta-trainable: use one of "
                f"{', '.join(meta_trainable_learners())}."
            )
        return _imported(self.trainer_path)

    @property
    def parameters(self) -> frozenset[str]:
        """What a user, a setting or a saved model may set: the constructor's parameters and
        ``backbone``, never ``checkpoint`` (tensors the factory resolves, not a file to open)."""
        signature = inspect.signature(self.learner_class.__init__)
        names = {name for name in signature.parameters if name != "self"}
        resolved = {"checkpoint", "missing_reason", "stage", "stage_checkpoint"}
        return frozenset((names - resolved) | {"backbone"})

    @property
    def label(self) -> str:
        """Display name and description in one line, for a picker."""
        return f"{self.display_name}: {self.description}"


LEARNERS: dict[str, LearnerEntry] = {
    entry.name: entry
    for entry in (
        LearnerEntry(
            "protonet",
            "Class centres",
            "Prototypical Networks (ProtoNet)",
            "compares each picture with the average of each class's examples alone",
            "fsl_app.learners.protonet:ProtoNet",
            onnx_exportable=True,
        ),
        LearnerEntry(
            "soft_kmeans",
            "Class centres that learn from your pictures",
            "transductive soft k-means over ProtoNet",
            "the default; moves each class centre a little towards the pictures to sort like it",
            "fsl_app.learners.soft_kmeans:SoftKMeans",
            onnx_exportable=True,
        ),
        LearnerEntry(
            "matching",
            "Nearest examples",
            "Matching Networks",
            "compares each picture with every example and lets the closest ones vote",
            "fsl_app.learners.matching:MatchingNet",
            onnx_exportable=True,
        ),
        LearnerEntry(
            "linear",
            "Straight boundaries",
            "logistic regression on the embeddings (linear probe)",
            "draws straight boundaries between the classes' examples; good with many examples",
            "fsl_app.learners.linear:LinearProbe",
            onnx_exportable=True,
        ),
        LearnerEntry(
            "maml",
            "Class centres, then fine-tuned",
            "Model-Agnostic Meta-Learning (MAML), from a prototype start",
            "starts from the class centres and fine-tunes the image model's last stage on your "
            "examples; seconds per change on a CPU",
            "fsl_app.learners.maml:MAML",
            onnx_exportable=True,
            trainer_path="fsl_app.training.maml:MAMLTrainer",
            adapts_last_stage=True,
        ),
        LearnerEntry(
            "relation",
            "Learned comparison",
            "Relation Network",
            "scores how well each picture matches each class with a comparison learned on "
            "other image classes",
            "fsl_app.learners.relation:RelationNet",
            onnx_exportable=True,
            trainer_path="fsl_app.training.relation:RelationTrainer",
        ),
        LearnerEntry(
            "siamese",
            "Same or different",
            "Siamese network",
            "compares pictures in a space learned to tell whether two pictures show the same class",
            "fsl_app.learners.siamese:SiameseNet",
            onnx_exportable=True,
            trainer_path="fsl_app.training.siamese:SiameseTrainer",
        ),
        LearnerEntry(
            "gnn",
            "Pictures linked together",
            "graph neural network (Garcia & Bruna 2018)",
            "links your examples and the pictures to sort by learned similarity and passes "
            "class evidence along the links",
            "fsl_app.learners.gnn:GraphNet",
            onnx_exportable=True,
            trainer_path="fsl_app.training.gnn:GraphTrainer",
        ),
        LearnerEntry(
            "mann",
            "Examples kept in a memory",
            "memory-augmented neural network (Santoro et al. 2016)",
            "stores your examples in a learned memory and answers each picture by what it "
            "recalls from it",
            "fsl_app.learners.mann:MemoryNet",
            onnx_exportable=True,
            trainer_path="fsl_app.training.mann:MemoryTrainer",
        ),
        LearnerEntry(
            "meta-lstm",
            "Learned training steps",
            "Meta-LSTM meta-learner (Ravi & Larochelle 2017)",
            "trains a classifier on your examples with a few steps of an update rule learned "
            "on other image classes",
            "fsl_app.learners.meta_lstm:MetaLSTM",
            onnx_exportable=True,
            trainer_path="fsl_app.training.meta_lstm:MetaLSTMTrainer",
        ),
        LearnerEntry(
            "generated",
            "Extra examples imagined from other classes",
            "distribution calibration (Yang et al. 2021)",
            "adds made-up examples spread like similar, already known image classes, then "
            "draws boundaries",
            "fsl_app.learners.generated:GeneratedExamples",
            onnx_exportable=True,
            base_statistics=True,
        ),
    )
}
# soft_kmeans learns from the pictures still to sort and is at or above its inductive self (within
# 0.6 points) on every pool tried: those of `benchmarks/learners.py --parts peers` (balanced,
# imbalanced, with pictures of other classes, of one class: a few pictures or a whole folder, of
# one picture, of every other picture of the data set) and whole folders and large pools of
# held-out clip art and digits at 1-5 shots (see its docstring). On the 12 cells of
# --parts peers (200 episodes) it beats protonet by 2.3 points on average (78.3 against 76.0; up
# to 5.9 at 1 shot). Calibrated as the app uses it (python -m fsl_app evaluate, 200 episodes:
# Tux Paint photos, Fashion-MNIST, held-out clip art, digits): ECE 0.010-0.049 from 3 examples a
# class, 0.021-0.131 at 1 shot. It does not yet meet issue 12's target of the best peer in every
# cell plus 2 points on average.
DEFAULT_LEARNER = "soft_kmeans"


def _imported(path: str) -> Any:
    """The attribute a ``"package.module:attribute"`` path names, importing its module."""
    module, _, attribute = path.partition(":")
    return getattr(importlib.import_module(module), attribute)


def available_learners() -> list[str]:
    return list(LEARNERS)


def meta_trainable_learners() -> list[str]:
    return [name for name, entry in LEARNERS.items() if entry.meta_trainable]


def learner_entry(name: str) -> LearnerEntry:
    """The entry of ``name``; ValueError naming the choices for an unknown one."""
    try:
        return LEARNERS[name]
    except KeyError:
        raise ValueError(
            f"Unknown learner '{name}'. Choose one of: {', '.join(available_learners())}."
        ) from None


def create_learner(
    name: str = DEFAULT_LEARNER, *, backbone: str | None = None, **params: Any
) -> FewShotLearner:
    """A fresh, unfitted learner; ``params`` go to its constructor.

    For a meta-trainable learner (or one that reads base statistics), the checkpoint shipped for
    ``backbone`` (default: the default backbone) is read here and passed in as tensors, with the
    reason when there is none; the learner says in its ``notes_`` what it started from.
    ``backbone`` is ignored by the others, so a caller can always pass it.
    """
    entry = learner_entry(name)
    if (entry.meta_trainable or entry.base_statistics) and "checkpoint" not in params:
        from fsl_app import pretrained
        from fsl_app.backbones import DEFAULT_BACKBONE

        found = pretrained.find(name, backbone or DEFAULT_BACKBONE)
        params = {"checkpoint": found.checkpoint, "missing_reason": found.missing_reason, **params}
    if needs_last_stage(name, backbone, params) and "stage" not in params:
        from fsl_app.stage_cache import find_stage_initialisation, last_stage_for

        stage = last_stage_for(_backbone_name(backbone))
        params = {
            "stage": stage,
            "stage_checkpoint": find_stage_initialisation(stage.backbone),
            **params,
        }
    return entry.learner_class(**params)


def needs_last_stage(
    name: str, backbone: str | None = None, params: dict[str, Any] | None = None
) -> bool:
    """Whether ``name`` with ``params`` on ``backbone`` adapts the image model's last stage, so
    that its pictures must come with the activations entering it
    (:attr:`fsl_app.embedded_set.EmbeddedSet.inputs`): a learner that can (``maml``), not
    switched off (``last_stage=False``), on a backbone with a shipped meta-learned start."""
    if not learner_entry(name).adapts_last_stage or not (params or {}).get("last_stage", True):
        return False
    from fsl_app.stage_cache import stage_start_shipped

    return stage_start_shipped(_backbone_name(backbone))


def _backbone_name(backbone: str | None) -> str:
    from fsl_app.backbones import DEFAULT_BACKBONE

    return backbone or DEFAULT_BACKBONE
