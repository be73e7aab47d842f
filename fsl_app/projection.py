"""2-D and 3-D maps of the embedding space: examples, queries and class prototypes.

Embeddings are L2-normalised first (the learners compare directions), reduced
to at most 50 dimensions by PCA before t-SNE or UMAP (the usual practice: it
removes noise and makes both several times faster), and every method is
seeded, so the same images draw the same map. Maps are cached in memory per
(set of embeddings, method, dimensions, seed).

The plotly figure keeps each point's image id in ``customdata``, so a click or
a lasso in the app maps back to images with :func:`selected_ids`.
"""

from __future__ import annotations

import hashlib
import html
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import plotly.graph_objects as go

Method = Literal["pca", "tsne", "umap"]
METHODS: dict[str, str] = {
    "pca": "PCA: fast and faithful to large distances",
    "tsne": "t-SNE: shows local neighbourhoods; distances between groups mean little",
    "umap": "UMAP: local neighbourhoods and some global layout",
}
# What the app calls each layout, in plain words (METHODS keeps the technical names).
LAYOUT_WORDS: dict[str, str] = {
    "pca": "fast",
    "tsne": "detailed",
    "umap": "detailed, another way (about a minute the first time)",
}
ROLES = ("example", "query", "prototype", "suggested")
# Each role in the legend and in the page's words, and its marker: symbols that 2-D and 3-D
# scatters both draw, so the map, its legend and the words under it agree in both views.
ROLE_WORDS = {
    "example": "example",
    "query": "to sort",
    "prototype": "class centre",
    "suggested": "label next",
}
# Not "x" or "star": a 3-D scatter draws its markers as font glyphs, and without a font that
# has them they show as empty boxes (seen in Debian's chromium).
_SYMBOLS = {
    "example": "circle",
    "query": "diamond-open",
    "prototype": "square",
    "suggested": "circle-open",
}
SYMBOL_WORDS = {
    "example": "dots",
    "query": "open diamonds",
    "prototype": "big squares",
    "suggested": "big rings",
}
_SIZES = {"example": 9, "query": 9, "prototype": 18, "suggested": 13}
_umap_compiled = False  # numba compiles UMAP's kernels on its first use in a process
_PRE_PCA_DIMS = 50
_CACHE_SIZE = 32
_cache: OrderedDict[tuple, np.ndarray] = OrderedDict()


def map_coordinates(
    features: np.ndarray, method: Method = "pca", dims: int = 2, seed: int = 0
) -> np.ndarray:
    """Coordinates of shape (n, dims) for ``features`` of shape (n, d); cached, deterministic."""
    global _umap_compiled
    if method not in METHODS:
        raise ValueError(f"Unknown projection '{method}'. Choose one of: {', '.join(METHODS)}.")
    if dims not in (2, 3):
        raise ValueError("A map has 2 or 3 dimensions.")
    features = np.ascontiguousarray(features, dtype=np.float32)
    key = (hashlib.sha256(features.tobytes()).hexdigest(), features.shape, method, dims, seed)
    if key in _cache:
        _cache.move_to_end(key)
        return _cache[key].copy()
    coords = _lay_out(features, method, dims, seed)
    _umap_compiled = _umap_compiled or method == "umap"
    _cache[key] = coords
    if len(_cache) > _CACHE_SIZE:
        _cache.popitem(last=False)
    return coords.copy()


def slow_first_time(method: str) -> bool:
    """Whether ``method`` has a one-off cost still to pay in this process (UMAP: numba
    compiles its kernels, tens of seconds on a 2-core CPU), so a page can say so first."""
    return method == "umap" and not _umap_compiled


def clear_cache() -> None:
    """Forget every cached map (benchmarks and tests measure the real work)."""
    _cache.clear()


