"""The image-model chooser of the Projects page: offline models, recommended downloads, any timm
model by name, and a user's own weight file.

Switching is one button: a model that must be downloaded is fetched with a progress bar (or the
choice says in one sentence why it cannot be), then the project's pictures are read with the
new model, with a progress bar, and only then is the setting saved, so every page finds the
embeddings ready. Embeddings stay cached per model: switching back reads nothing again.
"""

from __future__ import annotations

import streamlit as st

from fsl_app.backbones import (
    BackboneError,
    add_weights,
    download_weights,
    hub_reachable,
    model_choices,
    weights_location,
)
from fsl_app.project.store import Project, Store
from fsl_app.ui.resources import get_embedder
from fsl_app.ui.session import ProjectSettings, load_embedded
from fsl_app.ui.widgets import flash, plain, show_flashed

OTHER = "__other__"  # the picker's entry for any timm model name, typed by an expert
CHOICE_KEY = "image_model_choice"


@st.cache_data(ttl=60, show_spinner=False)
def _hub_reachable() -> bool:
    """Asked at most once a minute: offline, the check waits for its timeout."""
    return hub_reachable()


def image_model_settings(store: Store, project: Project) -> None:
    """The image model of ``project``: pick one, switch to it, or add a weight file."""
    show_flashed()
    settings = ProjectSettings.of(project)
    choices = {choice.name: choice for choice in model_choices()}
    names = list(choices)
    if settings.backbone not in choices:
        names.insert(0, settings.backbone)  # in use but its weights went away: still shown
    picked = st.selectbox(
        "Image model (reads each picture once)",
        [*names, OTHER],
        index=names.index(settings.backbone),
        format_func=lambda name: (
            "Another timm model (for experts)…"
            if name == OTHER
            else choices[name].label
            if name in choices
            else f"{name} (weights missing)"
        ),
        key=CHOICE_KEY,
        help="Changing it reads every picture of the project again, once; switching back to "
        "a model used before is instant.",
    )
    if picked == OTHER:
        name = st.text_input(
            "timm model name",
            key="image_model_other",
            placeholder="e.g. convnext_base.fb_in22k_ft_in1k",
            help="Any name from timm.list_models(pretrained=True); it is downloaded from "
            "huggingface.co.",
        ).strip()
    else:
        name = picked
        if name in choices:
            st.caption(plain(choices[name].details))
    if name == settings.backbone:
        shown = choices[name].label if name in choices else name
        st.caption(f"In use: **{plain(shown)}**.")
    elif name and st.button("Use this image model", key="use_image_model"):
        _switch(store, project, settings, name)
    _own_weights()


def _switch(store: Store, project: Project, settings: ProjectSettings, name: str) -> None:
    """Download if needed, read the project's pictures with ``name``, then save the setting."""
    location = weights_location(name)
    if location == "none":
        st.error(
            plain(
                f"'{name}' is not a timm model with weights on huggingface.co: check the name "
                "(timm.list_models(pretrained=True) lists them)."
            )
        )
        return
    try:
        if location == "hub":
            if not _hub_reachable():
                st.warning(
                    plain(
                        f"'{name}' must be downloaded from huggingface.co, which cannot be "
                        "reached from here: choose an offline model, or add its weight file "
                        "below."
                    )
                )
                return
            bar = st.progress(0.0, text=f"Downloading {name}…")
            download_weights(name, progress=_download_progress(bar, name))
            bar.empty()
        with st.spinner(f"Loading {name}…"):
            embedder = get_embedder(name, settings.device)
    except (BackboneError, RuntimeError) as err:
        st.error(plain(str(err)))
        return
    embedded = load_embedded(store, project, embedder)
    store.update_settings(project.id, {"backbone": name})
    flash([("success", f"Now using {name}: {len(embedded.ids)} pictures ready.")])
    st.rerun()


def _download_progress(bar, name: str):
    shown = {"percent": -1}

    def progress(done: int, total: int | None) -> None:
        if not total:
            return
        percent = min(100, int(100 * done / total))
        if percent != shown["percent"]:  # a few hundred updates, not one per chunk
            shown["percent"] = percent
            bar.progress(
                percent / 100,
                text=f"Downloading {name}: {done / 1e6:.0f} of {total / 1e6:.0f} MB",
            )

    return progress


def _own_weights() -> None:
    with st.expander("Add your own weights (.safetensors)"):
        st.caption(
            "A safetensors state dict for a timm model, e.g. saved with "
            "`save_file(model.state_dict(), 'convnext_tiny.safetensors')`. It is checked "
            "(model name, every tensor's name and shape) before it is kept."
        )
        architecture = st.text_input(
            "timm model name the weights are for", key="own_weights_name"
        ).strip()
        upload = st.file_uploader("Weight file", type=["safetensors"], key="own_weights_file")
        if st.button("Check and add", key="own_weights_add"):
            if not architecture or upload is None:
                st.warning("Give the timm model name and the weight file, then add again.")
                return
            try:
                with st.spinner("Checking the weights…"):
                    path = add_weights(architecture, upload.getvalue())
            except BackboneError as err:
                st.error(plain(str(err)))
                return
            flash([("success", f"Added '{path.name}': pick '{architecture}' above to use it.")])
            st.rerun()
