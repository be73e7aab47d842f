"""ONNX export: onnxruntime on real photos answers as the torch classifier does, for every learner.

Exporting the backbone takes about 10 s on 2 CPU cores; :mod:`fsl_app.deploy.onnx`
keeps the last backbone graph, so each further export here costs a few seconds.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from fsl_app import __version__
from fsl_app.classifier import CalibratedClassifier
from fsl_app.cli import main
from fsl_app.deploy.bundle import Bundle, BundleError, bundle_bytes, load_bundle
from fsl_app.deploy.onnx import (
    ONNX_LEARNERS,
    OnnxExportError,
    OnnxModel,
    export_onnx,
    onnx_metadata,
    predict_onnx,
)
from fsl_app.images import load_image
from fsl_app.learners import available_learners

pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")

CLASSES = ["bird", "flower", "fruit"]
SHOTS = 4
ATOL = 1e-4


@dataclasses.dataclass
class Photos:
    support: np.ndarray  # (n_support, dim) torch embeddings
    labels: list[str]
    pixels: torch.Tensor  # (5, 3, H, W) queries: one unseen photo per class, a fish, a vegetable
    queries: np.ndarray  # (5, dim) their torch embeddings


def _pixels(backbone, paths: list[Path]) -> torch.Tensor:
    """What the embedder feeds the backbone: decoded as it decodes, then backbone.transform."""
    return torch.stack(
        [backbone.transform(load_image(p, min_side=backbone.resize_side).image) for p in paths]
    )


@pytest.fixture(scope="module")
def real(backbone, photos) -> Photos:
    support = [p for c in CLASSES for p in photos[c][:SHOTS]]
    queries = [photos[c][SHOTS] for c in CLASSES] + [photos["fish"][0], photos["vegetable"][0]]
    pixels = _pixels(backbone, queries)
    with torch.inference_mode():
        return Photos(
            support=backbone.embed(_pixels(backbone, support)).numpy(),
            labels=[c for c in CLASSES for _ in range(SHOTS)],
            pixels=pixels,
            queries=backbone.embed(pixels).numpy(),
        )


def _bundle(
    backbone, real: Photos, learner: str, strictness: float = 1.0, negatives=None, **params
) -> Bundle:
    """A bundle as the app saves it and reads it back."""
    model = CalibratedClassifier(learner, strictness=strictness, **params)
    model.fit(real.support, real.labels, negatives=negatives)
    data = bundle_bytes(model, backbone=backbone)
    return load_bundle(data)


@pytest.fixture(scope="module")
def protonet_onnx(backbone, real, tmp_path_factory) -> tuple[Bundle, Path]:
    bundle = _bundle(backbone, real, "protonet")
    return bundle, export_onnx(bundle, backbone, tmp_path_factory.mktemp("onnx") / "m.onnx")


def _assert_same_answers(model: OnnxModel, bundle: Bundle, real: Photos) -> float:
    """onnxruntime against torch, in one batch of 5 and in batches of 1; the largest gap.

    Each batch is compared with torch on the same batch: a transductive learner's
    answers depend on the other queries of the call.
    """
    gap = 0.0
    for batches in ([slice(0, 5)], [slice(i, i + 1) for i in range(5)]):
        for batch in batches:
            expected = bundle.classifier.predict_calibrated(real.queries[batch])
            got = model.predict(real.pixels[batch].numpy())
            assert got["probabilities"].shape == expected.probabilities.shape
            assert got["probabilities"].dtype == np.float32
            assert got["unknown"].dtype == np.bool_
            np.testing.assert_allclose(got["probabilities"], expected.probabilities, atol=ATOL)
            np.testing.assert_allclose(got["distance"], expected.distance, atol=ATOL)
            assert (got["probabilities"].argmax(1) == expected.probabilities.argmax(1)).all()
            assert (got["unknown"] == expected.unknown).all()
            gap = max(gap, float(np.abs(got["probabilities"] - expected.probabilities).max()))
    print(f"{bundle.learner}: largest |onnxruntime - torch| probability {gap:.2g}")
    return gap


@pytest.mark.slow
def test_protonet_onnx_answers_as_torch_on_real_photos(protonet_onnx, real):
    bundle, path = protonet_onnx
    _assert_same_answers(OnnxModel(path), bundle, real)
    expected = bundle.classifier.predict_calibrated(real.queries)
    # The photos of the known classes are classified right, and the vegetable is "none of
    # these": the flags compared above are not all alike.
    assert list(expected.prediction[:3]) == CLASSES
    assert expected.unknown.any() and not expected.unknown.all()
    got = predict_onnx(path, real.pixels[:1].numpy())
    assert got["probabilities"].shape == (1, len(CLASSES))


@pytest.mark.slow
@pytest.mark.parametrize("learner", available_learners())
def test_every_learner_exports_and_answers_as_torch(backbone, real, tmp_path, learner):
    bundle = _bundle(backbone, real, learner)
    model = OnnxModel(export_onnx(bundle, backbone, tmp_path / f"{learner}.onnx"))
    _assert_same_answers(model, bundle, real)
    assert model.metadata["learner"] == learner


def test_every_registered_learner_can_be_exported():
    assert set(available_learners()) <= set(ONNX_LEARNERS)


@pytest.mark.slow
def test_strictness_zero_is_never_unknown(backbone, real, tmp_path):
    bundle = _bundle(backbone, real, "protonet", strictness=0)
    model = OnnxModel(export_onnx(bundle, backbone, tmp_path / "off.onnx"))
    noise = torch.randn(3, *backbone.input_size, generator=torch.Generator().manual_seed(1))
    pixels = torch.cat([real.pixels, noise])
    assert not model.predict(pixels.numpy())["unknown"].any()
    assert model.metadata["threshold"] is None
    _assert_same_answers(model, bundle, real)


@pytest.mark.slow
def test_pictures_marked_none_of_these_are_unknown_in_the_graph_too(backbone, real, tmp_path):
    # The fish, told as "none of these": the graph flags it as the classifier does.
    bundle = _bundle(backbone, real, "protonet", negatives=real.queries[3:4])
    model = OnnxModel(export_onnx(bundle, backbone, tmp_path / "told.onnx"))
    assert model.predict(real.pixels[3:4].numpy())["unknown"].all()
    _assert_same_answers(model, bundle, real)


@pytest.mark.slow
def test_metadata_round_trips_classes_and_preprocessing(protonet_onnx, backbone, photos):
    bundle, path = protonet_onnx
    meta = onnx_metadata(path)
    assert meta["classes"] == CLASSES == bundle.classes
    assert meta["backbone_id"] == backbone.id
    assert meta["fsl_app_version"] == __version__
    assert meta["temperature"] == pytest.approx(bundle.classifier.temperature_)
    assert meta["threshold"] == pytest.approx(bundle.classifier.threshold_)
    assert meta["preprocessing"]["input"]["shape"] == ["batch", 3, 224, 224]
    assert [step["op"] for step in meta["preprocessing"]["steps"]] == [
        "resize",
        "center_crop",
        "to_tensor",
        "normalize",
    ]
    # The metadata alone (PIL and numpy, no torch) reproduces backbone.transform.
    image = load_image(photos["fish"][0], min_side=backbone.resize_side).image
    expected = backbone.transform(image).numpy()
    np.testing.assert_allclose(_preprocess(image, meta["preprocessing"]), expected, atol=1e-6)


def _preprocess(image: Image.Image, preprocessing: dict) -> np.ndarray:
    """The steps of the metadata, as a runtime without torch would follow them."""
    for step in preprocessing["steps"]:
        if step["op"] == "resize":
            assert step["interpolation"] == "bicubic"
            side, (width, height) = step["shorter_side"], image.size
            if width <= height:
                size = (side, int(side * height / width))
            else:
                size = (int(side * width / height), side)
            image = image.resize(size, Image.Resampling.BICUBIC)
        elif step["op"] == "center_crop":
            crop_h, crop_w = step["size"]
            top = round((image.height - crop_h) / 2)
            left = round((image.width - crop_w) / 2)
            image = image.crop((left, top, left + crop_w, top + crop_h))
        elif step["op"] == "to_tensor":
            array = np.asarray(image, dtype=np.float32).transpose(2, 0, 1) / 255
        elif step["op"] == "normalize":
            mean = np.asarray(step["mean"], dtype=np.float32)[:, None, None]
            std = np.asarray(step["std"], dtype=np.float32)[:, None, None]
            array = (array - mean) / std
        else:
            raise AssertionError(f"unexpected step {step}")
    return array


def test_a_learner_that_cannot_be_exported_is_refused(backbone, real, tmp_path):
    bundle = dataclasses.replace(_bundle(backbone, real, "protonet"), learner="tim")
    with pytest.raises(OnnxExportError, match=r"'tim' cannot be exported to ONNX.*protonet"):
        export_onnx(bundle, backbone, tmp_path / "m.onnx")
    assert not (tmp_path / "m.onnx").exists()


def test_a_protonet_with_euclidean_distances_is_refused(backbone, real, tmp_path):
    bundle = _bundle(backbone, real, "protonet", metric="euclidean")
    with pytest.raises(OnnxExportError, match=r"metric='euclidean' cannot be exported.*'cosine'"):
        export_onnx(bundle, backbone, tmp_path / "m.onnx")
    assert not (tmp_path / "m.onnx").exists()


def test_another_backbone_is_refused(backbone, real, tmp_path):
    bundle = dataclasses.replace(_bundle(backbone, real, "protonet"), backbone_id="other@0")
    with pytest.raises(BundleError, match="export it again"):
        export_onnx(bundle, backbone, tmp_path / "m.onnx")


def test_a_file_that_is_not_an_fsl_app_onnx_model_is_refused(tmp_path):
    path = tmp_path / "x.onnx"
    path.write_bytes(b"not onnx at all")
    with pytest.raises(OnnxExportError, match="not a readable ONNX model"):
        predict_onnx(path, np.zeros((1, 3, 224, 224), dtype=np.float32))


@pytest.mark.slow
def test_cli_export_writes_the_bundle_and_the_onnx_graph(folders, tmp_path, capsys):
    bundle, graph = tmp_path / "m.fslbundle", tmp_path / "m.onnx"
    code = main(
        ["export", "--support", str(folders.support), "--out", str(bundle), "--onnx", str(graph)]
    )
    assert code == 0, capsys.readouterr().err
    assert str(graph) in capsys.readouterr().out
    assert onnx_metadata(graph)["classes"] == load_bundle(bundle).classes == folders.classes


def test_cli_export_help_documents_onnx(capsys):
    with pytest.raises(SystemExit):
        main(["export", "--help"])
    assert "--onnx FILE" in capsys.readouterr().out
