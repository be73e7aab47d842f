"""Which image to label next: geometry on toy points, every strategy on real photos, the CLI."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from fsl_app.active import (
    STRATEGIES,
    Suggestion,
    available_strategies,
    rank,
    typicality,
)
from fsl_app.cli import main
from fsl_app.embeddings import Embedder, EmbeddingCache
from fsl_app.learners import create_learner


def euclidean_protonet():
    """A learner that sees the toy points as they are drawn."""
    return create_learner("protonet", metric="euclidean", normalize="none")


def toy_rank(strategy: str, support, labels, pool, k: int, **options) -> list[Suggestion]:
    return rank(
        strategy,
        support=support,
        labels=labels,
        pool=pool,
        k=k,
        learner_factory=euclidean_protonet,
        normalize="none",
        **options,
    )


@pytest.fixture
def blobs() -> tuple[np.ndarray, list[str], np.ndarray]:
    """Two labeled blobs in the plane, 'a' around (0, 0) and 'b' around (4, 0), one example each.

    The pool holds the rest of both blobs and a single point far above them.
    """
    rng = np.random.default_rng(0)
    a = rng.normal((0, 0), 0.3, (25, 2))
    b = rng.normal((4, 0), 0.3, (25, 2))
    support = np.stack([a[0], b[0]])
    pool = np.concatenate([a[1:], b[1:], [(2.0, 10.0)]])
    return support, ["a", "b"], pool


def test_coreset_picks_the_far_away_point_first(blobs):
    support, labels, pool = blobs
    first = toy_rank("coreset", support, labels, pool, k=1)[0]
    assert first.index == len(pool) - 1
    assert first.score == 1.0
    assert first.reason.startswith("unlike anything labeled so far")


def test_coreset_spreads_out_over_unlabeled_regions():
    rng = np.random.default_rng(1)
    centres = np.array([(0, 0), (10, 0), (0, 10), (10, 10)])
    pool = np.concatenate([rng.normal(c, 0.5, (15, 2)) for c in centres])
    support = rng.normal((0, 0), 0.5, (2, 2))
    picks = toy_rank("coreset", support, ["a", "b"], pool, k=3)
    # One pick in each of the three unlabeled blobs, none in the labeled one.
    blobs_hit = {int(p.index) // 15 for p in picks}
    assert blobs_hit == {1, 2, 3}


def test_typiclust_picks_inside_a_dense_blob_rather_than_an_outlier():
    rng = np.random.default_rng(2)
    blob = rng.normal((0, 0), 0.3, (40, 2))
    outliers = np.array([(5.0, 5.0), (-6.0, 4.0), (6.0, -5.0)])
    pool = np.concatenate([outliers, blob])
    pick = rank("typiclust", support=np.empty((0, 2)), labels=[], pool=pool, k=1, normalize="none")
    chosen = pool[pick[0].index]
    assert pick[0].index >= len(outliers)
    assert np.linalg.norm(chosen - blob.mean(axis=0)) < 0.3
    assert "typical of a group of" in pick[0].reason


def test_typicality_is_high_in_dense_regions():
    points = np.array([(0, 0), (0.1, 0), (0, 0.1), (0.1, 0.1), (5, 5)], dtype=float)
    scores = typicality(points, n_neighbors=3)
    assert scores.argmin() == 4
    assert scores[:4].min() > 5 * scores[4]


def test_margin_reason_names_the_two_classes_with_their_probabilities(blobs):
    support, labels, _ = blobs
    midway = np.array([(2.1, 0.0), (0.2, 0.1)])
    top = toy_rank("margin", support, labels, midway, k=1)[0]
    assert top.index == 0
    proba = euclidean_protonet().fit(support, labels).predict_proba(midway[:1])[0]
    expected = f"between 'b' and 'a' ({proba[1]:.0%} vs {proba[0]:.0%})"
    assert top.reason == expected
    assert top.prediction == "b"


def test_bald_names_the_classes_its_members_vote_for():
    rng = np.random.default_rng(3)
    support = np.concatenate([rng.normal((0, 0), 1.0, (6, 2)), rng.normal((3, 0), 1.0, (6, 2))])
    pool = np.array([(1.5, 0.0), (-3.0, 0.0)])
    picks = toy_rank("bald", support, ["a"] * 6 + ["b"] * 6, pool, k=2, n_members=20)
    assert picks[0].index == 0 and picks[0].score > picks[1].score
    assert "disagree" in picks[0].reason and "'a'" in picks[0].reason and "'b'" in picks[0].reason


def test_auto_starts_typical_and_turns_uncertain_without_near_duplicates():
    rng = np.random.default_rng(4)
    a = rng.normal((0, 0), 0.5, (40, 2))
    b = rng.normal((4, 0), 0.5, (40, 2))
    # Five copies of one image right between the classes: margin takes them all.
    copies = np.repeat([(2.0, 0.2)], 5, axis=0)
    pool = np.concatenate([copies, a[10:], b[10:]])

    one_each = toy_rank("auto", np.stack([a[0], b[0]]), ["a", "b"], pool, k=4)
    assert all(p.reason.startswith("typical of a group of") for p in one_each)

    support = np.concatenate([a[:10], b[:10]])
    labels = ["a"] * 10 + ["b"] * 10
    auto = toy_rank("auto", support, labels, pool, k=4)
    margin = toy_rank("margin", support, labels, pool, k=4)
    assert sum(p.index < 5 for p in margin) == 4
    assert sum(p.index < 5 for p in auto) == 1
    assert auto[0].reason.startswith("most likely 'b' (") and auto[0].index < 5  # 85% vs 15%
    assert all("%" in p.reason and not p.reason.startswith("typical") for p in auto)


def test_cold_start_without_labels_uses_the_pool_alone(blobs):
    _, _, pool = blobs
    for strategy in ("random", "coreset", "typiclust", "auto"):
        picks = rank(strategy, support=[], labels=[], pool=pool, k=3, normalize="none")
        assert len({p.index for p in picks}) == 3
        assert all(p.prediction is None and p.reason for p in picks)
    with pytest.raises(ValueError, match="at least two classes"):
        rank("margin", support=[], labels=[], pool=pool, k=3)


@pytest.mark.parametrize("strategy", available_strategies())
def test_edge_sizes(strategy, blobs):
    support, labels, pool = blobs
    everything = toy_rank(strategy, support, labels, pool[:4], k=10)
    assert sorted(p.index for p in everything) == [0, 1, 2, 3]
    assert toy_rank(strategy, support, labels, np.empty((0, 2)), k=3) == []


def test_bad_requests_are_refused(blobs):
    support, labels, pool = blobs
    with pytest.raises(ValueError, match=r"Unknown strategy 'smart'\. Choose one of: random"):
        rank("smart", support=support, labels=labels, pool=pool, k=1)
    with pytest.raises(ValueError, match="at least 1"):
        rank("random", support=support, labels=labels, pool=pool, k=0)


def test_every_strategy_has_a_one_line_meaning():
    assert available_strategies()[0] == "random" and "auto" in STRATEGIES
    for strategy in STRATEGIES.values():
        assert strategy.meaning and "\n" not in strategy.meaning


# -- real photos ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tuxpaint(backbone, photos) -> tuple[np.ndarray, np.ndarray]:
    """Embeddings and labels of 12 real photos of each of the five demo classes."""
    embedder = Embedder(backbone, cache=EmbeddingCache(None))
    files = [f for name in sorted(photos) for f in photos[name][:12]]
    labels = np.array([name for name in sorted(photos) for _ in photos[name][:12]])
    return embedder.embed(files).embeddings, labels


def split_two_per_class(labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    labeled = np.concatenate([np.flatnonzero(labels == c)[:2] for c in np.unique(labels)])
    return labeled, np.setdiff1d(np.arange(len(labels)), labeled)


@pytest.mark.slow
@pytest.mark.parametrize("strategy", available_strategies())
def test_every_strategy_suggests_k_distinct_pool_photos_with_reasons(strategy, tuxpaint):
    features, labels = tuxpaint
    labeled, pool = split_two_per_class(labels)
    picks = rank(
        strategy, support=features[labeled], labels=labels[labeled], pool=features[pool], k=6
    )
    assert len(picks) == 6
    assert len({p.index for p in picks}) == 6
    assert all(0 <= p.index < len(pool) for p in picks)
    assert all(p.strategy == strategy and p.reason and 0 <= p.score <= 1 for p in picks)
    assert all(p.prediction in set(labels) for p in picks)
    again = rank(
        strategy, support=features[labeled], labels=labels[labeled], pool=features[pool], k=6
    )
    assert again == picks


@pytest.mark.slow
def test_on_real_photos_typiclust_picks_dense_ones_and_coreset_spreads_out(tuxpaint):
    features, labels = tuxpaint
    labeled, pool = split_two_per_class(labels)
    # The geometry the strategies use: centred on the mean, unit length.
    points = features - features.mean(axis=0)
    points /= np.linalg.norm(points, axis=1, keepdims=True)
    density = typicality(points)[pool]

    def picks(strategy: str) -> np.ndarray:
        suggestions = rank(
            strategy, support=features[labeled], labels=labels[labeled], pool=features[pool], k=5
        )
        return np.array([p.index for p in suggestions])

    def distance_to_labeled(indices: np.ndarray) -> np.ndarray:
        gaps = points[pool[indices], None, :] - points[None, labeled, :]
        return np.linalg.norm(gaps, axis=2).min(axis=1)

    typical, spread = picks("typiclust"), picks("coreset")
    assert np.median(density[typical]) > np.median(density)
    assert distance_to_labeled(spread).mean() > distance_to_labeled(np.arange(len(pool))).mean()

    # Coreset's picks are far from each other too, farther than TypiClust's.
    def min_gap(indices: np.ndarray) -> float:
        gaps = np.linalg.norm(points[pool[indices], None] - points[None, pool[indices]], axis=2)
        return gaps[~np.eye(len(indices), dtype=bool)].min()

    assert min_gap(spread) > min_gap(typical)


# -- the command line ----------------------------------------------------------------------


@pytest.fixture
def labeling_folders(tmp_path, photos) -> tuple[Path, Path, list[Path]]:
    """Two labeled photos each of bird and flower; a pool of 4 more of each and a broken file."""
    support, pool = tmp_path / "support", tmp_path / "pool"
    pool.mkdir()
    pool_files = []
    for name in ("bird", "flower"):
        (support / name).mkdir(parents=True)
        for file in photos[name][:2]:
            shutil.copy(file, support / name / file.name)
        for file in photos[name][2:6]:
            pool_files.append(Path(shutil.copy(file, pool / f"{name}-{file.name}")))
    (pool / "cut.png").write_bytes(pool_files[0].read_bytes()[:300])
    return support, pool, pool_files


@pytest.mark.slow
def test_suggest_command_prints_json_and_skips_unreadable_files(labeling_folders, capsys):
    support, pool, pool_files = labeling_folders
    code = main(
        ["suggest", "--support", str(support), "--pool", str(pool), "--k", "3", "--format", "json"]
    )
    out, err = capsys.readouterr()
    assert code == 0
    rows = json.loads(out)
    assert len(rows) == 3
    for row in rows:
        assert set(row) == {"path", "score", "strategy", "reason", "prediction"}
        assert row["strategy"] == "auto" and row["reason"]
        assert row["prediction"] in ("bird", "flower")
    assert len({row["path"] for row in rows}) == 3
    assert {row["path"] for row in rows} <= {str(p) for p in pool_files}
    assert "cut.png" in err and "Traceback" not in err

    code = main(
        [
            "suggest",
            "--support",
            str(support),
            "--pool",
            str(pool),
            "--k",
            "2",
            "--strategy",
            "margin",
        ]
    )
    out, _ = capsys.readouterr()
    header, *lines = out.strip().splitlines()
    assert code == 0
    assert header.split() == ["rank", "path", "score", "prediction", "reason"]
    # A close call names both classes; with no close call left, the class it is sure of.
    assert len(lines) == 2 and all(
        ("'bird'" in line or "'flower'" in line) and "%" in line for line in lines
    )


@pytest.mark.slow
def test_suggest_command_explains_what_a_strategy_needs(labeling_folders, capsys):
    support, pool, _ = labeling_folders
    shutil.rmtree(support / "flower")
    code = main(["suggest", "--support", str(support), "--pool", str(pool), "--strategy", "bald"])
    _, err = capsys.readouterr()
    assert code == 2
    assert "at least two classes" in err and "Traceback" not in err


def test_between_is_said_only_of_a_close_call_and_a_group_of_one_is_no_group():
    from fsl_app.active import _between, _typical_reason

    classes = ["fruit", "flower", "bird"]
    assert _between(np.array([0.17, 0.80, 0.03]), classes) == (
        "most likely 'flower' (80%), but not sure: 'fruit' comes next (17%)"
    )
    assert _between(np.array([0.40, 0.50, 0.10]), classes) == (
        "between 'flower' and 'fruit' (50% vs 40%)"
    )
    assert _typical_reason(1, 0) == "unlike any other picture to sort, with no label near it"
    assert _typical_reason(7, 0) == (
        "typical of a group of 7 similar pictures to sort, none labeled yet"
    )
