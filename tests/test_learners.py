"""Every registered learner honours the protocol; each learner computes what its paper says."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.linear_model import LogisticRegression
from toy_data import gaussian_blobs

from fsl_app.classifier import CalibratedClassifier
from fsl_app.learners import (
    LEARNERS,
    LinearProbe,
    MatchingNet,
    NotFittedError,
    ProtoNet,
    SoftKMeans,
    create_learner,
    meta_trainable_learners,
)
from fsl_app.trust.open_set import OpenSetDetector


def blobs(n_per_class=5, n_classes=3, dim=16, seed=0, spread=0.3):
    """Well-separated Gaussian blobs: a task any learner should solve."""
    return gaussian_blobs(n_per_class, n_classes, dim, seed, spread)


# Every learner, and every learner wrapped with calibration and "none of these" (what the app
# classifies with), honours the same protocol.
CLASSIFIERS = [*sorted(LEARNERS), *(f"calibrated {name}" for name in sorted(LEARNERS))]


def make(name: str):
    if name.startswith("calibrated "):
        return CalibratedClassifier(name.removeprefix("calibrated "))
    if name == "open-set detector":
        return OpenSetDetector()
    return create_learner(name)


@pytest.fixture(params=CLASSIFIERS)
def learner(request):
    return make(request.param)


@pytest.fixture(params=[*CLASSIFIERS, "open-set detector"])
def model(request):
    """Anything fitted on examples: the protocol checks below hold for the detector too."""
    return make(request.param)


def answer(model, query):
    """What a fitted model says about ``query``: probabilities, or the detector's distances."""
    if isinstance(model, OpenSetDetector):
        return model.distance(query)
    return model.predict_proba(query)


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


def test_predicting_before_fitting_says_what_to_do(model):
    with pytest.raises(NotFittedError, match="fit"):
        answer(model, np.zeros((1, 4), dtype=np.float32))


def test_fit_returns_self_and_accepts_any_label_type(model):
    support, _ = blobs(n_per_class=2, n_classes=2)
    assert model.fit(support, [3, 3, 7, 7]) is model
    assert set(model.classes_) == {3, 7}
    if not isinstance(model, OpenSetDetector):
        assert set(model.predict(support)) <= {3, 7}


@pytest.mark.parametrize(
    ("support", "labels", "message"),
    [
        (np.ones((3, 4)), ["a", "a", "a"], "two classes"),
        (np.ones((3, 4)), ["a", "b"], "one label"),
        (np.ones(4), ["a"], "2-D"),
        (np.array([[np.nan, 1.0], [1.0, 1.0]]), ["a", "b"], "NaN"),
    ],
)
def test_bad_support_is_refused_clearly(model, support, labels, message):
    with pytest.raises(ValueError, match=message):
        model.fit(support, labels)


def test_query_from_another_backbone_is_refused(model):
    support, labels = blobs(dim=16)
    model.fit(support, labels)
    with pytest.raises(ValueError, match="another backbone"):
        answer(model, np.zeros((2, 8), dtype=np.float32))


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


# SimpleShot normalisation (Wang et al. 2019)


def shifted(features, offset=20.0):
    """The same embeddings moved by one vector shared by support and query."""
    return features + offset * np.linspace(1.0, 2.0, features.shape[1], dtype=np.float32)


@pytest.mark.parametrize("metric", ["cosine", "euclidean"])
def test_centred_l2_is_blind_to_a_shift_shared_by_support_and_query(metric):
    support, labels = blobs()
    query, _ = blobs(n_per_class=4, seed=1, spread=1.5)
    model = ProtoNet(metric=metric, normalize="cl2")
    before = model.fit(support, labels).predict_proba(query)
    after = model.fit(shifted(support), labels).predict_proba(shifted(query))
    np.testing.assert_allclose(before, after, atol=1e-4)
    np.testing.assert_allclose(model.mean_, shifted(support).mean(axis=0), rtol=1e-5)


