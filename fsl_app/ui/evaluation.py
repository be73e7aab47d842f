"""Held-out judgments of the labeled images (accuracy, suspect labels), cached until the labels
or settings change."""

from __future__ import annotations

import streamlit as st

from fsl_app.evaluation.held_out import HeldOutEvaluation, evaluate_held_out
from fsl_app.trust.label_check import SuspectLabel, find_mislabeled
from fsl_app.ui.session import ProjectSettings
from fsl_app.workspace import ProjectFeatures


@st.cache_resource(show_spinner="Measuring accuracy…", max_entries=32)
def _evaluate(
    _features: ProjectFeatures, key: tuple, learner: str, strictness: float
) -> HeldOutEvaluation | str:
    support, labels = _features.support()
    ids = [i for i, label in zip(_features.ids, _features.labels, strict=True) if label]
    try:
        return evaluate_held_out(support, labels, ids, learner=learner, strictness=strictness)
    except ValueError as err:
        return str(err)


def held_out_evaluation(
    features: ProjectFeatures, settings: ProjectSettings, learner: str | None = None
) -> tuple[HeldOutEvaluation | None, str | None]:
    """(evaluation, None), or (None, what to add first) when nothing can be held out."""
    labeled = tuple(
        (image_id, label)
        for image_id, label in zip(features.ids, features.labels, strict=True)
        if label is not None
    )
    result = _evaluate(
        features, (settings.backbone, labeled), learner or settings.learner, settings.strictness
    )
    if isinstance(result, str):
        return None, result
    return result, None


@st.cache_resource(show_spinner="Checking the labels…", max_entries=32)
def _suspects(_features: ProjectFeatures, key: tuple, learner: str) -> list[SuspectLabel]:
    support, labels = _features.support()
    return find_mislabeled(support, labels, learner=learner)


def label_suspects(
    features: ProjectFeatures, settings: ProjectSettings
) -> list[tuple[str, SuspectLabel]]:
    """Labeled images that look like another class, as (image id, suspect), most suspect first."""
    labeled = [
        (image_id, label)
        for image_id, label in zip(features.ids, features.labels, strict=True)
        if label is not None
    ]
    suspects = _suspects(features, (settings.backbone, tuple(labeled)), settings.learner)
    return [(labeled[s.index][0], s) for s in suspects]
