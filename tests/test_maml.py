"""MAML adapts a prototype-initialised head by gradient steps, from a checkpoint if there is one."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from toy_data import gaussian_blobs

from fsl_app.backbones import pretrained_dir
from fsl_app.learners import MAML, ProtoNet, create_learner
from fsl_app.learners.maml import (
    DEFAULT_TEMPERATURE,
    init_adapter,
    initialisation_parts,
    initialisation_tensors,
    uniform_step_sizes,
)
from fsl_app.pretrained import Checkpoint, default_path, load, save


def blobs(n_per_class=5, n_classes=3, dim=16, seed=0, spread=1.0):
    return gaussian_blobs(n_per_class, n_classes, dim, seed, spread, centre_scale=2.0)


def a_checkpoint(dim=16, hidden=8, backbone="toy_backbone", seed=1) -> Checkpoint:
    """A made-up initialisation: a non-zero W2 so the adapter is not the identity."""
    adapter = init_adapter(dim, hidden, seed)
    adapter["w2"] = torch.randn(dim, hidden, generator=torch.Generator().manual_seed(seed)) / 4
    return Checkpoint(
        "maml",
        initialisation_tensors(adapter, uniform_step_sizes(0.05), torch.tensor(math.log(0.3))),
        {
            "backbone": backbone,
            "backbone_id": f"{backbone}@0123",
            "embedding_dim": str(dim),
            "hidden": str(hidden),
            "inner_steps": "3",
            "inner_lr": "0.05",
            "config": json.dumps({"temperature": 0.2}),
            "meta_training": json.dumps({"datasets": ["made-up"]}),
        },
    )


@pytest.fixture
def pretrained(tmp_path, monkeypatch):
    """An empty pretrained/ folder for the learner factory to look in."""
    monkeypatch.setenv("FSL_APP_PRETRAINED", str(tmp_path))
    return tmp_path


def test_adaptation_moves_the_head_towards_the_support():
    """The inner loop changes the prototype-initialised head, and the adapted head fits the
    support better than the initialisation does: higher support accuracy, lower loss."""
    # Strongly overlapping classes: the prototypes misclassify some of the support (measured:
    # 21 of 24 right before adapting, all 24 after).
    support, labels = blobs(n_per_class=8, spread=6.0)
    start = MAML(inner_steps=0).fit(support, labels)
    adapted = create_learner("maml", checkpoint=None, inner_steps=10, inner_lr=0.3)
    adapted.fit(support, labels)
    assert isinstance(adapted, MAML)
    assert not torch.allclose(adapted.head_["weight"], start.head_["weight"])
    assert not torch.allclose(adapted.head_["w2"], start.head_["w2"])
    accuracy_before = (start.predict(support) == labels).mean()
    accuracy_after = (adapted.predict(support) == labels).mean()
    assert accuracy_after > accuracy_before
    assert adapted.support_losses_[-1] < start.support_losses_[0]


def test_inner_loop_lowers_the_support_loss():
    support, labels = blobs(spread=3.0)  # overlapping classes: the prototypes misfit the support
    model = MAML(checkpoint=None, inner_steps=10, inner_lr=0.3).fit(support, labels)
    assert len(model.support_losses_) == 11
    assert model.support_losses_[-1] < 0.5 * model.support_losses_[0]
    assert all(np.diff(model.support_losses_) < 0)


def test_without_inner_steps_it_is_a_prototype_classifier():
    """Proto-MAML's head before adaptation: Euclidean ProtoNet on centred, unit-length features."""
    support, labels = blobs()
    query, _ = blobs(n_per_class=4, seed=1)
    maml = MAML(checkpoint=None, inner_steps=0).fit(support, labels)
    protonet = ProtoNet(metric="euclidean", temperature=DEFAULT_TEMPERATURE, normalize="cl2")
    protonet.fit(support, labels)
    np.testing.assert_allclose(
        maml.predict_proba(query), protonet.predict_proba(query), rtol=1e-4, atol=1e-6
    )


