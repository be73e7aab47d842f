"""The maml that adapts the image model's last stage, through every door that takes a model file:
the file itself, `predict --bundle`, `batch-predict` and ONNX answer as the live model did.

Its rows are each picture's embedding followed by the activations entering the last stage
(:func:`fsl_app.embedded_set.for_learner`); the model file keeps them whole.
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import FewShotFolders, make_folders
from test_export import rewritten

from fsl_app.classifier import fit_classifier
from fsl_app.cli import main
from fsl_app.deploy.bundle import BundleError, bundle_bytes, load_bundle
from fsl_app.embedded_set import embed_folders, for_learner
from fsl_app.embeddings import Embedder, EmbeddingCache, resolve_device
from fsl_app.images import load_image
from fsl_app.stage_cache import LastStage

# Every test here runs the real backbone on real photos and adapts its last stage.
pytestmark = pytest.mark.slow

CLASSES = ["bird", "flower", "fruit"]


def run_cli(capsys, *args) -> tuple[int, str, str]:
    code = main([*map(str, args)])
    out, err = capsys.readouterr()
    return code, out, err


@dataclass
class MamlModel:
    folders: FewShotFolders
    bundle: Path
    onnx: Path


@pytest.fixture(scope="module")
def maml_model(photos, tmp_path_factory) -> MamlModel:
    """`export --learner maml --onnx` of 3 classes x 4 real photos; 3 photos each to sort."""
    root = tmp_path_factory.mktemp("maml")
    folders = make_folders(root, photos, CLASSES, shots=4, queries=3)
    bundle, graph = root / "maml.fslbundle", root / "maml.onnx"
    args = ["export", "--examples", folders.support, "--learner", "maml", "--out", bundle]
    code = main([*map(str, args), "--onnx", str(graph), "--device", "cpu"])
    assert code == 0 and bundle.is_file() and graph.is_file()
    return MamlModel(folders, bundle, graph)


def test_the_model_file_answers_exactly_as_the_live_model(backbone, photos, tmp_path):
    folders = make_folders(tmp_path, photos, CLASSES, shots=3, queries=2)
    embedder = Embedder(backbone, device="cpu", cache=EmbeddingCache(tmp_path / "e.sqlite"))
    embedded = embed_folders(embedder, folders.support, folders.query)
    wide = for_learner(embedded, embedder, "maml", None, lambda row: embedded.names[row])
    live = fit_classifier(wide, learner="maml")
    assert live.needs_last_stage and live.learner_.adapts_last_stage_
    assert live.support_.shape == (9, backbone.embedding_dim + LastStage(backbone).input_numel)

    bundle = load_bundle(bundle_bytes(live, backbone=backbone))
    restored = bundle.classifier
    assert restored.needs_last_stage and restored.learner_.adapts_last_stage_
    assert restored.embedding_dim_ == backbone.embedding_dim and bundle.version == 2
    assert restored.notes == live.notes
    assert any("Fine-tuned the image model's last stage" in note for note in restored.notes)
    queries = wide.inputs[~wide.labeled]
    expected, got = live.predict_calibrated(queries), restored.predict_calibrated(queries)
    np.testing.assert_array_equal(got.probabilities, expected.probabilities)
    np.testing.assert_array_equal(got.distance, expected.distance)
    np.testing.assert_array_equal(got.unknown, expected.unknown)
    # The same learner on embeddings alone adapts only its head: another model, and its file
    # is the plain format older versions read.
    narrow = fit_classifier(embedded, learner="maml")
    assert not narrow.needs_last_stage
    assert load_bundle(bundle_bytes(narrow, backbone=backbone)).version == 1
    assert not np.allclose(narrow.predict_proba(embedded.embeddings[~embedded.labeled]),
                           expected.probabilities)  # fmt: skip


def test_predict_with_the_file_equals_predict_with_the_examples(maml_model, capsys):
    folders = maml_model.folders
    images = ["--images", folders.query, "--format", "json", "--device", "cpu"]
    live = run_cli(capsys, "predict", "--examples", folders.support, "--learner", "maml", *images)
    from_file = run_cli(capsys, "predict", "--bundle", maml_model.bundle, *images)
    assert from_file == live, "same exit code, same answers, same notes"
    code, out, err = live
    assert code == 0 and "Fine-tuned the image model's last stage" in err
    rows = json.loads(out)
    assert sum(row["prediction"] == folders.true_class(row["path"]) for row in rows) >= 7


def test_batch_predict_with_the_file_gives_the_same_answers(maml_model, tmp_path, capsys):
    folders = maml_model.folders
    (folders.query / "notes.txt").write_text("not an image")
    broken = folders.query / "bird" / "cut.jpg"
    data = next((folders.query / "fruit").iterdir()).read_bytes()
    broken.write_bytes(data[: len(data) // 3])
    try:
        code, out, _ = run_cli(
            capsys, "predict", "--bundle", maml_model.bundle, "--images", folders.query,
            "--format", "json", "--device", "cpu",
        )  # fmt: skip
        assert code == 0
        expected = {Path(row["path"]).relative_to(folders.query).as_posix(): row
                    for row in json.loads(out)}  # fmt: skip
        output = tmp_path / "out.csv"
        args = ["batch-predict", "--bundle", maml_model.bundle, "--images", folders.query]
        assert run_cli(capsys, *args, "--output", output, "--batch-size", "4")[0] == 0
    finally:
        broken.unlink()
        (folders.query / "notes.txt").unlink()
    with output.open(newline="") as file:
        rows = {row["path"]: row for row in csv.DictReader(file)}
    assert set(rows) == set(expected) and len(rows) == 10
    assert "cut short" in rows["bird/cut.jpg"]["error"] and "error" in expected["bird/cut.jpg"]
    for path, row in rows.items():
        if path == "bird/cut.jpg":
            continue
        assert row["prediction"] == expected[path]["prediction"]
        assert row["unknown"] == str(expected[path]["unknown"])
        # Batches of another size round differently in the backbone (~1e-8).
        assert float(row["confidence"]) == pytest.approx(expected[path]["confidence"], abs=1e-5)


def test_the_onnx_graph_answers_as_the_model_file(maml_model, backbone):
    from fsl_app.deploy.onnx import OnnxModel

    bundle = load_bundle(maml_model.bundle)
    embedder = Embedder(backbone, device="cpu")
    embedded = embed_folders(embedder, None, maml_model.folders.query)
    wide = for_learner(embedded, embedder, "maml", None, lambda row: embedded.names[row])
    expected = bundle.classifier.predict_calibrated(wide.inputs)
    pixels = torch.stack(
        [
            backbone.transform(load_image(Path(name), min_side=backbone.resize_side).image)
            for name in wide.names
        ]
    )
    model = OnnxModel(maml_model.onnx)
    assert model.metadata["learner"] == "maml" and model.metadata["adapts_last_stage"]
    for batch in (slice(0, len(pixels)), slice(0, 1)):
        got = model.predict(pixels[batch].numpy())
        np.testing.assert_allclose(
            got["probabilities"], expected.probabilities[batch], rtol=0, atol=1e-4
        )
        np.testing.assert_allclose(got["distance"], expected.distance[batch], rtol=0, atol=1e-4)
        np.testing.assert_array_equal(got["unknown"], expected.unknown[batch])
    assert len(wide.names) == 9


def test_a_file_that_needs_a_last_stage_start_this_computer_lacks_is_refused(
    maml_model, tmp_path, monkeypatch, capsys
):
    empty = tmp_path / "pretrained"
    empty.mkdir()
    monkeypatch.setenv("FSL_APP_PRETRAINED", str(empty))
    with pytest.raises(BundleError, match="does not have: open it where fsl_app ships that file"):
        load_bundle(maml_model.bundle)
    code, out, err = run_cli(
        capsys, "predict", "--bundle", maml_model.bundle, "--images", maml_model.folders.query
    )
    assert code == 2 and out == "" and "Traceback" not in err
    assert "maml-stage-tf_efficientnet_lite0.safetensors" in err


def test_suggest_quotes_the_model_that_adapts_the_last_stage(maml_model, capsys):
    """`suggest --learner maml` ranks by the same model `predict --learner maml` answers with."""
    folders = maml_model.folders
    common = ["--examples", folders.support, "--images", folders.query, "--learner", "maml",
              "--format", "json", "--device", "cpu"]  # fmt: skip
    code, out, err = run_cli(capsys, "suggest", *common, "--strategy", "margin", "--k", "9")
    assert code == 0, err
    suggested = json.loads(out)
    code, out, _ = run_cli(capsys, "predict", *common)
    predicted = {row["path"]: row for row in json.loads(out)}
    assert len(suggested) == 9 and {row["path"] for row in suggested} == set(predicted)
    for row in suggested:
        expected = predicted[row["path"]]
        assert row["prediction"] == expected["prediction"]
        assert f"{expected['confidence']:.0%}" in row["reason"]


def test_a_file_made_on_another_kind_of_device_that_answers_otherwise_says_so(maml_model):
    """On a GPU the last stage adapts in mixed precision: a refit on a CPU differs, and the
    refusal names the devices (the answers are compared, never assumed to differ)."""
    data = maml_model.bundle.read_bytes()
    elsewhere = "mps" if resolve_device("auto").type != "mps" else "cuda"
    moved = rewritten(data, fitted_on=elsewhere)
    assert load_bundle(moved).classifier.needs_last_stage  # same answers: it loads
    differs = rewritten(moved, tensors={"support_logits": np.zeros((12, 3), np.float32)})
    with pytest.raises(BundleError, match=r"was made on an? [A-Za-z ]*GPU, .* export it again"):
        load_bundle(differs, name="maml.fslbundle")