def _lay_out(features: np.ndarray, method: str, dims: int, seed: int) -> np.ndarray:
    n = len(features)
    norms = np.linalg.norm(features, axis=1, keepdims=True)
    unit = features / np.maximum(norms, 1e-12)
    if n <= dims:  # too few points for any method to place: spread them on the axes
        coords = np.zeros((n, dims), dtype=np.float32)
        coords[np.arange(n), np.arange(n) % dims] = np.arange(n) + 1.0
        return coords
    from sklearn.decomposition import PCA

    if method == "pca":
        return PCA(n_components=dims, random_state=seed).fit_transform(unit).astype(np.float32)
    reduced = PCA(n_components=min(_PRE_PCA_DIMS, n - 1, unit.shape[1]), random_state=seed)
    reduced = reduced.fit_transform(unit)
    if method == "tsne":
        from sklearn.manifold import TSNE

        tsne = TSNE(
            n_components=dims,
            perplexity=float(min(30.0, max(2.0, (n - 1) / 3))),
            init="pca",
            random_state=seed,
        )
        return tsne.fit_transform(reduced).astype(np.float32)
    import warnings

    import umap

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*n_jobs value.*")  # seeding forces 1 job
        reducer = umap.UMAP(
            n_components=dims,
            n_neighbors=int(min(15, n - 1)),
            init="spectral" if n > dims + 1 else "random",
            random_state=seed,
        )
        return reducer.fit_transform(reduced).astype(np.float32)


@dataclass(frozen=True)
class MapPoints:
    """What each row of a map is: ids and names of images, roles and classes.

    ``label`` is the class a person gave (None for unlabeled queries);
    ``prediction`` is the class the learner gives (for prototypes, their class; "none of
    these" for a picture the user marked so); ``confidences`` the calibrated probability of
    each query's prediction (None where there is none), as Predict shows it.
    """

    embeddings: np.ndarray  # (n, d)
    ids: list[str]
    names: list[str]
    roles: list[str]
    labels: list[str | None]
    predictions: list[str | None]
    confidences: list[float | None] = field(default_factory=list)


def map_points(
    example_embeddings: np.ndarray,
    example_labels: Sequence[str],
    example_ids: Sequence[str],
    *,
    example_names: Sequence[str] | None = None,
    query_embeddings: np.ndarray | None = None,
    query_predictions: Sequence[str | None] = (),
    query_ids: Sequence[str] = (),
    query_names: Sequence[str] | None = None,
    example_predictions: Sequence[str | None] | None = None,
    suggested_ids: Sequence[str] = (),
    query_confidences: Sequence[float | None] = (),
) -> MapPoints:
    """Examples, queries and one prototype (class mean) per class, stacked for one map.

    Queries whose id is in ``suggested_ids`` take the role "suggested";
    ``query_confidences`` (default: none known) go into their hover text.
    """
    example_embeddings = np.asarray(example_embeddings, dtype=np.float32)
    dim = example_embeddings.shape[1]
    query_embeddings = (
        np.zeros((0, dim), np.float32) if query_embeddings is None else np.asarray(query_embeddings)
    )
    classes = sorted(set(example_labels))
    labels_array = np.asarray(example_labels)
    prototypes = np.stack([example_embeddings[labels_array == c].mean(axis=0) for c in classes])
    suggested = set(suggested_ids)
    return MapPoints(
        embeddings=np.concatenate([example_embeddings, query_embeddings, prototypes]).astype(
            np.float32
        ),
        ids=[*example_ids, *query_ids, *(f"prototype:{c}" for c in classes)],
        names=[
            *(example_names or example_ids),
            *(query_names or query_ids),
            *(f"'{c}' (class centre)" for c in classes),
        ],
        roles=[
            *(["example"] * len(example_embeddings)),
            *("suggested" if i in suggested else "query" for i in query_ids),
            *(["prototype"] * len(classes)),
        ],
        labels=[*example_labels, *([None] * len(query_embeddings)), *classes],
        predictions=[
            *(example_predictions or example_labels),
            *query_predictions,
            *classes,
        ],
        confidences=[
            *([None] * len(example_embeddings)),
            *(query_confidences or [None] * len(query_embeddings)),
            *([None] * len(classes)),
        ],
    )


def _centres_among_their_examples(coords: np.ndarray, points: MapPoints) -> np.ndarray:
    """``coords`` with each class centre moved to the middle of its examples on the map.

    A centre is the average of its examples, but a layout does not keep averages: the
    embeddings are L2-normalised first (the centre's direction is pushed out to the sphere), and
    t-SNE and UMAP bend space. Drawn where its examples' average falls, the square sits among
    them, as the page says it does.
    """
    coords = coords.copy()
    roles = np.asarray(points.roles)
    labels = np.asarray(points.labels, dtype=object)
    for i in np.flatnonzero(roles == "prototype"):
        members = (roles == "example") & (labels == labels[i])
        if members.any():
            coords[i] = coords[members].mean(axis=0)
    return coords


