"""Few-shot learners by name: one registry for the CLI, the app and evaluation.

Adding a learner is one file (a :class:`FewShotLearner` subclass with a
``name``) and one line below.
"""

from __future__ import annotations

from typing import Any

from fsl_app.learners.base import FewShotLearner, NotFittedError
from fsl_app.learners.linear import LinearProbe
from fsl_app.learners.maml import MAML
from fsl_app.learners.matching import MatchingNet
from fsl_app.learners.protonet import ProtoNet
from fsl_app.learners.relation import RelationNet
from fsl_app.learners.siamese import SiameseNet

LEARNERS: dict[str, type[FewShotLearner]] = {
    cls.name: cls
    for cls in (
        ProtoNet,
        MatchingNet,
        LinearProbe,
        MAML,
        RelationNet,
        SiameseNet,
    )
}
DEFAULT_LEARNER = ProtoNet.name


def available_learners() -> list[str]:
    return list(LEARNERS)


def create_learner(name: str = DEFAULT_LEARNER, **params: Any) -> FewShotLearner:
    """A fresh, unfitted learner; ``params`` go to its constructor."""
    try:
        cls = LEARNERS[name]
    except KeyError:
        raise ValueError(
            f"Unknown learner '{name}'. Choose one of: {', '.join(available_learners())}."
        ) from None
    return cls(**params)


__all__ = [
    "DEFAULT_LEARNER",
    "LEARNERS",
    "MAML",
    "FewShotLearner",
    "LinearProbe",
    "MatchingNet",
    "NotFittedError",
    "ProtoNet",
    "RelationNet",
    "SiameseNet",
    "available_learners",
    "create_learner",
]
