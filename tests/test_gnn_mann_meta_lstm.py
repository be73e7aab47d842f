"""The graph network, the memory-augmented network and the Meta-LSTM optimiser: what each paper
computes, their untrained fall-backs, meta-training, and the shipped checkpoints."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from toy_data import distorted_classes, gaussian_blobs

from fsl_app.learners import GraphNet, MemoryNet, MetaLSTM, ProtoNet, create_learner
from fsl_app.learners.mann import init_mann, mann_logits
from fsl_app.learners.meta_lstm import head_logits, init_meta_lstm, preprocess
from fsl_app.pretrained import default_path, find, load
from fsl_app.training.config import MetaTrainingConfig
from fsl_app.training.loop import meta_train

LEARNERS = ("gnn", "mann", "meta-lstm")
CLASSES = {"gnn": GraphNet, "mann": MemoryNet, "meta-lstm": MetaLSTM}


def small(learner: str, **changes) -> MetaTrainingConfig:
    settings = dict(ways=3, shots=(1, 3), queries=4, episodes=24, meta_batch=2, outer_lr=1e-2)
    settings["hidden"] = 8
    return MetaTrainingConfig(learner=learner).with_settings(**{**settings, **changes})


def task(seed=0):
    support, labels = gaussian_blobs(spread=1.0, seed=seed, centre_seed=7)
    query, truth = gaussian_blobs(n_per_class=4, seed=seed + 1, spread=1.5, centre_seed=7)
    return support, labels, query, truth


@pytest.fixture
def pretrained(tmp_path, monkeypatch):
    """An empty pretrained/ folder for the factory to look in."""
    folder = tmp_path / "pretrained"
    folder.mkdir()
    monkeypatch.setenv("FSL_APP_PRETRAINED", str(folder))
    return folder


# Without a checkpoint


@pytest.mark.parametrize("learner", ["gnn", "mann"])
def test_untrained_graph_and_memory_score_like_centred_prototypes(learner):
    """Untrained, the graph adds nothing to the prototype cosine (alpha = beta = 0), and the
    memory with every example merged into its class's slot is a prototype of unit keys."""
    support, labels, query, _ = task()
    expected = ProtoNet(normalize="cl2").fit(support, labels).predict_proba(query)
    if learner == "gnn":
        model = GraphNet(checkpoint=None).fit(support, labels, unlabeled=query)
        proba = model.predict_proba(query)
    else:
        params = init_mann()
        params["gate_logit"] = torch.tensor(50.0)  # always merge: one slot per class
        targets = torch.as_tensor(np.unique(labels, return_inverse=True)[1])
        logits = mann_logits(params, torch.as_tensor(support), targets, torch.as_tensor(query))
        proba = logits.softmax(dim=1).numpy()
    np.testing.assert_allclose(proba, expected, rtol=1e-4, atol=1e-5)


def test_memory_gives_each_example_a_least_used_slot_of_its_class():
    support, labels, _, _ = task()
    model = MemoryNet(checkpoint=None).fit(support, labels)
    # as many slots as examples: least-recently-used access always finds a fresh one
    assert model.slot_class_.tolist() == np.repeat([0, 1, 2], 5).tolist()


def test_meta_lstm_without_steps_is_the_prototype_head():
    support, labels, query, _ = task()
    expected = ProtoNet(normalize="cl2").fit(support, labels).predict_proba(query)
    model = MetaLSTM(checkpoint=None, steps=0).fit(support, labels)
    np.testing.assert_allclose(model.predict_proba(query), expected, rtol=1e-4, atol=1e-5)


def test_untrained_meta_lstm_takes_gradient_descent_steps():
    """With zero gate weights, theta <- sigmoid(b_F) theta - sigmoid(b_I) grad: one step by hand."""
    support, labels, _, _ = task()
    model = MetaLSTM(checkpoint=None, steps=1).fit(support, labels)
    x = F.normalize(torch.as_tensor(support) - torch.as_tensor(support).mean(0), dim=1)
    targets = torch.as_tensor(np.unique(labels, return_inverse=True)[1])
    weight = F.normalize(torch.stack([x[targets == c].mean(0) for c in range(3)]), dim=1)
    weight.requires_grad_()
    bias = torch.zeros(3, requires_grad=True)
    F.cross_entropy(head_logits(weight, bias, x), targets).backward()
    params = init_meta_lstm()
    step, shrink = params["b_i"].sigmoid(), params["b_f"].sigmoid()
    torch.testing.assert_close(model.weight_, shrink * weight.detach() - step * weight.grad)
    torch.testing.assert_close(model.bias_, -step * bias.grad)


def test_gradient_preprocessing_follows_the_paper():
    values = torch.tensor([1.0, -0.01, 1e-6])
    expected = torch.tensor(
        [[0.0, 1.0], [np.log(0.01) / 10, -1.0], [-1.0, 1e-6 * np.exp(10)]], dtype=torch.float32
    )
    torch.testing.assert_close(preprocess(values), expected)


def test_a_query_gets_the_same_graph_answer_alone_or_in_a_batch():
    support, labels, query, _ = task()
    model = GraphNet(checkpoint=None).fit(support, labels, unlabeled=query)
    np.testing.assert_allclose(
        model.predict_proba(query[:1]), model.predict_proba(query)[:1], rtol=1e-5
    )


@pytest.mark.parametrize("learner", LEARNERS)
def test_without_a_shipped_file_it_falls_back_and_says_so(learner, pretrained):
    support, labels, _, _ = task()
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
    trained = create_learner(learner, checkpoint=loaded).fit(support, support_labels, query)
    untrained = create_learner(learner, checkpoint=None).fit(support, support_labels, query)
    assert trained.checkpoint_.path == out and "meta-trained for toy" in trained.notes_[0]
    assert not np.allclose(trained.predict_proba(query), untrained.predict_proba(query))


@pytest.mark.parametrize("learner", LEARNERS)
def test_training_lowers_the_loss(learner):
    features, labels = distorted_classes()
    losses = []
    meta_train(
        features,
        labels,
        small(learner, episodes=160, meta_batch=4),
        backbone="toy",
        progress=lambda done, total, running: losses.append(running["loss"]),
    )
    assert np.mean(losses[-5:]) < 0.9 * losses[0]


# The shipped checkpoints, on real photos no module was trained on


@pytest.mark.parametrize("learner", LEARNERS)
def test_shipped_checkpoint_classifies_real_photos(learner, tux_embeddings):
    checkpoint = find(learner, "tf_efficientnet_lite0").checkpoint
    assert checkpoint is not None, f"{default_path(learner, 'tf_efficientnet_lite0')} is missing"
    training = json.loads(checkpoint.metadata["meta_training"])
    assert training["datasets"] == ["openclipart-base"]
    features, names = tux_embeddings.features, tux_embeddings.labels
    rng = np.random.default_rng(0)
    support = np.concatenate(
        [rng.permutation(np.flatnonzero(names == c))[:5] for c in np.unique(names)]
    )
    rest = np.setdiff1d(np.arange(len(names)), support)
    model = CLASSES[learner](checkpoint=checkpoint).fit(
        features[support], names[support], unlabeled=features[rest]
    )
    assert "meta-trained for tf_efficientnet_lite0" in model.notes_[0]
    assert (model.predict(features[rest]) == names[rest]).mean() > 0.6
