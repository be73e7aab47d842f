"""Long-lived objects shared by every session: the store, the models, fitted classifiers.

Cached loaders take names and plain values, never module objects, so changing the backbone in
the UI can never serve stale embeddings (Streamlit's caching guide). The embedding cache lives
in the data folder beside the projects unless ``FSL_APP_CACHE`` says otherwise.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import streamlit as st

from fsl_app.backbones import Backbone, load_backbone
from fsl_app.classifier import CalibratedClassifier, fit_classifier
from fsl_app.embedded_set import EmbeddedSet
from fsl_app.embeddings import CACHE_PATH_ENV, Embedder, EmbeddingCache
from fsl_app.project.store import Store, StoreError, default_data_dir

EMBEDDING_CACHE_NAME = "embeddings.sqlite"
FINE_TUNING_SPINNER = (
    "Fine-tuning the image model's last stage on your examples (a few fits, seconds on a CPU)…"
)


def data_dir() -> Path:
    return default_data_dir().expanduser().absolute()


@st.cache_resource(show_spinner=False)
def get_store(root: str) -> Store:
    """The store, tidied once per process (trash past its time, unused files; see Store.tidy)."""
    store = Store(root)
    # Tidying can wait for the next start: a busy or read-only folder must not keep the app shut.
    with contextlib.suppress(StoreError, OSError):
        store.tidy()
    return store


def open_store() -> Store:
    """The store of this server's data folder (raises StoreError when it cannot be opened)."""
    return get_store(str(data_dir()))


def embedding_cache_path() -> Path:
    if os.environ.get(CACHE_PATH_ENV):
        return Path(os.environ[CACHE_PATH_ENV])
    return data_dir() / EMBEDDING_CACHE_NAME


@st.cache_resource(show_spinner="Loading the image model (first time only)…")
def _backbone(name: str, device: str) -> Backbone:
    # One copy per device: an Embedder moves its backbone to its device.
    return load_backbone(name)


@st.cache_resource(show_spinner=False)
def _embedder(backbone_name: str, device: str, cache_path: str) -> Embedder:
    return Embedder(
        _backbone(backbone_name, device), device=device, cache=EmbeddingCache(cache_path)
    )


def get_embedder(backbone_name: str, device: str = "auto") -> Embedder:
    """The backbone on ``device``, with the embedding cache of the current data folder."""
    return _embedder(backbone_name, device, str(embedding_cache_path()))


# The fit is cached without a spinner of its own, so the caller says what the wait is for: the
# learner that fine-tunes the image model's last stage fits it several times (calibration),
# seconds on a CPU. A cache hit returns before st.spinner shows anything.
@st.cache_resource(show_spinner=False, max_entries=16)
def _fitted(
    _embedded: EmbeddedSet, key: tuple, learner: str, strictness: float, params_json: str
) -> CalibratedClassifier:
    return fit_classifier(
        _embedded, learner=learner, strictness=strictness, params=json.loads(params_json)
    )


def fitted_classifier(
    embedded: EmbeddedSet,
    *,
    backbone_key: str,
    learner: str,
    strictness: float,
    params: Mapping[str, Any] | None = None,
) -> CalibratedClassifier:
    """The project's classifier, refitted only when what it is fitted on (:func:`fit_key`)
    or its settings change. ``embedded`` is the set as the learner takes it
    (:func:`fsl_app.embedded_set.for_learner`)."""
    with st.spinner("Learning your classes…" if embedded.stage is None else FINE_TUNING_SPINNER):
        return _fitted(
            embedded,
            fit_key(embedded, backbone_key),
            learner,
            strictness,
            json.dumps(dict(params or {}), sort_keys=True),
        )


def examples_key(embedded: EmbeddedSet, backbone_key: str) -> tuple:
    """What a judgment of the examples alone depends on (held-out accuracy, suspect labels):
    the embeddings' backbone, every (id, label) of the examples, the classes, and whether the
    rows carry the activations entering the last stage (what the learner that fine-tunes it
    takes: the same examples without them are other rows). Pictures still to sort do not
    change it, so uploading them recomputes nothing of that."""
    labeled = tuple(
        (image_id, label)
        for image_id, label in zip(embedded.ids, embedded.labels, strict=True)
        if label is not None
    )
    return (backbone_key, labeled, tuple(embedded.classes), embedded.stage is not None)


def fit_key(embedded: EmbeddedSet, backbone_key: str) -> tuple:
    """What the fitted classifier depends on: :func:`examples_key`, the pictures still to sort
    (a semi-supervised learner learns from them) and those marked "none of these" (the
    open-set detector's negatives): any of them changing must refit, or answers would not
    move. A set carrying the last stage's activations is learned from its examples alone
    (:func:`fsl_app.classifier.fit_classifier`): new pictures to sort then refit nothing, which
    spares seconds of fine-tuning."""
    return (
        *examples_key(embedded, backbone_key),
        tuple(embedded.unlabeled_ids) if embedded.stage is None else (),
        tuple(sorted(embedded.none_of_these)),
    )
