"""Embedding maps: right shapes, the same map for the same seed, clicks map back to images."""

from __future__ import annotations

import numpy as np
import plotly.graph_objects as go
import pytest

from fsl_app.projection import (
    METHODS,
    clear_cache,
    map_coordinates,
    map_figure,
    map_points,
    selected_ids,
)


@pytest.fixture
def points(tux_embeddings):
    rows = np.r_[0:8, 36:44]  # 8 birds, then 8 fish: two real groups
    queries = np.r_[60:64]
    return map_points(
        tux_embeddings.features[rows],
        tux_embeddings.labels[rows].tolist(),
        [f"img{i}" for i in rows],
        query_embeddings=tux_embeddings.features[queries],
        query_predictions=tux_embeddings.labels[queries].tolist(),
        query_ids=[f"q{i}" for i in queries],
        suggested_ids=["q61"],
    )


@pytest.mark.parametrize(
    "method", [m if m == "pca" else pytest.param(m, marks=pytest.mark.slow) for m in METHODS]
)
@pytest.mark.parametrize("dims", [2, 3])
def test_projection_shape_and_determinism(tux_embeddings, method, dims):
    features = tux_embeddings.features[:60]
    first = map_coordinates(features, method, dims, seed=0)
    assert first.shape == (60, dims)
    assert np.isfinite(first).all()
    clear_cache()  # recompute, not a cache hit
    np.testing.assert_allclose(
        map_coordinates(features, method, dims, seed=0), first, rtol=1e-4, atol=1e-4
    )


def test_pca_map_separates_real_classes(tux_embeddings):
    """Birds and fruit sit apart on the map: their centres are further apart than their spread."""
    mask = np.isin(tux_embeddings.labels, ["bird", "fruit"])
    coords = map_coordinates(tux_embeddings.features[mask], "pca", 2)
    labels = tux_embeddings.labels[mask]
    centres = {c: coords[labels == c].mean(axis=0) for c in ("bird", "fruit")}
    gap = np.linalg.norm(centres["bird"] - centres["fruit"])
    spread = np.mean([coords[labels == c].std(axis=0).mean() for c in centres])
    assert gap > spread


def test_tiny_sets_still_get_a_map():
    assert map_coordinates(np.ones((1, 8)), "tsne", 2).shape == (1, 2)
    assert map_coordinates(np.eye(3, 8), "umap", 3).shape == (3, 3)


def test_map_points_add_one_prototype_per_class(points):
    assert points.roles.count("prototype") == 2
    assert points.roles.count("suggested") == 1 and points.roles.count("query") == 3
    assert points.ids[-2:] == ["prototype:bird", "prototype:fish"]
    bird_rows = [i for i, label in enumerate(points.labels[:16]) if label == "bird"]
    np.testing.assert_allclose(
        points.embeddings[-2], points.embeddings[bird_rows].mean(axis=0), rtol=1e-5
    )


@pytest.mark.parametrize("dims", [2, 3])
def test_figure_has_every_point_with_its_id(points, dims):
    coords = map_coordinates(points.embeddings, "pca", dims)
    figure = map_figure(coords, points, color_by="class")
    assert isinstance(figure, go.Figure)
    ids = [i for trace in figure.data for i in trace.customdata]
    assert sorted(ids) == sorted(points.ids)
    symbols = {trace.marker.symbol for trace in figure.data}
    assert len(symbols) == 4  # one marker per role


def test_user_names_are_escaped_in_hover_text(tux_embeddings):
    features = tux_embeddings.features[:4]
    points = map_points(features, ["<b>x</b>", "<b>x</b>", "y", "y"], ["a", "b", "c", "d"])
    figure = map_figure(map_coordinates(points.embeddings, "pca", 2), points)
    hover = " ".join(t for trace in figure.data for t in trace.hovertext)
    assert "<b>x</b>" not in hover and "&lt;b&gt;x&lt;/b&gt;" in hover


@pytest.mark.parametrize("dims", [2, 3])
def test_user_names_are_escaped_in_legend_and_hover_text(tux_embeddings, dims):
    # Plotly renders a subset of HTML in legend names and hover text: a class or file name
    # typed by a user is shown as typed, never as markup.
    trick = "<b>bold</b> & <a href='http://host/x'>link</a>"
    features = tux_embeddings.features[:6]
    points = map_points(
        features[:4],
        [trick, trick, "y", "y"],
        ["a", "b", "c", "d"],
        example_names=["<img src=x>.png", "b.png", "c.png", "d.png"],
        query_embeddings=features[4:],
        query_predictions=[trick, "y"],
        query_ids=["e", "f"],
        query_names=["<i>e</i>.png", "f.png"],
    )
    figure = map_figure(map_coordinates(points.embeddings, "pca", dims), points)
    legend = [trace.name for trace in figure.data]
    hover = [t for trace in figure.data for t in trace.hovertext]
    shown = " ".join(legend + hover)
    for raw in ("<b>", "<a ", "<img", "<i>", " & "):
        assert raw not in shown
    escaped = "&lt;b&gt;bold&lt;/b&gt; &amp; &lt;a href=&#x27;http://host/x&#x27;&gt;link&lt;/a&gt;"
    assert any(name.startswith(escaped) for name in legend)
    assert any("&lt;img src=x&gt;.png" in text for text in hover)


def test_selection_maps_back_to_image_ids():
    event = {"selection": {"points": [{"customdata": "a"}, {"customdata": ["b"]}, {"x": 1}]}}
    assert selected_ids(event) == ["a", "b"]
    assert selected_ids({"points": [{"customdata": "a"}, {"customdata": "a"}]}) == ["a"]
    assert selected_ids(None) == []


@pytest.mark.parametrize("method", ["pca", "tsne"])
def test_a_class_centre_is_drawn_among_its_examples(points, method):
    # Normalising, t-SNE and UMAP do not keep averages: the square is placed where its
    # examples' average falls on the map, as the page's caption says.
    coords = map_coordinates(points.embeddings, method, 2)
    figure = map_figure(coords, points)
    drawn = {
        i: (x, y)
        for trace in figure.data
        for i, x, y in zip(trace.customdata, trace.x, trace.y, strict=True)
    }
    examples = zip(points.labels, points.roles, strict=True)
    for label in {label for label, role in examples if role == "example"}:
        members = [
            drawn[i]
            for i, role, lab in zip(points.ids, points.roles, points.labels, strict=True)
            if role == "example" and lab == label
        ]
        np.testing.assert_allclose(drawn[f"prototype:{label}"], np.mean(members, axis=0), rtol=1e-5)
