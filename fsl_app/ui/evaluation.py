"""Held-out judgments of the labeled images (accuracy, suspect labels), cached until the labels
or settings change."""

from __future__ import annotations

import time
from collections.abc import Callable, Collection, Iterator

import streamlit as st

from fsl_app.embedded_set import EmbeddedSet
from fsl_app.evaluation.held_out import HeldOutEvaluation, evaluate_held_out
from fsl_app.learners import available_learners
from fsl_app.trust.label_check import SuspectLabel, find_mislabeled
from fsl_app.ui.resources import examples_key
from fsl_app.ui.session import ProjectSettings


def _held_out(embedded: EmbeddedSet, learner: str, strictness: float) -> HeldOutEvaluation | str:
    _, labels, ids = embedded.examples()
    try:
        return evaluate_held_out(
            embedded.inputs[embedded.labeled],
            labels,
            ids,
            learner=learner,
            strictness=strictness,
            backbone=embedded.backbone,
            embedding_dim=embedded.embedding_dim,
        )
    except ValueError as err:
        return str(err)


@st.cache_resource(show_spinner="Measuring accuracy…", max_entries=32)
def _evaluate(
    _embedded: EmbeddedSet, key: tuple, learner: str, strictness: float
) -> HeldOutEvaluation | str:
    return _held_out(_embedded, learner, strictness)


@st.cache_resource(
    show_spinner="Measuring accuracy: the image model's last stage is fine-tuned again on each "
    "part of your examples, held out in turn (some seconds to a minute on a CPU)…",
    max_entries=32,
)
def _evaluate_with_stage(
    _embedded: EmbeddedSet, key: tuple, learner: str, strictness: float
) -> HeldOutEvaluation | str:
    return _held_out(_embedded, learner, strictness)


def held_out_evaluation(
    embedded: EmbeddedSet, settings: ProjectSettings, learner: str | None = None
) -> tuple[HeldOutEvaluation | None, str | None]:
    """(evaluation, None), or (None, what to add first) when nothing can be held out.

    ``embedded`` is the set as ``learner`` (default: the project's) takes it
    (:meth:`fsl_app.ui.session.ProjectPage.set_for`)."""
    evaluate = _evaluate if embedded.stage is None else _evaluate_with_stage
    result = evaluate(
        embedded,
        examples_key(embedded, settings.backbone),
        learner or settings.learner,
        settings.strictness,
    )
    if isinstance(result, str):
        return None, result
    return result, None


def compare_learners(
    set_for: Callable[[str], EmbeddedSet], settings: ProjectSettings
) -> Iterator[tuple[str, HeldOutEvaluation | None, float]]:
    """Every registered learner's held-out evaluation on the project, one at a time as each
    is done, as (learner, evaluation or None when nothing can be held out, seconds taken), so a
    page can show each result as soon as it is ready. ``set_for(learner)`` gives the project's
    pictures as that learner takes them (:meth:`fsl_app.ui.session.ProjectPage.set_for`)."""
    for learner in available_learners():
        started = time.perf_counter()
        evaluation, _ = held_out_evaluation(set_for(learner), settings, learner=learner)
        yield learner, evaluation, time.perf_counter() - started


@st.cache_resource(show_spinner="Checking the labels…", max_entries=32)
def _suspects(_embedded: EmbeddedSet, key: tuple, learner: str) -> list[SuspectLabel]:
    support, labels, _ = _embedded.examples()
    return find_mislabeled(support, labels, learner=learner)


def label_suspects(
    embedded: EmbeddedSet, settings: ProjectSettings, decided: Collection[str] = ()
) -> list[tuple[str, SuspectLabel]]:
    """Labeled images that look like another class, as (image id, suspect), most suspect first.

    Images in ``decided`` (the store's confirmed labels: examples the user moved or kept after
    a suggestion) are left out; they still help judge the others.
    """
    suspects = _suspects(embedded, examples_key(embedded, settings.backbone), settings.learner)
    example_ids = embedded.example_ids
    return [(example_ids[s.index], s) for s in suspects if example_ids[s.index] not in decided]