def test_fit_is_deterministic():
    support, labels = blobs()
    query, _ = blobs(n_per_class=4, seed=1)
    first = MAML(checkpoint=None).fit(support, labels).decision_function(query)
    second = MAML(checkpoint=None).fit(support, labels).decision_function(query)
    np.testing.assert_array_equal(first, second)


def test_without_a_checkpoint_it_falls_back_and_says_so(pretrained):
    support, labels = blobs()
    model = create_learner("maml", backbone="toy_backbone").fit(support, labels)
    assert model.checkpoint_ is None
    assert "class prototypes" in model.notes_[0] and "no meta-trained checkpoint" in model.notes_[0]
    assert str(default_path("maml", "toy_backbone")) in model.notes_[0]


def test_auto_finds_the_checkpoint_of_its_backbone(pretrained):
    save(a_checkpoint(), default_path("maml", "toy_backbone"))
    support, labels = blobs()
    query, _ = blobs(n_per_class=4, seed=1)
    model = create_learner("maml", backbone="toy_backbone").fit(support, labels)
    assert model.checkpoint_.path == pretrained / "maml-toy_backbone.safetensors"
    assert "made-up" in model.notes_[0]
    assert model.inner_steps_ == 3 and model.temperature_ == pytest.approx(0.3, rel=1e-3)
    plain = MAML(checkpoint=None, inner_steps=3, inner_lr=0.05, temperature=0.3)
    assert not np.allclose(
        model.predict_proba(query), plain.fit(support, labels).predict_proba(query), atol=1e-3
    )


def test_checkpoint_round_trip_keeps_tensors_and_metadata(tmp_path):
    checkpoint = a_checkpoint()
    loaded = load(save(checkpoint, tmp_path / "init.safetensors").path, "maml")
    assert loaded.backbone == "toy_backbone" and loaded.embedding_dim == 16
    assert loaded.metadata["format"] == "fsl_app.maml" and loaded.metadata["format_version"] == "1"
    adapter, _, _ = initialisation_parts(loaded.tensors)
    for name, tensor in initialisation_parts(checkpoint.tensors)[0].items():
        torch.testing.assert_close(adapter[name], tensor, rtol=1e-3, atol=1e-3)
    assert adapter["w1"].dtype == torch.float32
    assert not list(tmp_path.glob("*.tmp"))


def test_a_checkpoint_for_another_embedding_size_is_skipped_with_a_note(pretrained):
    save(a_checkpoint(dim=32), default_path("maml", "toy_backbone"))
    support, labels = blobs(dim=16)
    model = create_learner("maml", backbone="toy_backbone").fit(support, labels)
    assert model.checkpoint_ is None and "class prototypes" in model.notes_[0]
    assert "32-d toy_backbone embeddings but these have 16 dimensions" in model.notes_[0]


def test_a_file_that_is_not_a_maml_checkpoint_is_refused(tmp_path):
    from safetensors.torch import save_file

    save_file({"weight": torch.zeros(2)}, tmp_path / "other.safetensors")
    with pytest.raises(ValueError, match="not a maml checkpoint"):
        load(tmp_path / "other.safetensors", "maml")
    with pytest.raises(FileNotFoundError, match="no maml checkpoint"):
        load(tmp_path / "missing.safetensors", "maml")


def test_works_for_any_number_of_classes():
    support, labels = blobs(n_per_class=2, n_classes=7)
    query, truth = blobs(n_per_class=3, n_classes=7, seed=0, spread=0.5)
    model = MAML(checkpoint=None).fit(support, labels)
    assert model.head_["weight"].shape == (7, 16)
    assert (model.predict(query) == truth).mean() > 0.8


def test_the_default_maml_starts_from_the_prototypes_and_says_so():
    # Every meta-learned head measured worse than the prototype start on held-out clip art and
    # on Tux Paint photos (pretrained/maml-tf_efficientnet_lite0.md), so none is shipped.
    assert not default_path("maml", "tf_efficientnet_lite0").is_file()
    assert (pretrained_dir() / "maml-tf_efficientnet_lite0.md").is_file()  # the card says why
    support, labels = blobs(dim=1280)
    model = create_learner("maml").fit(support, labels)
    assert model.checkpoint_ is None
    assert any(note.startswith("MAML started from the class prototypes") for note in model.notes_)
