"""Meta-training learns an initialisation that the MAML learner loads; backbone fine-tuning."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from toy_data import distorted_classes

from fsl_app.cli import main
from fsl_app.datasets import load_dataset
from fsl_app.embeddings import Embedder, EmbeddingCache
from fsl_app.images import load_image
from fsl_app.learners import MAML
from fsl_app.learners.maml import initialisation_parts
from fsl_app.pretrained import load
from fsl_app.training.config import MetaTrainingConfig
from fsl_app.training.finetune import (
    fine_tune_backbone,
    last_stage_parameters,
)
from fsl_app.training.loop import (
    meta_train,
    score_on_episodes,
    split_classes,
    trainer_for,
    training_state_path,
    training_tasks,
)
from fsl_app.training.maml import REPTILE_KEYS, MAMLOptions, MAMLTrainer, reptile_direction

SMALL = MetaTrainingConfig(
    ways=3,
    shots=(1, 3),
    queries=4,
    episodes=8,
    meta_batch=2,
    options=MAMLOptions(inner_steps=2, hidden=8),
)


def meta_gradient(config: MetaTrainingConfig) -> dict[str, torch.Tensor]:
    features, labels = distorted_classes()
    meta = MAMLTrainer().initial_parameters(features.shape[1], config)
    task = training_tasks(labels, config)[0]
    loss, _ = MAMLTrainer().task_loss(meta, torch.as_tensor(features), labels, task, config)
    loss.backward()
    return {name: value.grad for name, value in meta.items() if value.requires_grad}


def test_first_and_second_order_meta_gradients_differ():
    second = meta_gradient(SMALL)
    first = meta_gradient(SMALL.with_settings(algorithm="fomaml"))
    assert second.keys() == first.keys() >= {"w1", "w2", "log_temperature", "step_size.w2"}
    for grads in (first, second):
        assert all(torch.isfinite(g).all() for g in grads.values())
        assert grads["w2"].abs().sum() > 0
    assert not torch.allclose(first["w1"], second["w1"])


def test_reptile_moves_the_initialisation_toward_the_adapted_weights():
    features, labels = distorted_classes()
    config = SMALL.with_settings(algorithm="reptile", episodes=1, meta_batch=1)
    start = MAMLTrainer().initial_parameters(features.shape[1], config)
    task = training_tasks(labels, config)[0]
    toward, _, _ = reptile_direction(start, torch.as_tensor(features), labels, task, config)
    assert all(toward[k].abs().sum() > 0 for k in REPTILE_KEYS)

    moved = meta_train(features, labels, config, backbone="toy").checkpoint
    for key in REPTILE_KEYS:
        step = moved.tensors[key] - start[key].detach()
        # Adam's first step is lr * sign(gradient): every element moves toward the adapted
        # weights, none away.
        assert (step * toward[key] >= 0).all() and (step * toward[key] > 0).any()
    # What the inner loop does not adapt stays as initialised.
    torch.testing.assert_close(moved.tensors["w1"], start["w1"].detach())
    assert moved.tensors["log_temperature"].item() == pytest.approx(start["log_temperature"].item())


def test_three_algorithms_meta_train_checkpoints_that_change_predictions(tmp_path):
    features, labels = distorted_classes()
    support, query, support_labels = features[::6], features[1::6], labels[::6]
    plain = MAML(
        checkpoint=None, inner_steps=SMALL.options.inner_steps, inner_lr=SMALL.options.inner_lr
    )
    baseline = plain.fit(support, support_labels).predict_proba(query)
    for algorithm in ("maml", "fomaml", "reptile"):
        config = SMALL.with_settings(algorithm=algorithm, meta_sgd=False)
        out = tmp_path / f"maml-{algorithm}.safetensors"
        meta_train(features, labels, config, backbone="toy", out=out)
        assert json.loads(load(out, "maml").metadata["config"])["algorithm"] == algorithm
        learned = MAML(checkpoint=load(out, "maml")).fit(support, support_labels)
        assert not np.allclose(learned.predict_proba(query), baseline)


def test_meta_sgd_learns_the_step_sizes(tmp_path):
    features, labels = distorted_classes()
    result = meta_train(features, labels, SMALL, backbone="toy")
    step_sizes = initialisation_parts(result.checkpoint.tensors)[1]
    assert step_sizes["w2"].shape == (16, 8)  # one step size per parameter
    assert not torch.allclose(step_sizes["w2"], torch.full((16, 8), SMALL.options.inner_lr))
    assert step_sizes["weight"].item() != pytest.approx(SMALL.options.inner_lr, abs=1e-6)

    fixed = SMALL.with_settings(meta_sgd=False)
    fixed_sizes = meta_train(features, labels, fixed, backbone="toy").checkpoint
    fixed_sizes = initialisation_parts(fixed_sizes.tensors)[1]
    assert all(s.item() == pytest.approx(SMALL.options.inner_lr) for s in fixed_sizes.values())


def test_checkpoint_loads_and_changes_predictions(tmp_path):
    features, labels = distorted_classes()
    out = tmp_path / "maml-toy.safetensors"
    result = meta_train(features, labels, SMALL, backbone="toy", metadata={"datasets": ["blobs"]})
    assert result.checkpoint.path is None and not out.exists()
    result = meta_train(features, labels, SMALL, backbone="toy", out=out, backbone_id="toy@1")
    assert result.checkpoint.path == out and result.episodes == 8
    loaded = load(out, "maml")
    assert loaded.metadata["backbone_id"] == "toy@1"
    assert json.loads(loaded.metadata["config"])["episodes"] == 8

    support, query = features[::6], features[1::6]
    support_labels = labels[::6]
    meta_learned = MAML(checkpoint=load(out, "maml")).fit(support, support_labels)
    plain = MAML(
        checkpoint=None, inner_steps=SMALL.options.inner_steps, inner_lr=SMALL.options.inner_lr
    )
    plain.fit(support, support_labels)
    assert meta_learned.inner_steps_ == SMALL.options.inner_steps
    assert not np.allclose(meta_learned.predict_proba(query), plain.predict_proba(query))


def test_resume_continues_from_the_saved_episode(tmp_path):
    features, labels = distorted_classes()
    config = SMALL.with_settings(checkpoint_every=4)
    out = tmp_path / "maml-toy.safetensors"

    def interrupt_after_six(done, total, running):
        if done == 6:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        meta_train(features, labels, config, backbone="toy", out=out, progress=interrupt_after_six)
    assert training_state_path(out).is_file() and not out.exists()
    seen = []
    resumed = meta_train(
        features,
        labels,
        config,
        backbone="toy",
        out=out,
        resume=True,
        progress=lambda done, total, running: seen.append(done),
    )
    assert resumed.resumed_from == 4 and resumed.episodes == 8 and seen == [6, 8]

    # The interrupted and resumed run ends where an uninterrupted one does.
    straight = meta_train(features, labels, config, backbone="toy", out=tmp_path / "b.safetensors")
    for name, tensor in straight.checkpoint.tensors.items():
        torch.testing.assert_close(resumed.checkpoint.tensors[name], tensor)


def test_resume_refuses_other_settings_or_a_missing_state(tmp_path):
    features, labels = distorted_classes()
    out = tmp_path / "maml-toy.safetensors"
    with pytest.raises(FileNotFoundError, match="Nothing to resume"):
        meta_train(features, labels, SMALL, backbone="toy", out=out, resume=True)
    meta_train(features, labels, SMALL, backbone="toy", out=out)
    longer = SMALL.with_settings(episodes=10)
    assert meta_train(features, labels, longer, backbone="toy", out=out, resume=True).episodes == 10
    other = SMALL.with_settings(episodes=12, inner_lr=0.5)
    with pytest.raises(ValueError, match="inner_lr changed"):
        meta_train(features, labels, other, backbone="toy", out=out, resume=True)


def test_held_out_classes_are_drawn_per_dataset():
    labels = [f"{d}:{c}" for d in ("a", "b") for c in range(5) for _ in range(2)]
    domains = [label.split(":")[0] for label in labels]
    held_out = split_classes(labels, domains, holdout=2, seed=0)
    assert len(held_out) == 4 and {c.split(":")[0] for c in held_out} == {"a", "b"}
    assert split_classes(labels, domains, holdout=2, seed=0) == held_out
    with pytest.raises(ValueError, match="hold out fewer"):
        split_classes(labels, domains, holdout=4)


def test_comparison_scores_three_learners_on_the_same_episodes(tmp_path):
    features, labels = distorted_classes(n_classes=8)
    train = np.isin(labels, [f"class_{i}" for i in range(5)])
    out = tmp_path / "maml-toy.safetensors"
    result = meta_train(features[train], labels[train], SMALL, backbone="toy", out=out)
    results = score_on_episodes(
        trainer_for("maml").baselines(result.checkpoint),
        features[~train],
        labels[~train],
        ways=5,
        shots=(1, 5),
        queries=15,
        n_episodes=5,
    )
    assert [(r.learner, r.shots) for r in results] == [
        ("maml (meta-learned init)", 1),
        ("maml (prototype init)", 1),
        ("protonet", 1),
        ("maml (meta-learned init)", 5),
        ("maml (prototype init)", 5),
        ("protonet", 5),
    ]
    assert all(r.ways == 3 and 0 <= r.accuracy <= 1 for r in results)  # only 3 held-out classes


# Real embeddings: scikit-learn's digits through the default backbone.


@pytest.fixture(scope="module")
def digits_cache(tmp_path_factory):
    return tmp_path_factory.mktemp("digits") / "embeddings.sqlite"


@pytest.fixture(scope="module")
def digits(backbone, digits_cache):
    dataset = load_dataset("digits", per_class=20)
    cache = EmbeddingCache(digits_cache)
    try:
        embedded = Embedder(backbone, cache=cache).embed(dataset.sources)
    finally:
        cache.close()
    return embedded.embeddings, np.asarray(dataset.labels)[embedded.indices]


@pytest.mark.slow
def test_meta_training_on_real_digit_embeddings(digits, tmp_path):
    features, labels = digits
    train = ~np.isin(labels, ["7", "8", "9"])
    config = MetaTrainingConfig(
        episodes=12, meta_batch=4, queries=5, options=MAMLOptions(inner_steps=3)
    )
    out = tmp_path / "maml-digits.safetensors"
    result = meta_train(
        features[train], labels[train], config, backbone="tf_efficientnet_lite0", out=out
    )
    assert load(out, "maml").embedding_dim == 1280
    support = np.flatnonzero(~train)[::10]
    query = np.flatnonzero(~train)[1::10]
    meta_learned = MAML(checkpoint=load(out, "maml")).fit(features[support], labels[support])
    plain = MAML(checkpoint=None).fit(features[support], labels[support])
    assert result.running["accuracy"] > 0.5
    assert not np.allclose(
        meta_learned.predict_proba(features[query]), plain.predict_proba(features[query])
    )


@pytest.mark.slow
def test_meta_train_command_end_to_end(digits, digits_cache, tmp_path, capsys):
    out = tmp_path / "maml-test.safetensors"
    code = main(
        [
            "meta-train",
            "--dataset", "digits",
            "--per-class", "20",
            "--episodes", "20",
            "--inner-steps", "3",
            "--eval-episodes", "10",
            "--out", str(out),
            "--cache", str(digits_cache),
        ]
    )  # fmt: skip
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert "Meta-trained on 20 tasks" in captured.err
    table = captured.out.splitlines()
    assert table[0].split()[:4] == ["evaluated", "on", "ways", "shots"]
    assert sum("held-out classes" in row for row in table) == 6  # 3 learners x 2 shot counts
    checkpoint = load(out, "maml")
    assert json.loads(checkpoint.metadata["meta_training"])["held_out"] == sorted(
        json.loads(checkpoint.metadata["meta_training"])["held_out"]
    )
    assert training_state_path(out).is_file()


def test_meta_train_command_refuses_unusable_input(tmp_path, capsys):
    (tmp_path / "only").mkdir()
    code = main(["meta-train", "--data", str(tmp_path), "--no-cache", "--out", str(tmp_path / "x")])
    assert code == 2 and "error:" in capsys.readouterr().err


# Fine-tuning the backbone's last stage on support images.


def support_images(photos, per_class=2):
    names = ["bird", "flower"]
    images = [load_image(path).image for name in names for path in photos[name][:per_class]]
    return images, [name for name in names for _ in range(per_class)]


@pytest.mark.slow
def test_fine_tuning_changes_only_the_last_stage(backbone, photos):
    images, labels = support_images(photos, per_class=1)
    before = {k: v.clone() for k, v in backbone.model.state_dict().items()}
    tuned = fine_tune_backbone(backbone, images, labels, steps=1, device="cpu", force=True)

    assert tuned.id != backbone.id and tuned.name == backbone.name
    last_stage = set(last_stage_parameters(tuned.model))
    assert "conv_head.weight" in last_stage and "blocks.0.0.conv_dw.weight" not in last_stage
    after = tuned.model.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed and changed <= last_stage
    assert any(k.startswith("blocks.6.") for k in changed)
    assert all(torch.equal(v, backbone.model.state_dict()[k]) for k, v in before.items())
    embeddings = tuned.embed(torch.stack([tuned.transform(images[0])]))
    assert embeddings.shape == (1, 1280) and not tuned.model.training