@pytest.mark.parametrize(("metric", "normalize"), [("cosine", "none"), ("euclidean", "l2")])
def test_without_centring_a_shared_shift_changes_the_predictions(metric, normalize):
    support, labels = blobs()
    query, _ = blobs(n_per_class=4, seed=1, spread=1.5)
    model = ProtoNet(metric=metric, normalize=normalize)
    before = model.fit(support, labels).predict_proba(query)
    after = model.fit(shifted(support), labels).predict_proba(shifted(query))
    assert np.abs(before - after).max() > 0.1


def test_plain_euclidean_needs_no_centring_to_ignore_a_shift():
    # Distances between points do not move when every point moves: centring is only
    # needed once directions (cosine, or L2 normalisation) enter.
    support, labels = blobs()
    query, _ = blobs(n_per_class=4, seed=1, spread=1.5)
    model = ProtoNet(metric="euclidean", normalize="none", temperature=50.0)
    before = model.fit(support, labels).predict_proba(query)
    after = model.fit(shifted(support), labels).predict_proba(shifted(query))
    np.testing.assert_allclose(before, after, atol=1e-3)


def test_l2_prototypes_are_means_of_unit_vectors():
    support = np.array([[3, 0], [0, 1], [0, 5], [0, 2]], dtype=np.float32)
    model = ProtoNet(normalize="l2").fit(support, ["a", "a", "b", "b"])
    np.testing.assert_allclose(model.prototypes_, [[0.5, 0.5], [0, 1]], atol=1e-6)


def test_unknown_normalization_names_the_choices():
    support, labels = blobs()
    with pytest.raises(ValueError, match="cl2"):
        ProtoNet(normalize="zscore").fit(support, labels)


# Matching Networks (Vinyals et al. 2016)


def test_matching_probabilities_are_the_attention_mass_of_each_class():
    support = np.array([[1, 0], [0, 1], [1, 1]], dtype=np.float32)
    query = np.array([[2, 1]], dtype=np.float32)
    model = MatchingNet(temperature=0.5, normalize="none").fit(support, ["a", "b", "b"])
    # cosines of (2, 1) with the support, by hand: 2/sqrt5, 1/sqrt5, 3/sqrt10
    cosines = np.array([2 / np.sqrt(5), 1 / np.sqrt(5), 3 / np.sqrt(10)])
    attention = np.exp(cosines / 0.5) / np.exp(cosines / 0.5).sum()
    expected = [attention[0], attention[1] + attention[2]]
    np.testing.assert_allclose(model.predict_proba(query)[0], expected, rtol=1e-5)
    np.testing.assert_allclose(model.decision_function(query)[0], np.log(expected), rtol=1e-5)


def test_matching_keeps_tiny_class_probabilities_finite():
    support, labels = blobs()
    query, _ = blobs(n_per_class=2, seed=3)
    logits = MatchingNet(temperature=0.001).fit(support, labels).decision_function(query)
    assert np.isfinite(logits).all()


# Logistic regression on normalised embeddings (Tian et al. 2020)


def test_linear_separates_separable_data_exactly():
    support, labels = blobs(n_per_class=5, n_classes=4, dim=32)
    query, truth = blobs(n_per_class=20, n_classes=4, dim=32, spread=0.5)
    model = LinearProbe().fit(support, labels)
    assert (model.predict(support) == labels).all()
    assert (model.predict(query) == truth).all()


def test_linear_two_class_logits_agree_with_scikit_learn_probabilities():
    support, labels = blobs(n_per_class=4, n_classes=2, spread=2.0)
    query, _ = blobs(n_per_class=5, n_classes=2, seed=4, spread=2.0)
    model = LinearProbe(C=1.0, normalize="l2").fit(support, labels)
    logits = model.decision_function(query)
    assert logits.shape == (10, 2)
    np.testing.assert_allclose(logits[:, 0], -logits[:, 1])
    # the same penalised fit made the usual way, on the full-dimensional unit vectors
    unit = lambda x: x / np.linalg.norm(x, axis=1, keepdims=True)  # noqa: E731
    reference = LogisticRegression(C=1.0).fit(unit(support), labels)
    z = reference.decision_function(unit(query))
    np.testing.assert_allclose(logits[:, 1] - logits[:, 0], z, atol=1e-4)
    np.testing.assert_allclose(
        model.predict_proba(query), reference.predict_proba(unit(query)), atol=1e-5
    )


