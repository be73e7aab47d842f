"""A model file (what the Export page saves) opened in the app: its classifier and the image
model it needs, so pictures can be sorted with it without a project or a command line."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import streamlit as st

from fsl_app.backbones import BackboneError
from fsl_app.deploy.bundle import Bundle, BundleError, check_backbone, load_bundle
from fsl_app.embeddings import Embedder
from fsl_app.ui.resources import get_embedder


@dataclass(frozen=True)
class OpenedModel:
    """A model file ready to sort pictures: its ``bundle`` and the ``embedder`` it was made for."""

    bundle: Bundle
    embedder: Embedder


@st.cache_resource(show_spinner="Opening the model file…", max_entries=4)
def _load(sha256: str, _data: bytes, name: str) -> Bundle | str:
    try:
        return load_bundle(_data, name=name)
    except BundleError as err:
        return str(err)


def open_model_file(name: str, data: bytes) -> OpenedModel | str:
    """The model in a file's bytes, or a sentence saying why it cannot be used.

    Read once per file content (the learner is refitted on load, see :func:`load_bundle`); its
    image model is the app's shared one, with the app's embedding cache.
    """
    loaded = _load(hashlib.sha256(data).hexdigest(), data, name)
    if isinstance(loaded, str):
        return loaded
    try:
        embedder = get_embedder(loaded.backbone_name)
        check_backbone(loaded, embedder.backbone)
    except BundleError as err:
        return str(err)
    except (BackboneError, RuntimeError) as err:
        return (
            f"'{name}' needs the image model '{loaded.backbone_name}', which cannot be loaded "
            f"here: {err}"
        )
    return OpenedModel(loaded, embedder)
