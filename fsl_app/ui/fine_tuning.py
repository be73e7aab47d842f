"""The fine-tuning panel of the model settings: what fine-tuning the image model costs on this
project, measured on the device in use.

In the app, the way of learning "Class centres, then fine-tuned" (``maml``) fine-tunes the image
model's last stage on the project's examples at every refit, where a meta-learned start of that
stage is shipped for the image model (:func:`fsl_app.learners.needs_last_stage`). How long such
a refit takes comes from :func:`refit_seconds`: one real fit of that learner, timed on a few
rows of the right width, extrapolated to the project's examples and pictures (the estimate
helpers of :mod:`fsl_app.training.finetune` time the command line's fine-tuning, which also
adapts on flipped and zoomed views and embeds every picture again: not what a refit does).

The command line's fine-tuning (``python -m fsl_app predict --fine-tune last-stage-maml|pmf``)
comes from :func:`fsl_app.training.finetune.estimate_seconds` (a tiny timed run,
extrapolated), cached per (model, device, counts), with the runs that would be refused as too
long.
"""

from __future__ import annotations

import time

import numpy as np
import streamlit as st

from fsl_app.learners import LEARNERS, needs_last_stage

FINE_TUNED = "maml"  # the way of learning that fine-tunes the image model's last stage
MAX_TIMED_EXAMPLES = 40  # a timed fit on more examples is extrapolated from this many


@st.cache_data(show_spinner="Timing one fine-tuning of the last stage on this device…")
def _timed_fit(backbone_name: str, n_examples: int) -> tuple[float, float]:
    """Seconds one fit of the fine-tuning learner takes on ``n_examples`` rows of the real
    width (2 classes; the image model's last stage with its meta-learned start), and seconds
    per picture of a prediction by it."""
    from fsl_app.learners import create_learner
    from fsl_app.stage_cache import last_stage_for

    stage = last_stage_for(backbone_name)
    width = stage.backbone.embedding_dim + stage.input_numel
    rows = np.random.default_rng(0).random((n_examples, width), dtype=np.float32)
    labels = [("a", "b")[i % 2] for i in range(n_examples)]
    learner = create_learner(FINE_TUNED, backbone=backbone_name)
    learner.fit(rows[:2], labels[:2])  # the first fit pays for what later ones reuse
    started = time.perf_counter()
    learner.fit(rows, labels)
    fitted = time.perf_counter()
    learner.predict_proba(rows)
    return fitted - started, (time.perf_counter() - fitted) / n_examples


def refit_seconds(backbone_name: str, n_examples: int, n_images: int) -> float:
    """About how long the fine-tuning learner takes to learn the project again after a change:
    a calibrated fit (one fit on every example and one per calibration fold, each timed like a
    fit on every example) and its predictions for the examples held out and the pictures to
    sort. Measured on this device as it is now (other work on it slows a refit too)."""
    from fsl_app.learners.maml import MAML

    timed = max(2, min(n_examples, MAX_TIMED_EXAMPLES))
    fit, per_picture = _timed_fit(backbone_name, timed)
    fits = 1 + MAML.calibration_folds
    return fits * fit * n_examples / timed + (n_examples + n_images) * per_picture


@st.cache_data(show_spinner="Timing a small fine-tuning run on this device…", max_entries=32)
def _estimates(backbone_name: str, device: str, n_examples: int, n_images: int) -> dict:
    from fsl_app.training.finetune import FINE_TUNING, estimate_seconds, refusal
    from fsl_app.ui.resources import get_embedder

    embedder = get_embedder(backbone_name, device)
    out = {}
    for method in FINE_TUNING:
        if method == "none":
            continue
        try:
            seconds = estimate_seconds(method, embedder.backbone, n_examples, n_images, device)
        except ValueError as err:  # an image model without a last stage to adapt
            out[method] = (None, str(err))
            continue
        out[method] = (seconds, refusal(method, seconds, embedder.device))
    return out


def in_app_panel(backbone_name: str, learner: str, n_examples: int, n_images: int) -> None:
    """What the fine-tuning way of learning does in the app, whether this project uses it, and
    (when asked) how long one refit takes here."""
    name = LEARNERS[FINE_TUNED].display_name
    if not needs_last_stage(FINE_TUNED, backbone_name):
        st.write(
            f"'{name}' fine-tunes the image model's last stage only with the fast image model "
            "(the default): with this one it tunes a small model on top of the image model."
        )
        return
    st.write(
        f"'{name}' fine-tunes the image model's last stage on your examples, here in the app, "
        "each time the examples change: it starts from a version of that stage prepared on "
        "other pictures and adjusts it to your classes. "
        + (
            "This project learns that way."
            if learner == FINE_TUNED
            else "Choose it under 'How it learns your classes' above."
        )
        + " Each picture is prepared once for it (a little more than reading it)."
    )
    if n_examples < 2:
        return
    if st.button("Measure how long a refit takes here", key="refit_time"):
        from fsl_app.training.finetune import describe_seconds

        seconds = refit_seconds(backbone_name, n_examples, n_images)
        st.write(
            f"**About {describe_seconds(seconds)}** after each change to the examples "
            f"({n_examples} examples, {n_images} pictures to sort, on this device); the other "
            "ways of learning take well under a second."
        )


def fine_tuning_panel(
    store, project_id: int, backbone_name: str, device: str, learner: str = ""
) -> None:
    """Draw, in an expander, what fine-tuning the image model does in the app (the way of
    learning that fine-tunes its last stage; ``learner`` is the project's), and each
    command-line fine-tuning method with its time on this project's examples and pictures to
    sort, on ``device``, when asked (timing takes a few seconds)."""
    from fsl_app.training.finetune import FINE_TUNING, describe_seconds

    images = store.list_images(project_id)
    n_examples = sum(image.class_name is not None for image in images)
    n_images = len(images) - n_examples
    with st.expander("Fine-tuning the image model"):
        in_app_panel(backbone_name, learner, n_examples, n_images)
        st.markdown("**From the command line**")
        if n_examples < 2:
            st.write("Add examples to at least two classes to see how long fine-tuning takes.")
            return
        if not st.button("Measure how long fine-tuning would take here", key="fine_tune_time"):
            return
        for method, (seconds, sentence) in _estimates(
            backbone_name, device, n_examples, n_images
        ).items():
            what = FINE_TUNING[method]
            if seconds is None:
                st.warning(f"{what}. {sentence}")
            elif sentence:
                st.warning(sentence)
            else:
                st.write(
                    f"**{describe_seconds(seconds)}**: {what}. Run it with "
                    f"`python -m fsl_app predict --fine-tune {method} --examples ... --images ...`."
                )
