"""Last-stage MAML: cached activations entering the last stage, adapting the stage, meta-learning
its initialisation on real clip art, and checkpoints that belong to one backbone."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fsl_app import pretrained
from fsl_app.datasets import OPENCLIPART_PNG, load_dataset
from fsl_app.embeddings import Embedder
from fsl_app.learners.maml import DEFAULT_STAGE_STEPS, LastStageMAML
from fsl_app.pretrained import Checkpoint, CheckpointError
from fsl_app.stage_cache import (
    ActivationCache,
    LastStage,
    StageEmbedder,
    embed_views,
    find_stage_initialisation,
)
from fsl_app.training.finetune import (
    FineTuningNeedsGPUError,
    estimate_seconds,
    last_stage_maml_backbone,
    refusal,
)


def support_set(photos, classes=("bird", "flower", "fruit"), shots=2):
    paths = [path for name in classes for path in photos[name][:shots]]
    return paths, [name for name in classes for _ in range(shots)]


def test_cached_activations_reproduce_the_pooled_embedding(backbone, photos, tmp_path):
    paths, _ = support_set(photos, shots=1)
    cache = ActivationCache(tmp_path / "activations.sqlite")
    StageEmbedder(backbone, cache=cache).embed(paths)
    again = StageEmbedder(backbone, cache=cache)
    embedded = again.embed(paths)  # read back from the float16 cache
    assert again.images_forwarded == 0
    activations = again.activations(embedded)
    assert activations.shape == (len(paths), 192, 7, 7)
    with torch.no_grad():
        pooled = again.stage.pooled(activations).numpy()
    full = Embedder(backbone).embed(paths).embeddings
    assert np.abs(pooled - full).max() < 2e-3 * np.abs(full).max()


def test_views_are_other_activations_of_the_same_pictures(backbone, photos):
    paths, _ = support_set(photos, shots=1)
    views = embed_views(backbone, paths, views=("original", "flip", "zoom"))
    original, flipped, zoomed = (views[v][1] for v in ("original", "flip", "zoom"))
    assert original.shape == flipped.shape == zoomed.shape
    assert not torch.allclose(original, flipped) and not torch.allclose(original, zoomed)


def test_adapting_the_last_stage_lowers_the_support_loss_and_changes_predictions(backbone, photos):
    paths, labels = support_set(photos)
    stage = LastStage(backbone)
    embedder = StageEmbedder(backbone)
    support = embedder.activations(embedder.embed(paths))
    targets = torch.as_tensor(np.unique(labels, return_inverse=True)[1])
    queries, _ = support_set(photos, shots=4)
    query = embedder.activations(embedder.embed(queries))

    # A soft temperature, so the support loss is far from zero and the steps have work to do.
    unadapted = LastStageMAML(stage, steps=0, temperature=1.0).fit(support, targets)
    adapted = LastStageMAML(stage, steps=3, temperature=1.0).fit(support, targets)

    losses = adapted.support_losses_
    assert len(losses) == 4 and losses[-1] < losses[0]
    assert adapted.support_losses_[0] == pytest.approx(unadapted.support_losses_[0])
    moved = [k for k, v in adapted.stage_.items() if not torch.equal(v, stage.parameters()[k])]
    assert "1.weight" in moved and "0.0.conv_pw.weight" in moved  # head conv and last block
    before, after = unadapted.predict_proba(query), adapted.predict_proba(query)
    assert after.shape == (len(queries), 3) and torch.allclose(
        after.sum(1), torch.ones(len(queries))
    )
    assert not torch.allclose(before, after, atol=1e-4)


def test_a_stage_checkpoint_for_another_backbone_is_refused_with_a_sentence(backbone, tmp_path):
    path = pretrained.save(
        Checkpoint(
            "maml-stage",
            {"stage.1.weight": torch.zeros(2, 2)},
            {
                "backbone": "tf_efficientnet_lite1",
                "backbone_id": "tf_efficientnet_lite1@0123",
                "embedding_dim": "1280",
            },
        ),
        tmp_path / "maml-stage-tf_efficientnet_lite1.safetensors",
    ).path
    with pytest.raises(CheckpointError, match=r"meta-learned for the image model .*lite1@0123"):
        find_stage_initialisation(backbone, path)


def test_the_shipped_stage_checkpoint_belongs_to_the_default_backbone(backbone):
    checkpoint = find_stage_initialisation(backbone)
    assert checkpoint is not None, "pretrained/maml-stage-tf_efficientnet_lite0 is missing"
    stage = LastStage(backbone).parameters()
    tensors = {k.removeprefix("stage."): v for k, v in checkpoint.tensors.items()}
    assert all(tensors[k].shape == v.shape for k, v in stage.items())


def test_fine_tuning_estimates_are_positive_and_refusals_say_what_to_do(backbone):
    seconds = estimate_seconds("last-stage-maml", backbone, 10, 20, "cpu")
    assert 0 < seconds < estimate_seconds("last-stage-maml", backbone, 1000, 20, "cpu")
    assert estimate_seconds("none", backbone, 10, 20, "cpu") == 0
    assert refusal("pmf", 10.0, "cpu") is None
    sentence = refusal("pmf", 3600.0, "cpu")
    assert "60 min" in sentence and "this CPU" in sentence and "fewer examples" in sentence


@pytest.mark.slow
def test_last_stage_maml_backbone_is_a_new_model_of_the_same_family(backbone, photos):
    paths, labels = support_set(photos, shots=1)
    tuned = last_stage_maml_backbone(backbone, paths, labels, device="cpu")
    assert tuned.id != backbone.id and tuned.name == backbone.name
    images = Embedder(backbone).embed(paths[:1]).embeddings
    assert Embedder(tuned).embed(paths[:1]).embeddings.shape == images.shape


@pytest.mark.skipif(not OPENCLIPART_PNG.is_dir(), reason="openclipart-png is not installed")
@pytest.mark.slow
def test_a_short_meta_training_on_clip_art_writes_a_checkpoint_that_loads(backbone, tmp_path):
    from fsl_app.training.config import MetaTrainingConfig
    from fsl_app.training.maml import MAMLOptions, meta_train_last_stage

    data = load_dataset("openclipart-base", per_class=2)
    keep = [i for i, label in enumerate(data.labels) if label in sorted(set(data.labels))[:3]]
    embedder = StageEmbedder(backbone)
    embedded = embedder.embed([data.sources[i] for i in keep])
    labels = np.asarray([data.labels[keep[i]] for i in embedded.indices])
    config = MetaTrainingConfig(
        ways=2, shots=(1,), queries=1, episodes=2, meta_batch=1,
        options=MAMLOptions(algorithm="fomaml", inner_steps=1),
    )  # fmt: skip
    out = tmp_path / "maml-stage-tf_efficientnet_lite0.safetensors"
    result = meta_train_last_stage(
        embedder.activations(embedded), labels, config, stage=LastStage(backbone), out=out
    )
    assert result.episodes == 2 and out.is_file()
    checkpoint = find_stage_initialisation(backbone, out)
    start = LastStage(backbone).parameters()
    assert any(
        not torch.allclose(checkpoint.tensors[f"stage.{k}"], v.half().float())
        for k, v in start.items()
    )
    activations = embedder.activations(embedded)
    fitted = LastStageMAML(LastStage(backbone), checkpoint).fit(
        activations[:2], torch.as_tensor([0, 1])
    )
    # Adapting uses its own number of steps (more than meta-training used, see DEFAULT_STAGE_STEPS).
    assert fitted.steps_ == DEFAULT_STAGE_STEPS
    assert fitted.predict_proba(activations).shape == (len(labels), 2)


def test_pmf_fine_tuning_is_refused_only_when_it_would_take_many_minutes(backbone, photos):
    from fsl_app.images import load_image

    paths, labels = support_set(photos, shots=1)
    images = [load_image(p).image for p in paths]
    with pytest.raises(FineTuningNeedsGPUError, match=r"would take about .*fewer examples"):
        from fsl_app.training.finetune import fine_tune_backbone

        fine_tune_backbone(backbone, images, labels, steps=100_000, device="cpu")


@pytest.mark.slow
def test_predict_with_last_stage_maml_fine_tuning_says_how_long_and_predicts(folders, capsys):
    import json

    from fsl_app.cli import main

    code = main(
        ["predict", "--examples", str(folders.support), "--images", str(folders.query),
         "--fine-tune", "last-stage-maml", "--format", "json", "--device", "cpu"]
    )  # fmt: skip
    captured = capsys.readouterr()
    assert code == 0
    assert "note: fine-tuning (last-stage-maml) on 15 examples takes about" in captured.err
    rows = json.loads(captured.out)
    right = sum(row["prediction"] == folders.true_class(row["path"]) for row in rows)
    assert len(rows) == 15 and right >= 12


def test_predict_refuses_fine_tuning_a_saved_model(tmp_path, capsys):
    from fsl_app.cli import main

    bundle = tmp_path / "model.fslbundle"
    bundle.write_bytes(b"")
    code = main(["predict", "--bundle", str(bundle), "--images", str(tmp_path), "--fine-tune",
                 "pmf"])  # fmt: skip
    assert code == 2 and "leave out --fine-tune" in capsys.readouterr().err


# --- The maml learner adapts the last stage by default ------------------------------------


def embedded_photos(backbone, photos, classes, shots, queries=3):
    """An EmbeddedSet of real photos (``shots`` examples, ``queries`` to sort per class), with
    the activations entering the last stage (as the app and every command make it)."""
    from fsl_app.embedded_set import EmbeddedSet, for_learner

    paths = [p for name in classes for p in photos[name][: shots + queries]]
    labels = [name if i < shots else None for name in classes for i in range(shots + queries)]
    embedder = Embedder(backbone)
    embedded = embedder.embed(paths)
    plain = EmbeddedSet(
        ids=embedded.ids,
        names=[str(p) for p in paths],
        labels=labels,
        embeddings=embedded.embeddings,
        classes=list(classes),
        backbone=backbone.name,
    )
    return plain, for_learner(plain, embedder, "maml", None, paths.__getitem__)


def test_maml_adapts_the_last_stage_by_default_and_says_so(backbone, photos):
    from fsl_app.classifier import fit_classifier, predict_set
    from fsl_app.learners import create_learner, needs_last_stage

    assert needs_last_stage("maml", backbone.name)
    assert not needs_last_stage("maml", backbone.name, {"last_stage": False})
    assert not needs_last_stage("protonet", backbone.name)
    assert not needs_last_stage("maml", "tf_efficientnet_lite1")  # no start shipped for it
    plain, wide = embedded_photos(backbone, photos, ("bird", "flower", "fruit"), shots=2)
    assert plain.stage is None and wide.stage.shape == (len(plain.ids), 192 * 7 * 7)
    assert wide.inputs.shape == (len(plain.ids), 1280 + 192 * 7 * 7)
    np.testing.assert_array_equal(wide.inputs[:, :1280], plain.embeddings)

    model = fit_classifier(wide, learner="maml")
    learner = model.learner_
    assert learner.adapts_last_stage_ and learner.support_losses_[-1] < learner.support_losses_[0]
    assert any("Fine-tuned the image model's last stage" in note for note in model.notes)
    predictions = predict_set(model, wide)
    truth = [name for name in ("bird", "flower", "fruit") for _ in range(3)]
    assert np.mean([p.prediction == t for p, t in zip(predictions, truth, strict=True)]) >= 0.6
    # "None of these" and the explanations read the embedding part: the same as protonet's
    # detector on the plain set, and neighbours are examples.
    assert model.threshold_ == pytest.approx(fit_classifier(plain).threshold_)
    assert set(predictions[0].neighbours) <= set(wide.example_ids)

    # Rows that carry only the embedding get the head, and the learner says why.
    support, labels, _ = plain.examples()
    head = create_learner("maml").fit(support, labels)
    assert not head.adapts_last_stage_
    assert any("without what its last stage needs" in note for note in head.notes_)
    # The adapted stage as a module (what a model file exports) gives the learner's logits.
    rows = torch.as_tensor(wide.inputs[~wide.labeled])
    with torch.no_grad():
        exported = learner.logits_module()(rows).double().numpy()
    np.testing.assert_allclose(exported, learner.decision_function(rows.numpy()), atol=1e-4)


@pytest.mark.slow
def test_evaluate_scores_maml_with_its_last_stage(capsys):
    from fsl_app.cli import main

    code = main(
        ["evaluate", "--dataset", "tuxpaint-photos", "--per-class", "8", "--learner",
         "protonet", "maml", "--episodes", "4", "--shots", "2", "--queries", "3", "--ways", "3"]
    )  # fmt: skip
    assert code == 0
    table = capsys.readouterr().out
    rows = {line.split()[0]: line.split() for line in table.splitlines()[2:] if line.strip()}
    assert set(rows) == {"protonet", "maml"}
    assert float(rows["maml"][3].rstrip("%")) > 50  # 3-way: chance is 33%