def map_figure(
    coords: np.ndarray,
    points: MapPoints,
    *,
    color_by: Literal["class", "prediction"] = "class",
    title: str | None = None,
) -> go.Figure:
    """A plotly scatter (2-D or 3-D): colour by class, marker by role, image id in customdata.

    ``color_by="class"`` colours examples by their label and queries by their
    prediction; ``"prediction"`` colours every point by the learner's prediction,
    which shows examples the learner would put in another class.
    """
    dims = coords.shape[1]
    coords = _centres_among_their_examples(coords, points)
    colour_of = (
        points.predictions
        if color_by == "prediction"
        else [
            label if label is not None else prediction
            for label, prediction in zip(points.labels, points.predictions, strict=True)
        ]
    )
    palette = _palette(sorted({c for c in colour_of if c is not None}))
    figure = go.Figure()
    for role in ROLES:
        for colour_class in sorted({str(c) for c in colour_of}):
            rows = [
                i
                for i, (r, c) in enumerate(zip(points.roles, colour_of, strict=True))
                if r == role and str(c) == colour_class
            ]
            if not rows:
                continue
            hover = [_hover_text(points, i) for i in rows]
            marker = {
                "symbol": _SYMBOLS[role],
                "size": _SIZES[role],
                "color": palette.get(colour_class, "#888888"),
                "line": {"width": 1, "color": "#222222"},
            }
            common = {
                "mode": "markers",
                # Class names are typed by users, and plotly renders some HTML in legends.
                "name": f"{html.escape(colour_class)} · {ROLE_WORDS[role]}",
                "legendgroup": colour_class,
                "customdata": [points.ids[i] for i in rows],
                "hovertext": hover,
                "hoverinfo": "text",
                "marker": marker,
            }
            if dims == 3:
                marker["size"] = max(3, marker["size"] // 2)
                figure.add_trace(
                    go.Scatter3d(x=coords[rows, 0], y=coords[rows, 1], z=coords[rows, 2], **common)
                )
            else:
                figure.add_trace(go.Scatter(x=coords[rows, 0], y=coords[rows, 1], **common))
    figure.update_layout(
        title=title,
        legend_title_text="class · kind of point",
        margin={"l": 10, "r": 10, "t": 40 if title else 10, "b": 10},
        # 2-D: no dragmode, so Streamlit lets a click select a point (it turns click selection
        # off while the lasso is the drag tool); the lasso is one click away in the toolbar.
        dragmode=None if dims == 2 else "orbit",
        height=600,
    )
    if dims == 2:
        figure.update_xaxes(showticklabels=False, title=None)
        figure.update_yaxes(showticklabels=False, title=None, scaleanchor="x")
    else:  # the axes of a layout mean nothing: no numbers or names to cut off at the edges
        hidden = {"showticklabels": False, "title": {"text": ""}}
        figure.update_layout(scene={"xaxis": hidden, "yaxis": hidden, "zaxis": hidden})
    return figure


def selected_ids(selection: Mapping | None) -> list[str]:
    """Image ids of the points a user clicked or lassoed, in order, without duplicates.

    Takes the selection state of a plotly chart as Streamlit returns it
    (``{"selection": {"points": [{"customdata": ...}, ...]}}``) or its inner part.
    """
    if not selection:
        return []
    inner = selection.get("selection", selection)
    ids = []
    for point in inner.get("points", []):
        value = point.get("customdata")
        if isinstance(value, (list, tuple)):
            value = value[0] if value else None
        if value is not None and value not in ids:
            ids.append(value)
    return ids


def _hover_text(points: MapPoints, i: int) -> str:
    # Names and classes are typed by users: escape them, plotly renders some HTML.
    role = points.roles[i]
    name = html.escape(str(points.names[i]))
    if role == "prototype":
        return f"centre of class '{html.escape(str(points.labels[i]))}'"
    if role == "example":
        return f"{name}<br>example of '{html.escape(str(points.labels[i]))}'"
    confidence = points.confidences[i] if points.confidences else None
    sure = "" if confidence is None else f" ({confidence:.0%})"
    return (
        f"{name}<br>{ROLE_WORDS[role]}; looks like "
        f"'{html.escape(str(points.predictions[i]))}'{sure}"
    )


def _palette(classes: Sequence[str]) -> dict[str, str]:
    import plotly.express as px

    colours = px.colors.qualitative.Plotly + px.colors.qualitative.Dark24
    return {c: colours[i % len(colours)] for i, c in enumerate(classes)}