# Inductive: a picture's probabilities do not depend on the other pictures


@pytest.mark.parametrize("normalize", ["none", "l2", "cl2"])
@pytest.mark.parametrize("metric", ["cosine", "euclidean"])
def test_protonet_scores_each_query_alone(metric, normalize):
    support, labels = blobs()
    query, _ = blobs(n_per_class=4, seed=1, spread=1.5)
    model = ProtoNet(metric=metric, normalize=normalize).fit(support, labels, unlabeled=query)
    np.testing.assert_allclose(
        model.predict_proba(query[:1])[0], model.predict_proba(query)[0], atol=1e-6
    )
    plain = ProtoNet(metric=metric, normalize=normalize).fit(support, labels)
    np.testing.assert_array_equal(model.predict_proba(query), plain.predict_proba(query))


@pytest.mark.parametrize("name", sorted(LEARNERS))
def test_every_entry_says_in_plain_words_what_it_is(name):
    entry = LEARNERS[name]
    assert entry.name == name and entry.learner_class.name == name
    assert entry.display_name.strip() and entry.description.strip()
    assert "\n" not in entry.description and len(entry.description) < 120


@pytest.mark.parametrize("name", sorted(LEARNERS))
def test_the_onnx_flag_agrees_with_what_export_can_trace(name):
    """An ONNX-able learner's export module scores as the learner does; export lists exactly
    the flagged learners."""
    from fsl_app.deploy.onnx import ONNX_LEARNERS

    support, labels = blobs()
    query, _ = blobs(n_per_class=4, seed=1)
    fitted = create_learner(name).fit(support, labels)
    assert (name in ONNX_LEARNERS) == LEARNERS[name].onnx_exportable
    if LEARNERS[name].onnx_exportable:
        with torch.no_grad():
            traced = fitted.logits_module()(torch.as_tensor(query, dtype=torch.float32))
        np.testing.assert_allclose(
            traced.double().numpy(), fitted.decision_function(query), rtol=1e-4, atol=1e-5
        )


def test_meta_trainable_learners_are_those_with_a_trainer():
    assert meta_trainable_learners() == ["maml", "relation", "siamese", "gnn", "mann", "meta-lstm"]


@pytest.mark.parametrize("name", meta_trainable_learners())
def test_every_meta_trainable_learner_has_a_trainer(name):
    """``meta-train --learner <name>`` finds, through the registry, a trainer that implements
    the loop's interface, whose options are a config's defaults and whose parameters train."""
    from fsl_app.training.config import MetaTrainingConfig
    from fsl_app.training.loop import MetaTrainer, trainer_for

    trainer = trainer_for(name)  # an abstract method left out could not be instantiated
    assert isinstance(trainer, MetaTrainer)
    config = MetaTrainingConfig(learner=name)
    assert config.options == trainer.Options()
    params = trainer.initial_parameters(8, config.with_settings(hidden=4))
    assert any(value.requires_grad for value in params.values())


