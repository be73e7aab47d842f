"""Generated examples by distribution calibration: base statistics, calibrated sampling, the
learner with and without the shipped statistics."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from toy_data import gaussian_blobs

from fsl_app.learners import GeneratedExamples, ProtoNet, create_learner
from fsl_app.learners.generated import base_statistics, calibrated_samples, tukey
from fsl_app.pretrained import find, load, save
from fsl_app.training.generated import statistics_checkpoint


def base_set(n_classes=6, per_class=40, dim=8, seed=0):
    """Non-negative toy base classes, each with its own correlated spread."""
    rng = np.random.default_rng(seed)
    rows = [
        rng.uniform(1, 3, dim)
        + 0.3 * rng.normal(size=(per_class, dim)) @ rng.normal(size=(dim, dim))
        for _ in range(n_classes)
    ]
    features = np.abs(np.concatenate(rows)).astype(np.float32)
    return features, np.repeat([f"base_{i}" for i in range(n_classes)], per_class)


def test_statistics_keep_each_covariance_low_rank_plus_diagonal():
    features, labels = base_set()
    x = torch.as_tensor(features)
    stats = base_statistics(x, labels.tolist(), rank=3)
    rows = x[torch.as_tensor(labels == "base_0")].double()
    covariance = torch.cov(rows.T)
    factor, residual = stats["factors"][0].double(), stats["residual"][0].double()
    torch.testing.assert_close(stats["means"][0].double(), rows.mean(0), rtol=1e-5, atol=1e-6)
    # the diagonal is exact; with a full rank the whole covariance is
    torch.testing.assert_close(
        (factor @ factor.T).diagonal() + residual, covariance.diagonal(), rtol=1e-4, atol=1e-5
    )
    full = base_statistics(x, labels.tolist(), rank=8)["factors"][0].double()
    torch.testing.assert_close(full @ full.T, covariance, rtol=1e-4, atol=1e-5)


def test_samples_follow_the_calibrated_gaussian():
    """Mean (x + the neighbours' means) / (k + 1); covariance the neighbours' mean + alpha I."""
    features, labels = base_set()
    stats = base_statistics(torch.as_tensor(features), labels.tolist(), rank=8)
    x = stats["means"][2] + 0.05  # nearest base classes: 2, then its closest other
    nearest = torch.cdist(x[None], stats["means"])[0].topk(2, largest=False).indices
    samples, targets = calibrated_samples(
        stats,
        x[None],
        torch.tensor([0]),
        neighbours=2,
        alpha=0.1,
        per_class=20000,
        generator=torch.Generator().manual_seed(0),
    )
    assert samples.shape == (20000, 8) and (targets == 0).all()
    expected_mean = (x + stats["means"][nearest].sum(0)) / 3
    factors, residual = stats["factors"][nearest], stats["residual"][nearest]
    covariance = (factors @ factors.transpose(1, 2) + torch.diag_embed(residual)).mean(0)
    expected_cov = covariance + 0.1 * torch.eye(8)
    torch.testing.assert_close(samples.mean(0), expected_mean, atol=0.05, rtol=0)
    torch.testing.assert_close(torch.cov(samples.T), expected_cov, atol=0.08, rtol=0.05)


def test_without_statistics_nothing_is_generated_and_it_says_so():
    support, labels = gaussian_blobs()
    query, _ = gaussian_blobs(n_per_class=4, seed=1)
    model = GeneratedExamples(checkpoint=None).fit(support, labels)
    assert model.generated_ == 0 and "No examples were generated" in model.notes_[0]
    np.testing.assert_allclose(
        model.predict_proba(query), ProtoNet().fit(support, labels).predict_proba(query), rtol=1e-6
    )


@pytest.mark.parametrize("head", ["protonet", "linear"])
def test_statistics_add_examples_and_the_same_examples_give_the_same_model(head, tmp_path):
    features, labels = base_set()
    written = save(
        statistics_checkpoint(features, labels, backbone="toy", rank=4), tmp_path / "g.safetensors"
    )
    checkpoint = load(written.path, "generated")
    support, support_labels = features[[0, 50, 90, 130]] + 0.1, ["a", "b", "c", "d"]
    query = features[1::7]
    model = GeneratedExamples(checkpoint=checkpoint, head=head).fit(support, support_labels)
    assert model.generated_ == 4 * 100 and "base-class statistics" in model.notes_[0]
    again = GeneratedExamples(checkpoint=checkpoint, head=head).fit(support, support_labels)
    np.testing.assert_array_equal(model.predict_proba(query), again.predict_proba(query))
    alone = GeneratedExamples(checkpoint=None, head=head).fit(support, support_labels)
    assert not np.allclose(model.predict_proba(query), alone.predict_proba(query))


def test_tukey_power_is_the_identity_at_one_and_a_square_root_at_a_half():
    x = torch.tensor([[0.0, 4.0, -1.0]])
    torch.testing.assert_close(tukey(x, 1.0), x)
    torch.testing.assert_close(tukey(x, 0.5), torch.tensor([[0.0, 2.0, 0.0]]))


def test_bad_settings_are_refused():
    support, labels = gaussian_blobs()
    with pytest.raises(ValueError, match="Unknown head"):
        GeneratedExamples(checkpoint=None, head="svm").fit(support, labels)
    with pytest.raises(ValueError, match="neighbours"):
        GeneratedExamples(checkpoint=None, neighbours=0).fit(support, labels)


def test_shipped_statistics_are_small_and_classify_real_photos(tux_embeddings):
    checkpoint = find("generated", "tf_efficientnet_lite0").checkpoint
    assert checkpoint is not None and checkpoint.path.stat().st_size < 5_000_000
    assert json.loads(checkpoint.metadata["meta_training"])["datasets"] == ["openclipart-base"]
    assert len(checkpoint.tensors["means"]) == 78
    features, names = tux_embeddings.features, tux_embeddings.labels
    rng = np.random.default_rng(0)
    support = np.concatenate(
        [rng.permutation(np.flatnonzero(names == c))[:5] for c in np.unique(names)]
    )
    rest = np.setdiff1d(np.arange(len(names)), support)
    model = create_learner("generated").fit(features[support], names[support])
    assert model.generated_ > 0
    assert (model.predict(features[rest]) == names[rest]).mean() > 0.6
