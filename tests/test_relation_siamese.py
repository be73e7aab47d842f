"""Relation Networks and Siamese networks: untrained fall-backs, meta-training, shipped heads."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from toy_data import distorted_classes, gaussian_blobs

from fsl_app.cli import main
from fsl_app.datasets import load_dataset
from fsl_app.embeddings import Embedder, EmbeddingCache
from fsl_app.learners import ProtoNet, RelationNet, SiameseNet, create_learner
from fsl_app.pretrained import default_path, load
from fsl_app.training.config import MetaTrainingConfig
from fsl_app.training.loop import meta_train, score_on_episodes, trainer_for, training_state_path

LEARNERS = ("relation", "siamese")


def small(learner: str, **changes) -> MetaTrainingConfig:
    settings = dict(
        ways=3, shots=(1, 3), queries=4, episodes=24, meta_batch=2, hidden=8, outer_lr=1e-2
    )
    return MetaTrainingConfig(learner=learner).with_settings(**{**settings, **changes})


@pytest.fixture
def pretrained(tmp_path, monkeypatch):
    """An empty pretrained/ folder for checkpoint="auto" to look in."""
    folder = tmp_path / "pretrained"
    folder.mkdir()
    monkeypatch.setenv("FSL_APP_PRETRAINED", str(folder))
    return folder


def test_are_registered():
    assert isinstance(create_learner("relation"), RelationNet)
    assert isinstance(create_learner("siamese"), SiameseNet)


# Without a meta-trained head


def test_untrained_relation_is_cosine_protonet_on_centred_embeddings():
    support, labels = gaussian_blobs(spread=1.0)
    query, _ = gaussian_blobs(n_per_class=4, seed=1, spread=1.5)
    relation = RelationNet(checkpoint=None).fit(support, labels)
    protonet = ProtoNet(normalize="cl2").fit(support, labels)
    np.testing.assert_allclose(
        relation.predict_proba(query), protonet.predict_proba(query), rtol=1e-5, atol=1e-6
    )
    assert relation.module_ is None and "no meta-trained head" in relation.notes_[0]


def test_untrained_siamese_is_cosine_protonet_on_unit_embeddings():
    support, labels = gaussian_blobs(spread=1.0)
    query, _ = gaussian_blobs(n_per_class=4, seed=1, spread=1.5)
    siamese = SiameseNet(checkpoint=None).fit(support, labels)
    protonet = ProtoNet(normalize="l2").fit(support, labels)
    np.testing.assert_allclose(
        siamese.predict_proba(query), protonet.predict_proba(query), rtol=1e-5, atol=1e-6
    )


def test_untrained_verification_is_a_scaled_cosine():
    a = np.array([[2, 1]], dtype=np.float32)
    b = np.array([[1, 0], [0, 1], [1, 1]], dtype=np.float32)
    # cosines of (2, 1) with b, by hand; then sigmoid(10 * (cos - 0.5))
    cosines = np.array([2 / np.sqrt(5), 1 / np.sqrt(5), 3 / np.sqrt(10)])
    np.testing.assert_allclose(
        SiameseNet(checkpoint=None).same_class_probability(a, b),
        1 / (1 + np.exp(-10 * (cosines - 0.5))),
        rtol=1e-5,
    )


@pytest.mark.parametrize("learner", LEARNERS)
def test_without_a_shipped_file_it_falls_back_and_says_so(learner, pretrained):
    support, labels = gaussian_blobs()
    model = create_learner(learner).fit(support, labels)
    assert model.checkpoint_ is None
    assert "no meta-trained checkpoint" in model.notes_[0] and "looked for" in model.notes_[0]


# Meta-training


@pytest.mark.parametrize("learner", LEARNERS)
def test_training_writes_a_checkpoint_that_loads_and_changes_predictions(learner, tmp_path):
    features, labels = distorted_classes()
    out = tmp_path / f"{learner}-toy.safetensors"
    result = meta_train(
        features, labels, small(learner), backbone="toy", backbone_id="toy@1", out=out
    )
    assert result.checkpoint.path == out and result.episodes == 24
    loaded = load(out, learner)
    assert loaded.embedding_dim == 16 and loaded.metadata["backbone_id"] == "toy@1"
    assert json.loads(loaded.metadata["config"])["learner"] == learner

    support, query, support_labels = features[::6], features[1::6], labels[::6]
    trained = create_learner(learner, checkpoint=loaded).fit(support, support_labels)
    untrained = create_learner(learner, checkpoint=None).fit(support, support_labels)
    assert trained.checkpoint_.path == out and "meta-trained for toy" in trained.notes_[0]
    assert not np.allclose(trained.predict_proba(query), untrained.predict_proba(query))


@pytest.mark.parametrize("learner", LEARNERS)
def test_training_lowers_the_loss(learner):
    features, labels = distorted_classes()
    config = small(learner, episodes=200, meta_batch=4)
    losses = []
    meta_train(
        features,
        labels,
        config,
        backbone="toy",
        progress=lambda done, total, running: losses.append(running["loss"]),
    )
    assert np.mean(losses[-5:]) < 0.8 * losses[0]


def spiky_classes(n_classes=12, per_class=12, dim=16, seed=0):
    """Non-negative classes whose coordinates now and then spike, as pooled CNN features do.

    The spikes swamp raw cosines; a coordinate-wise transform that damps them
    helps any pair of classes, seen or not.
    """
    rng = np.random.default_rng(seed)
    centres = rng.uniform(size=(n_classes, dim))
    features = np.repeat(centres, per_class, axis=0) + 0.1 * rng.uniform(
        size=(len(centres) * per_class, dim)
    )
    features += (rng.uniform(size=features.shape) < 0.1) * rng.exponential(3.0, features.shape)
    return features.astype(np.float32), np.repeat(
        [f"class_{i}" for i in range(n_classes)], per_class
    )


def auc(scores, positive):
    """Chance that a positive outscores a negative (Mann-Whitney)."""
    ranks = scores.argsort().argsort()
    return (ranks[positive].mean() - (positive.sum() - 1) / 2) / (~positive).sum()


def test_siamese_training_teaches_verification_of_unseen_classes(tmp_path):
    features, labels = spiky_classes()
    train = np.isin(labels, [f"class_{i}" for i in range(8)])
    out = tmp_path / "siamese-toy.safetensors"
    config = small("siamese", episodes=300, meta_batch=4)
    meta_train(features[train], labels[train], config, backbone="toy", out=out)
    x, y = features[~train], labels[~train]
    a, b = np.triu_indices(len(y), k=1)
    same = y[a] == y[b]
    trained = SiameseNet(checkpoint=load(out, "siamese")).same_class_probability(x[a], x[b])
    untrained = SiameseNet(checkpoint=None).same_class_probability(x[a], x[b])
    balanced_accuracy = ((trained[same] > 0.5).mean() + (trained[~same] <= 0.5).mean()) / 2
    # measured: AUC 0.89 against 0.61, balanced accuracy 0.83
    assert auc(trained, same) > auc(untrained, same) + 0.15
    assert balanced_accuracy > 0.7


@pytest.mark.parametrize("learner", LEARNERS)
def test_resume_continues_from_the_saved_episode(learner, tmp_path):
    features, labels = distorted_classes()
    config = small(learner, episodes=8, checkpoint_every=4)
    out = tmp_path / f"{learner}-toy.safetensors"

    def interrupt_after_six(done, total, running):
        if done == 6:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        meta_train(features, labels, config, backbone="toy", out=out, progress=interrupt_after_six)
    assert training_state_path(out).is_file() and not out.exists()
    resumed = meta_train(features, labels, config, backbone="toy", out=out, resume=True)
    assert resumed.resumed_from == 4 and resumed.episodes == 8
    straight = meta_train(features, labels, config, backbone="toy")
    for name, tensor in straight.checkpoint.tensors.items():
        torch.testing.assert_close(resumed.checkpoint.tensors[name], tensor)

    other = small(learner, episodes=8, checkpoint_every=4, outer_lr=0.5)
    with pytest.raises(ValueError, match="outer_lr changed"):
        meta_train(features, labels, other, backbone="toy", out=out, resume=True)


@pytest.mark.parametrize("learner", LEARNERS)
def test_a_head_for_other_embeddings_is_skipped_with_a_note(learner, pretrained):
    features, labels = distorted_classes(dim=8)
    auto = default_path(learner, "toy")
    meta_train(features, labels, small(learner, episodes=2), backbone="toy", out=auto)
    support, support_labels = gaussian_blobs(dim=16)
    model = create_learner(learner, backbone="toy").fit(support, support_labels)
    assert model.checkpoint_ is None
    assert "is for 8-d toy embeddings but these have 16 dimensions" in model.notes_[0]


def test_a_head_of_the_other_learner_is_refused(tmp_path):
    features, labels = distorted_classes()
    out = tmp_path / "siamese-toy.safetensors"
    meta_train(features, labels, small("siamese", episodes=2), backbone="toy", out=out)
    with pytest.raises(ValueError, match="not a relation checkpoint"):
        load(out, "relation")


def test_bad_settings_are_refused():
    with pytest.raises(ValueError, match="use one of maml, relation, siamese"):
        MetaTrainingConfig(learner="protonet")
    with pytest.raises(ValueError, match="ways"):
        MetaTrainingConfig(learner="relation", ways=1)
    with pytest.raises(ValueError, match="relation has no setting inner_steps"):
        MetaTrainingConfig(learner="relation").with_settings(inner_steps=3)


def test_comparison_scores_three_learners_on_the_same_episodes(tmp_path):
    features, labels = distorted_classes(n_classes=8)
    train = np.isin(labels, [f"class_{i}" for i in range(5)])
    out = tmp_path / "relation-toy.safetensors"
    result = meta_train(features[train], labels[train], small("relation"), backbone="t", out=out)
    results = score_on_episodes(
        trainer_for("relation").baselines(result.checkpoint),
        features[~train],
        labels[~train],
        ways=5,
        shots=(1, 5),
        queries=15,
        n_episodes=5,
    )
    assert [(r.learner, r.shots) for r in results] == [
        ("relation (meta-trained)", 1),
        ("relation (untrained)", 1),
        ("protonet", 1),
        ("relation (meta-trained)", 5),
        ("relation (untrained)", 5),
        ("protonet", 5),
    ]
    assert all(r.ways == 3 and 0 <= r.accuracy <= 1 for r in results)  # only 3 held-out classes


# The shipped heads, on real embeddings


@pytest.mark.parametrize("learner", LEARNERS)
def test_shipped_head_was_trained_on_base_data_only(learner):
    head = load(default_path(learner, "tf_efficientnet_lite0"), learner)
    assert head.embedding_dim == 1280
    record = json.loads(head.metadata["meta_training"])
    # Base sets only: never the photos or the held-out clip art they are scored on.
    assert set(record["datasets"]) <= {"fashion-mnist-train", "digits", "openclipart-base"}
    assert not set(record["held_out"]) & set(record["classes"])


def test_same_class_pairs_score_higher_than_different_class_pairs(tux_embeddings):
    x, y = tux_embeddings.features, tux_embeddings.labels
    a, b = np.triu_indices(len(y), k=1)
    same = y[a] == y[b]
    model = create_learner("siamese")
    assert model.checkpoint is not None  # the shipped head, not the fall-back
    probability = model.same_class_probability(x[a], x[b])
    assert probability.shape == (len(a),) and ((probability >= 0) & (probability <= 1)).all()
    # measured: 0.24 against 0.10 on average, AUC 0.82 (trained on greyscale base classes only)
    assert probability[same].mean() > probability[~same].mean() + 0.1
    assert auc(probability, same) > 0.75


def test_verification_broadcasts_one_embedding_and_refuses_mismatches(tux_embeddings):
    x = tux_embeddings.features
    model = create_learner("siamese")
    one_to_many = model.same_class_probability(x[0], x[:5])
    np.testing.assert_allclose(one_to_many, model.same_class_probability(x[[0] * 5], x[:5]))
    assert one_to_many[0] == pytest.approx(one_to_many.max())  # itself is the most alike
    with pytest.raises(ValueError, match="same size"):
        model.same_class_probability(x[:2], x[:2, :16])
    with pytest.raises(ValueError, match="as many of each"):
        model.same_class_probability(x[:2], x[:3])


@pytest.fixture(scope="module")
def digits_cache(tmp_path_factory):
    return tmp_path_factory.mktemp("digits") / "embeddings.sqlite"


@pytest.mark.slow
@pytest.mark.parametrize("learner", LEARNERS)
def test_meta_train_command_end_to_end(learner, backbone, digits_cache, tmp_path, capsys):
    dataset = load_dataset("digits", per_class=20)
    cache = EmbeddingCache(digits_cache)
    try:
        Embedder(backbone, cache=cache).embed(dataset.sources)  # once for both learners
    finally:
        cache.close()
    out = tmp_path / f"{learner}-test.safetensors"
    code = main(
        [
            "meta-train",
            "--dataset", "digits",
            "--learner", learner,
            "--per-class", "20",
            "--episodes", "20",
            "--eval-episodes", "10",
            "--out", str(out),
            "--cache", str(digits_cache),
        ]
    )  # fmt: skip
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert "Meta-trained on 20 tasks" in captured.err
    rows = [row for row in captured.out.splitlines() if "held-out classes" in row]
    assert len(rows) == 6 and sum(f"{learner} (meta-trained)" in row for row in rows) == 2
    assert load(out, learner).embedding_dim == 1280
