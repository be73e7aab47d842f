"""Models as cached resources, loaded once per server process.

Cached loaders take the backbone *name*, never a module object, so changing
the backbone in the UI can never serve stale embeddings (Streamlit's caching
guide); the embedding cache on disk is shared by every session.
"""

from __future__ import annotations

import streamlit as st

from fsl_app.backbones import load_backbone
from fsl_app.embeddings import Embedder, EmbeddingCache, default_cache_path


@st.cache_resource(show_spinner="Loading the image model (first time only)…")
def get_embedder(backbone_name: str, device: str = "auto") -> Embedder:
    return Embedder(
        load_backbone(backbone_name), device=device, cache=EmbeddingCache(default_cache_path())
    )
