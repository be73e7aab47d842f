"""What the app runs on: the device, the backbone and its weights, the learners."""

from __future__ import annotations

import streamlit as st

from fsl_app.backbones import DEFAULT_BACKBONE, available_backbones
from fsl_app.embeddings import default_cache_path
from fsl_app.learners import available_learners
from fsl_app.ui.resources import get_embedder

st.title("The model")
embedder = get_embedder(DEFAULT_BACKBONE)
backbone = embedder.backbone
device = embedder.device.type
st.metric("Runs on", "GPU" if device == "cuda" else "Apple GPU" if device == "mps" else "CPU")
st.write("**Image model (backbone)**")
st.text(
    f"{backbone.name}: {backbone.embedding_dim}-number description of each image, "
    f"{backbone.input_size[-1]} px input\nweights: {backbone.weights_source}"
)
st.write("**Backbones available offline**")
st.text(", ".join(available_backbones()))
st.write("**Few-shot learners**")
st.text(", ".join(available_learners()))
st.write("**Embedding cache**")
st.text(f"{embedder.cache.count()} images remembered in {default_cache_path()}")
