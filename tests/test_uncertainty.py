"""Uncertainty scores: their meaning on toy probabilities, and BALD on real photos."""

from __future__ import annotations

import numpy as np
import pytest

from fsl_app.embeddings import Embedder, EmbeddingCache
from fsl_app.learners import create_learner
from fsl_app.trust.uncertainty import (
    MEANINGS,
    bald,
    bootstrap_indices,
    ensemble_probabilities,
    entropy,
    least_confidence,
    margin,
    uncertainty_scores,
)


@pytest.mark.parametrize("n_classes", [2, 3, 10])
def test_uniform_is_fully_uncertain_and_one_hot_is_sure(n_classes):
    uniform = np.full((1, n_classes), 1 / n_classes)
    one_hot = np.eye(n_classes)[:1]
    assert entropy(uniform) == pytest.approx([1.0])
    assert least_confidence(uniform) == pytest.approx([1.0])
    assert margin(uniform) == pytest.approx([0.0])
    assert entropy(one_hot) == pytest.approx([0.0])
    assert least_confidence(one_hot) == pytest.approx([0.0])
    assert margin(one_hot) == pytest.approx([1.0])


def test_margin_is_top_one_minus_top_two():
    proba = np.array([[0.2, 0.5, 0.3], [0.52, 0.41, 0.07]])
    assert margin(proba) == pytest.approx([0.2, 0.11])


def test_scores_stay_in_unit_interval_and_each_has_a_meaning():
    rng = np.random.default_rng(0)
    proba = rng.dirichlet(np.full(4, 0.5), size=200)
    members = rng.dirichlet(np.full(4, 0.5), size=(5, 200))
    scores = uncertainty_scores(proba, members)
    assert set(scores) == set(MEANINGS)
    for name, values in scores.items():
        assert values.shape == (200,)
        assert ((values >= 0) & (values <= 1)).all(), name
        assert MEANINGS[name] and "\n" not in MEANINGS[name]


def test_bald_is_high_when_members_disagree_confidently_and_zero_when_they_agree():
    sure_a, sure_b, torn = [0.99, 0.01], [0.01, 0.99], [0.5, 0.5]
    members = np.array(
        [
            [sure_a, sure_a, torn],  # member 1
            [sure_b, sure_a, torn],  # member 2
        ]
    )
    disagree, agree_sure, agree_torn = bald(members)
    assert disagree > 0.9
    assert agree_sure == 0.0
    # Both members say 50/50: all the uncertainty is in the image, none in the model.
    assert agree_torn == 0.0
    assert entropy(members.mean(axis=0))[2] == pytest.approx(1.0)


def test_probabilities_that_are_not_probabilities_are_refused():
    with pytest.raises(ValueError, match="sum to 1"):
        entropy([[0.5, 0.6]])
    with pytest.raises(ValueError, match="2-D"):
        margin([0.5, 0.5])
    with pytest.raises(ValueError, match="n_members"):
        bald([[0.5, 0.5]])


def test_bootstrap_keeps_every_class():
    labels = np.array(["a"] * 5 + ["b"] * 3 + ["c"])
    rng = np.random.default_rng(0)
    for _ in range(20):
        keep = bootstrap_indices(labels, rng)
        assert len(keep) == len(labels)
        assert sorted(np.unique(labels[keep])) == ["a", "b", "c"]
        assert (labels[keep] == "c").sum() == 1


def test_ensemble_stacks_bootstrap_members_then_augmented_views():
    rng = np.random.default_rng(0)
    support = np.concatenate([rng.normal(0, 1, (4, 8)), rng.normal(3, 1, (4, 8))])
    labels = ["a"] * 4 + ["b"] * 4
    pool = rng.normal(1.5, 1, (6, 8))
    views = [pool + rng.normal(0, 0.5, pool.shape) for _ in range(2)]
    members = ensemble_probabilities(
        create_learner, support, labels, pool, n_members=5, seed=1, augmented_pools=views
    )
    assert members.shape == (7, 6, 2)
    assert members.sum(axis=2) == pytest.approx(np.ones((7, 6)))
    again = ensemble_probabilities(
        create_learner, support, labels, pool, n_members=5, seed=1, augmented_pools=views
    )
    assert np.array_equal(members, again)
    with pytest.raises(ValueError, match="one augmented embedding per pool image"):
        ensemble_probabilities(create_learner, support, labels, pool, augmented_pools=[pool[:2]])


def test_one_example_per_class_leaves_nothing_to_resample():
    support, labels = np.eye(3, 8), ["a", "b", "c"]
    pool = np.random.default_rng(0).normal(size=(4, 8))
    members = ensemble_probabilities(create_learner, support, labels, pool, n_members=4)
    assert bald(members) == pytest.approx(np.zeros(4))


@pytest.mark.slow
def test_bald_is_higher_for_an_image_between_two_classes_than_for_a_clear_one(backbone, photos):
    embedder = Embedder(backbone, cache=EmbeddingCache(None))
    support, labels, held_out = [], [], {}
    for name in ("bird", "flower", "fruit"):
        files = photos[name][:7]
        vectors = embedder.embed(files).embeddings
        support.append(vectors[:5])
        labels += [name] * 5
        held_out[name] = vectors[5:]
    support = np.concatenate(support)
    learner = create_learner().fit(support, labels)
    candidates = np.concatenate(list(held_out.values()))
    clear = candidates[learner.predict_proba(candidates).max(axis=1).argmax()]
    # Halfway between the bird and the flower examples: a picture of neither, or of both.
    ambiguous = (support[:5].mean(axis=0) + support[5:10].mean(axis=0)) / 2
    members = ensemble_probabilities(
        create_learner, support, labels, np.stack([ambiguous, clear]), n_members=20, seed=0
    )
    ambiguous_score, clear_score = bald(members)
    assert ambiguous_score > 2 * clear_score > 0
