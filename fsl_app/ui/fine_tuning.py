"""The fine-tuning panel of the model settings: what each way to fine-tune the image model would
cost on this project, measured on the device in use.

The numbers come from :func:`fsl_app.training.finetune.estimate_seconds` (a tiny timed run,
extrapolated to the project's examples and pictures), cached per (model, device, counts). The
app's pages classify with the image model as shipped; fine-tuning runs from the command line
(``python -m fsl_app predict --fine-tune last-stage-maml|pmf``), and this panel says how long it
would take here, and which runs would be refused as too long.
"""

from __future__ import annotations

import streamlit as st


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


def fine_tuning_panel(store, project_id: int, backbone_name: str, device: str) -> None:
    """Draw, in an expander, each fine-tuning method with its time on this project's examples
    and pictures to sort, on ``device``, when asked (timing takes a few seconds)."""
    from fsl_app.training.finetune import FINE_TUNING, describe_seconds

    images = store.list_images(project_id)
    n_examples = sum(image.class_name is not None for image in images)
    n_images = len(images) - n_examples
    with st.expander("Fine-tuning the image model (command line)"):
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
