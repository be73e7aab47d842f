"""Few-shot learners by name: one registry (:mod:`fsl_app.learners.registry`) for the CLI, the
app, export, meta-training and evaluation.

Importing this package imports no torch: the learner classes below are imported on first use
(``from fsl_app.learners import ProtoNet`` still works), so the app's pages and ``--help`` can
read the registry cheaply.
"""

from __future__ import annotations

import importlib
from typing import Any

from fsl_app.learners.registry import (
    DEFAULT_LEARNER,
    LEARNERS,
    LearnerEntry,
    available_learners,
    create_learner,
    learner_entry,
    meta_trainable_learners,
    needs_last_stage,
)

_LAZY = {
    "FewShotLearner": "fsl_app.learners.base",
    "GeneratedExamples": "fsl_app.learners.generated",
    "GraphNet": "fsl_app.learners.gnn",
    "MemoryNet": "fsl_app.learners.mann",
    "MetaLSTM": "fsl_app.learners.meta_lstm",
    "NotFittedError": "fsl_app.errors",
    "LinearProbe": "fsl_app.learners.linear",
    "MAML": "fsl_app.learners.maml",
    "MatchingNet": "fsl_app.learners.matching",
    "ProtoNet": "fsl_app.learners.protonet",
    "RelationNet": "fsl_app.learners.relation",
    "SiameseNet": "fsl_app.learners.siamese",
    "SoftKMeans": "fsl_app.learners.soft_kmeans",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "DEFAULT_LEARNER",
    "LEARNERS",
    "MAML",
    "FewShotLearner",
    "GeneratedExamples",
    "GraphNet",
    "LearnerEntry",
    "LinearProbe",
    "MatchingNet",
    "MemoryNet",
    "MetaLSTM",
    "NotFittedError",
    "ProtoNet",
    "RelationNet",
    "SiameseNet",
    "SoftKMeans",
    "available_learners",
    "create_learner",
    "learner_entry",
    "meta_trainable_learners",
    "needs_last_stage",
]