def test_the_registry_imports_no_torch():
    import subprocess
    import sys

    code = (
        "import sys, fsl_app.learners as L; L.available_learners(); print('torch' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_learner_notes_reach_the_classifier(tmp_path, monkeypatch):
    from fsl_app.classifier import CalibratedClassifier

    monkeypatch.setenv("FSL_APP_PRETRAINED", str(tmp_path))
    support, labels = blobs()
    model = CalibratedClassifier("relation", backbone="toy").fit(support, labels)
    assert model.notes[0] == model.learner_.notes_[0]
    assert "no meta-trained checkpoint for the backbone 'toy'" in model.notes[0]


@pytest.mark.parametrize("name", sorted(LEARNERS))
def test_every_learner_accepts_pictures_still_to_sort(name):
    """The contract: ``fit(support, labels, unlabeled=None)``; none, empty or a pool all fit."""
    support, labels = blobs()
    pool, _ = blobs(n_per_class=4, seed=1)
    for unlabeled in (None, pool[:0], pool[:1], pool):
        proba = create_learner(name).fit(support, labels, unlabeled=unlabeled).predict_proba(pool)
        np.testing.assert_allclose(proba.sum(axis=1), 1.0, atol=1e-6)
    with pytest.raises(ValueError, match="another backbone"):
        create_learner(name).fit(support, labels, unlabeled=pool[:, :8])


def tux_pool(tux_embeddings, seed, distractors):
    """A real 1-shot task on four of the photo classes, 5 pictures a class to sort; with
    ``distractors``, that many photos of the fifth class join the pool, unscored."""
    features, names = tux_embeddings.features, tux_embeddings.labels
    rng = np.random.default_rng(seed)
    classes = rng.permutation(np.unique(names))
    support, labels, query, truth = [], [], [], []
    for c in classes[:4]:
        rows = rng.permutation(np.flatnonzero(names == c))
        support.append(rows[0])
        labels.append(c)
        query += list(rows[1:6])
        truth += [c] * 5
    extra = rng.permutation(np.flatnonzero(names == classes[4]))[:distractors]
    pool = features[np.concatenate([query, extra]).astype(int)]
    return features[support], np.asarray(labels), pool, features[query], np.asarray(truth)


@pytest.mark.parametrize(("distractors", "margin"), [(0, 0.02), (10, -0.02)])
def test_soft_kmeans_learns_from_the_pool_and_distractors_do_not_hurt(
    tux_embeddings, distractors, margin
):
    """Seeded 1-shot real tasks: the pool helps a balanced task and does no harm with
    photos of another class in it (the semi-supervised learner against itself without a
    pool)."""
    gains = []
    for seed in range(10):
        support, labels, pool, query, truth = tux_pool(tux_embeddings, seed, distractors)
        inductive = create_learner("soft_kmeans").fit(support, labels).predict(query)
        semi = create_learner("soft_kmeans").fit(support, labels, unlabeled=pool).predict(query)
        gains.append((semi == truth).mean() - (inductive == truth).mean())
    assert np.mean(gains) >= margin


def test_a_pool_of_one_class_does_not_pull_the_other_classes_to_it(tux_embeddings):
    """A folder of one kind of picture to sort (the pool holds one class only): seeded 1-shot
    real tasks, each class's pictures sorted alone, no worse than without the pool. Centred
    on examples and pool together, with every picture weighing as much as an example, such
    pools cost these tasks 19.5 points."""
    gains = []
    for seed in range(10):
        support, labels, _, query, truth = tux_pool(tux_embeddings, seed, distractors=0)
        for name in labels:
            pictures = query[truth == name]
            inductive = create_learner("soft_kmeans").fit(support, labels).predict(pictures)
            semi = create_learner("soft_kmeans").fit(support, labels, unlabeled=pictures)
            gains.append((semi.predict(pictures) == name).mean() - (inductive == name).mean())
    assert np.mean(gains) >= -0.02


def test_a_whole_folder_of_one_class_does_not_pull_the_other_classes_to_it(tux_embeddings):
    """Every photo of one class to sort (11-35 of them) against 1 example a class: the classes
    with no picture in the pool have their share claimed and stay at their examples, so the
    folder is sorted at least as well as without a pool. Without the check, the other classes
    fill their bounds from small shares of many of the folder's photos and move to it."""
    features, names = tux_embeddings.features, tux_embeddings.labels
    gains = {True: [], False: []}
    claimed = []
    for seed in range(10):
        rng = np.random.default_rng(seed)
        rows = {c: rng.permutation(np.flatnonzero(names == c)) for c in np.unique(names)}
        support = features[[r[0] for r in rows.values()]]
        labels = np.asarray(list(rows))
        inductive = create_learner("soft_kmeans").fit(support, labels)
        for name, r in rows.items():
            folder = features[r[1:]]
            right = (inductive.predict(folder) == name).mean()
            for claims in gains:
                semi = create_learner("soft_kmeans", claims=claims)
                semi.fit(support, labels, unlabeled=folder)
                gains[claims].append((semi.predict(folder) == name).mean() - right)
                if claims:
                    claimed.append(int(semi.claimed_.sum()))
    assert np.mean(gains[True]) >= 0.0
    assert np.mean(gains[True]) > np.mean(gains[False]) + 0.05
    assert np.mean(claimed) >= 3  # of the 4 classes with no picture in the folder


@pytest.mark.parametrize("shots", [1, 5])
def test_a_pool_mostly_of_other_things_does_not_hurt(tux_embeddings, shots):
    """Every photo but the examples to sort, most of them of none of the task's 5 classes:
    the task's photos among them are sorted about as well as without a pool (a safety bar
    on 10 seeds; the gaps that the most-confident-first fill and the one-example bound
    closed, 1-3 points, are measured by ``benchmarks/learners.py --parts peers``)."""
    features, names = tux_embeddings.features, tux_embeddings.labels
    gains = []
    for seed in range(10):
        rng = np.random.default_rng(seed)
        classes = rng.choice(np.unique(names), 5, replace=False)
        support = np.concatenate(
            [rng.choice(np.flatnonzero(names == c), shots, replace=False) for c in classes]
        )
        pool = np.setdiff1d(np.arange(len(features)), support)
        scored = pool[np.isin(names[pool], classes)]
        truth = names[scored]
        inductive = create_learner("soft_kmeans").fit(features[support], names[support])
        semi = create_learner("soft_kmeans").fit(
            features[support], names[support], unlabeled=features[pool]
        )
        gains.append(
            (semi.predict(features[scored]) == truth).mean()
            - (inductive.predict(features[scored]) == truth).mean()
        )
    assert np.mean(gains) >= -0.02


def test_the_pool_adds_at_most_one_examples_worth_to_a_class():
    """However many examples a class has (5 here), the pictures still to sort weigh at most
    ``pool_weight`` examples in its centre."""
    support, targets = gaussian_blobs(5, 3, 16, seed=0, centre_seed=0)
    pool, _ = gaussian_blobs(60, 3, 16, seed=1, centre_seed=0)
    learner = SoftKMeans().fit(support, targets, unlabeled=pool)
    shares = learner.shares_.sum(0)
    assert (shares <= learner.pool_weight + 1e-5).all()
    assert (shares > 0.5 * learner.pool_weight).all()  # 60 pictures a class fill the bound


def test_a_classs_bound_is_filled_from_its_most_confident_pictures_first():
    from fsl_app.learners.soft_kmeans import _shares

    weights = torch.tensor([[0.3], [0.05], [0.2], [0.1]])
    bound = torch.tensor([0.4])
    confident = _shares(weights, bound, confident_share=1.0)
    torch.testing.assert_close(confident, torch.tensor([[0.3], [0.0], [0.1], [0.0]]))
    proportional = _shares(weights, bound, confident_share=0.0)
    torch.testing.assert_close(proportional, weights * 0.4 / 0.65)
    half = _shares(weights, bound, confident_share=0.5)
    torch.testing.assert_close(half, (confident + proportional) / 2)
    # Under the bound, every picture keeps its whole weight either way
    torch.testing.assert_close(_shares(weights, torch.tensor([1.0]), 0.5), weights)


def test_a_pool_picture_is_scored_against_centres_without_its_own_share(tux_embeddings):
    """A picture that pulled a class centre towards itself must not be sure of it for that
    reason: with a pool of one, that picture is scored against the examples' centres alone
    (the centres without its share), while another picture sees the centres it moved."""
    support, labels, pool, _, _ = tux_pool(tux_embeddings, seed=0, distractors=0)
    picture, other = pool[:1], pool[1:2]
    semi = SoftKMeans().fit(support, labels, unlabeled=picture)
    unmoved = SoftKMeans(steps=0).fit(support, labels, unlabeled=picture)
    np.testing.assert_allclose(
        semi.decision_function(picture), unmoved.decision_function(picture), atol=1e-4
    )
    assert not np.allclose(semi.decision_function(other), unmoved.decision_function(other))
