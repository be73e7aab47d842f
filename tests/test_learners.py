"""Every registered learner honours the protocol; ProtoNet computes what the paper says."""

from __future__ import annotations

import numpy as np
import pytest

from fsl_app.learners import LEARNERS, NotFittedError, ProtoNet, create_learner


def blobs(n_per_class=5, n_classes=3, dim=16, seed=0, spread=0.3):
    """Well-separated Gaussian blobs: a task any learner should solve."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(n_classes, dim)) * 3
    features = np.concatenate([c + spread * rng.normal(size=(n_per_class, dim)) for c in centres])
    labels = np.repeat([f"class_{i}" for i in range(n_classes)], n_per_class)
    return features.astype(np.float32), labels


@pytest.fixture(params=sorted(LEARNERS))
def learner(request):
    return create_learner(request.param)


def test_probabilities_are_a_distribution_over_sorted_classes(learner):
    support, labels = blobs()
    query, _ = blobs(n_per_class=4, seed=1)
    probabilities = learner.fit(support, labels).predict_proba(query)
    assert probabilities.shape == (12, 3)
    assert np.allclose(probabilities.sum(axis=1), 1.0)
    assert (probabilities >= 0).all()
    assert list(learner.classes_) == ["class_0", "class_1", "class_2"]


def test_solves_separable_blobs(learner):
    support, labels = blobs(seed=0)
    query, truth = blobs(n_per_class=10, seed=0, spread=0.35)
    assert (learner.fit(support, labels).predict(query) == truth).mean() == 1.0


def test_predicting_before_fitting_says_what_to_do(learner):
    with pytest.raises(NotFittedError, match="fit"):
        learner.predict_proba(np.zeros((1, 4), dtype=np.float32))


def test_fit_returns_self_and_accepts_any_label_type(learner):
    support, _ = blobs(n_per_class=2, n_classes=2)
    assert learner.fit(support, [3, 3, 7, 7]) is learner
    assert set(learner.predict(support)) <= {3, 7}


@pytest.mark.parametrize(
    ("support", "labels", "message"),
    [
        (np.ones((3, 4)), ["a", "a", "a"], "two classes"),
        (np.ones((3, 4)), ["a", "b"], "one label"),
        (np.ones(4), ["a"], "2-D"),
        (np.array([[np.nan, 1.0], [1.0, 1.0]]), ["a", "b"], "NaN"),
    ],
)
def test_bad_support_is_refused_clearly(learner, support, labels, message):
    with pytest.raises(ValueError, match=message):
        learner.fit(support, labels)


def test_query_from_another_backbone_is_refused(learner):
    support, labels = blobs(dim=16)
    learner.fit(support, labels)
    with pytest.raises(ValueError, match="another backbone"):
        learner.predict_proba(np.zeros((2, 8), dtype=np.float32))


def test_unknown_learner_names_the_choices():
    with pytest.raises(ValueError, match="protonet"):
        create_learner("no-such-learner")


def test_prototypes_are_class_means():
    support = np.array([[0, 0], [2, 0], [10, 10], [10, 12]], dtype=np.float32)
    model = ProtoNet().fit(support, ["a", "a", "b", "b"])
    np.testing.assert_allclose(model.prototypes_, [[1, 0], [10, 11]])


def test_euclidean_logits_are_negative_squared_distances_over_temperature():
    support = np.array([[0, 0], [4, 0]], dtype=np.float32)
    model = ProtoNet(metric="euclidean", temperature=2.0).fit(support, ["a", "b"])
    # query (1, 0): squared distances 1 and 9 -> logits -0.5 and -4.5
    expected = np.exp([-0.5, -4.5]) / np.exp([-0.5, -4.5]).sum()
    np.testing.assert_allclose(model.predict_proba([[1, 0]])[0], expected, rtol=1e-6)


def test_cosine_ignores_the_scale_of_embeddings():
    support, labels = blobs()
    query, _ = blobs(n_per_class=3, seed=2)
    model = ProtoNet(metric="cosine").fit(support, labels)
    np.testing.assert_allclose(
        model.predict_proba(query), model.predict_proba(query * 7.5), rtol=1e-5
    )


def test_lower_temperature_is_more_confident():
    support, labels = blobs()
    query, _ = blobs(n_per_class=3, seed=2, spread=1.5)
    sharp = ProtoNet(temperature=0.05).fit(support, labels).predict_proba(query).max(axis=1)
    soft = ProtoNet(temperature=0.5).fit(support, labels).predict_proba(query).max(axis=1)
    assert (sharp >= soft).all() and (sharp > soft).any()
