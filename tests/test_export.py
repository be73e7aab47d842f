"""Model bundles: a saved classifier answers exactly as the live one; a bad file is refused."""

from __future__ import annotations

import dataclasses
import inspect
import json
import re
from datetime import datetime

import numpy as np
import pytest
import safetensors.numpy
from conftest import make_folders

from fsl_app.classifier import CalibratedClassifier
from fsl_app.cli import main
from fsl_app.deploy.bundle import (
    FORMAT_VERSION,
    PLAIN_FORMAT_VERSION,
    BundleError,
    bundle_bytes,
    check_backbone,
    load_bundle,
    save_bundle,
)
from fsl_app.embeddings import Embedder
from fsl_app.learners import NotFittedError, available_learners
from fsl_app.learners.soft_kmeans import SoftKMeans

# Every test here embeds real photos with the real backbone.
pytestmark = pytest.mark.slow


@dataclasses.dataclass
class Embedded:
    support: np.ndarray  # (15, dim): 3 classes, 5 shots
    labels: list[str]
    query: np.ndarray  # (15, dim)


@pytest.fixture(scope="module")
def embedded(backbone, photos, tmp_path_factory) -> Embedded:
    root = tmp_path_factory.mktemp("photos")
    folders = make_folders(root, photos, ["bird", "flower", "fruit"], shots=5, queries=5)
    embedder = Embedder(backbone, device="cpu")
    support = sorted(folders.support.rglob("*.*"))
    query = sorted(folders.query.rglob("*.*"))
    return Embedded(
        embedder.embed(support).embeddings,
        [path.parent.name for path in support],
        embedder.embed(query).embeddings,
    )


def fitted(embedded: Embedded, learner: str = "protonet", **kwargs) -> CalibratedClassifier:
    return CalibratedClassifier(learner, **kwargs).fit(embedded.support, embedded.labels)


def saved(classifier: CalibratedClassifier, backbone, embedded: Embedded) -> bytes:
    return bundle_bytes(classifier, backbone=backbone)


@pytest.mark.parametrize("learner", available_learners())
def test_a_loaded_bundle_predicts_exactly_like_the_live_classifier(learner, backbone, embedded):
    live = fitted(embedded, learner)
    bundle = load_bundle(saved(live, backbone, embedded))

    expected, got = (
        live.predict_calibrated(embedded.query),
        bundle.classifier.predict_calibrated(embedded.query),
    )
    np.testing.assert_allclose(got.probabilities, expected.probabilities, rtol=0, atol=1e-6)
    np.testing.assert_array_equal(got.unknown, expected.unknown)
    np.testing.assert_allclose(got.distance, expected.distance, rtol=0, atol=1e-9)
    np.testing.assert_array_equal(got.classes, expected.classes)
    assert bundle.classes == ["bird", "flower", "fruit"]
    assert bundle.learner == learner
    assert bundle.classifier.notes == live.notes
    assert bundle.classifier.temperature_ == live.temperature_


def test_a_semi_supervised_model_comes_back_with_the_pool_it_learned_from(backbone, embedded):
    """The default learner refines its class centres on the pictures still to sort: the model
    file keeps that pool (at most MAX_UNLABELED of them), so it answers as it did when saved."""
    live = CalibratedClassifier("soft_kmeans").fit(
        embedded.support, embedded.labels, unlabeled=embedded.query
    )
    restored = load_bundle(saved(live, backbone, embedded)).classifier
    np.testing.assert_array_equal(restored.unlabeled_, live.unlabeled_)
    expected, got = (
        live.predict_calibrated(embedded.query),
        restored.predict_calibrated(embedded.query),
    )
    np.testing.assert_allclose(got.probabilities, expected.probabilities, rtol=0, atol=1e-6)
    inductive = CalibratedClassifier("soft_kmeans").fit(embedded.support, embedded.labels)
    assert not np.allclose(inductive.predict_proba(embedded.query), expected.probabilities)


def test_a_saved_model_keeps_every_setting_of_its_learner(backbone, embedded, monkeypatch):
    """A later version that changes a learner's default does not change a saved model: the
    file holds every setting, so it refits as it was made instead of being refused."""
    live = CalibratedClassifier("soft_kmeans").fit(
        embedded.support, embedded.labels, unlabeled=embedded.query
    )
    data = saved(live, backbone, embedded)
    defaults = dict(inspect.signature(SoftKMeans.__init__).parameters)
    changed = tuple(
        0.9 if name == "unlabeled_weight" else parameter.default
        for name, parameter in defaults.items()
        if parameter.default is not inspect.Parameter.empty
    )
    monkeypatch.setattr(SoftKMeans.__init__, "__defaults__", changed)
    assert SoftKMeans().unlabeled_weight == 0.9
    restored = load_bundle(data).classifier
    assert restored.learner_.unlabeled_weight == live.learner_.unlabeled_weight
    np.testing.assert_allclose(
        restored.predict_proba(embedded.query), live.predict_proba(embedded.query), atol=1e-6
    )


@pytest.mark.parametrize("strictness", [0.0, 1.1])
def test_strictness_and_its_threshold_are_kept(strictness, backbone, embedded):
    live = fitted(embedded, strictness=strictness)
    restored = load_bundle(saved(live, backbone, embedded)).classifier
    assert restored.strictness == strictness
    assert restored.threshold_ == live.threshold_  # infinite when "none of these" is off
    np.testing.assert_array_equal(
        restored.predict_calibrated(embedded.query).unknown,
        live.predict_calibrated(embedded.query).unknown,
    )


def test_none_of_these_pictures_are_kept_and_old_bundles_without_them_load(backbone, embedded):
    # Two of the flowers told as "none of these" for a bird-and-fruit model.
    keep = [i for i, label in enumerate(embedded.labels) if label != "flower"]
    flowers = embedded.support[[i for i, label in enumerate(embedded.labels) if label == "flower"]]
    support, labels = embedded.support[keep], [embedded.labels[i] for i in keep]
    live = CalibratedClassifier().fit(support, labels, negatives=flowers[:2])
    data = bundle_bytes(live, backbone=backbone)
    restored = load_bundle(data).classifier
    np.testing.assert_array_equal(restored.open_set_.negatives_, live.open_set_.negatives_)
    np.testing.assert_array_equal(
        restored.predict_calibrated(embedded.query).unknown,
        live.predict_calibrated(embedded.query).unknown,
    )
    # A bundle saved before negatives existed has no such tensor: it loads with none.
    tensors = safetensors.numpy.load(data)
    del tensors["open_set.negatives"]
    metadata = json.loads(data[8 : 8 + int.from_bytes(data[:8], "little")])["__metadata__"]
    old = load_bundle(safetensors.numpy.save(tensors, metadata=metadata)).classifier
    assert len(old.open_set_.negatives_) == 0


def test_a_bundle_from_before_rows_could_be_wider_than_the_embedding_loads(backbone, embedded):
    """Older files name no embedding size: their rows are embeddings, whole."""
    live = fitted(embedded)
    data = bundle_bytes(live, backbone=backbone)
    header = json.loads(data[8 : 8 + int.from_bytes(data[:8], "little")])["__metadata__"]
    assert header["embedding_dim"] == str(backbone.embedding_dim)
    del header["embedding_dim"]
    old = load_bundle(safetensors.numpy.save(safetensors.numpy.load(data), metadata=header))
    assert old.classifier.embedding_dim_ == backbone.embedding_dim
    assert not old.classifier.needs_last_stage
    np.testing.assert_array_equal(
        old.classifier.predict_proba(embedded.query), live.predict_proba(embedded.query)
    )


def test_one_example_per_class_keeps_the_calibration_notes(backbone, embedded):
    first = [embedded.labels.index(c) for c in ("bird", "flower", "fruit")]
    support, labels = embedded.support[first], [embedded.labels[i] for i in first]
    live = CalibratedClassifier().fit(support, labels)
    data = bundle_bytes(live, backbone=backbone)
    restored = load_bundle(data).classifier
    assert restored.notes == live.notes and len(live.notes) == 2
    assert restored.open_set_.reason_ == live.open_set_.reason_


def test_save_bundle_writes_one_file_that_names_its_backbone(backbone, embedded, tmp_path):
    path = save_bundle(
        tmp_path / "models" / "fruit.safetensors",
        fitted(embedded),
        backbone=backbone,
    )
    assert list(path.parent.iterdir()) == [path], "no temporary file is left behind"
    bundle = load_bundle(path)
    assert (bundle.backbone_name, bundle.backbone_id) == (backbone.name, backbone.id)
    # Rows of embeddings only: the plain format, which older versions of fsl_app read too.
    assert bundle.version == PLAIN_FORMAT_VERSION
    assert datetime.fromisoformat(bundle.created).tzinfo is not None
    check_backbone(bundle, backbone)


def test_other_backbone_weights_or_name_are_refused(backbone, embedded):
    bundle = load_bundle(saved(fitted(embedded), backbone, embedded))
    retrained = dataclasses.replace(backbone, weights_digest="other weights")
    with pytest.raises(BundleError, match="other weights or preprocessing"):
        check_backbone(bundle, retrained)
    renamed = dataclasses.replace(backbone, name="resnet18")
    with pytest.raises(BundleError, match="made with the backbone 'tf_efficientnet_lite0'"):
        check_backbone(bundle, renamed)


def rewritten(data: bytes, *, tensors=None, **metadata: str) -> bytes:
    """``data`` saved again with some tensors and metadata entries replaced."""
    header_size = int.from_bytes(data[:8], "little")
    old_metadata = json.loads(data[8 : 8 + header_size])["__metadata__"]
    new_tensors = {**safetensors.numpy.load(data), **(tensors or {})}
    return safetensors.numpy.save(new_tensors, metadata={**old_metadata, **metadata})


DAMAGES = {
    "newer version": (
        lambda d: rewritten(d, format_version=str(FORMAT_VERSION + 1)),
        f"was saved by a newer version of fsl_app (model format {FORMAT_VERSION + 1}); update",
    ),
    "older version": (lambda d: rewritten(d, format_version="0"), "uses model format 0"),
    "other format": (lambda d: rewritten(d, format="other.app"), "not a model file saved by"),
    "other safetensors": (lambda d: safetensors.numpy.save({"w": np.zeros(3)}), "not a model"),
    "zip bytes": (lambda d: b"PK\x03\x04 a zip, not a model", "not a model file saved by"),
    "cut in the header": (lambda d: d[:40], "not a model file saved by fsl_app"),
    "cut in the tensors": (lambda d: d[: len(d) - 1000], "damaged or cut short"),
    "unknown backbone": (
        lambda d: rewritten(d, backbone="no_such_backbone"),
        "made with the backbone 'no_such_backbone', which this version of fsl_app does not know",
    ),
    "unknown learner": (lambda d: rewritten(d, learner="svm"), "the learner 'svm', which"),
    "an embedding wider than the rows": (
        lambda d: rewritten(d, embedding_dim="2000"),
        "its embedding size is 2000",
    ),
    "labels out of range": (
        lambda d: rewritten(d, tensors={"labels": np.full(15, 7)}),
        "is damaged",
    ),
    "classes unlike labels": (
        lambda d: rewritten(d, classes='["bird", "flower"]'),
        "is damaged",
    ),
    "a path among the learner's parameters": (
        lambda d: rewritten(d, learner_params='{"checkpoint": "/etc/passwd"}'),
        "learner parameters this app does not take: checkpoint",
    ),
    "an unknown learner parameter": (
        lambda d: rewritten(d, learner_params='{"metric": "cosine", "shell": "rm -rf /"}'),
        "learner parameters this app does not take: shell",
    ),
    "a learner parameter that is not a plain value": (
        lambda d: rewritten(d, learner_params='{"temperature": [1, 2]}'),
        "learner parameter 'temperature' is [1, 2]",
    ),
    "another backbone for the learner": (
        lambda d: rewritten(d, learner_params='{"backbone": "tf_efficientnet_lite2"}'),
        "names another backbone",
    ),
    "a NaN strictness": (lambda d: rewritten(d, strictness="nan"), "its strictness is nan"),
    "a negative strictness": (lambda d: rewritten(d, strictness="-1.0"), "strictness is -1.0"),
    "a NaN threshold": (
        lambda d: rewritten(d, tensors={"open_set.threshold": np.asarray(np.nan)}),
        "'none of these' threshold is nan",
    ),
    "an infinite threshold while strict": (
        lambda d: rewritten(d, tensors={"open_set.threshold": np.asarray(np.inf)}),
        "'none of these' threshold is inf",
    ),
    "a zero temperature": (
        lambda d: rewritten(d, tensors={"temperature": np.asarray(0.0)}),
        "its temperature is 0.0",
    ),
    "NaN prototypes": (
        lambda d: rewritten(d, tensors={"open_set.prototypes": np.full((3, 1280), np.nan)}),
        "numbers that are not finite",
    ),
    "learner refits otherwise": (
        lambda d: rewritten(d, tensors={"support_logits": np.zeros((15, 3))}),
        "answers differently here than where it was made",
    ),
}


@pytest.mark.parametrize(("damage", "message"), DAMAGES.values(), ids=DAMAGES)
def test_a_file_that_is_not_this_bundle_is_refused_in_plain_words(
    damage, message, backbone, embedded
):
    data = damage(saved(fitted(embedded), backbone, embedded))
    with pytest.raises(BundleError, match=re.escape(message)) as refused:
        load_bundle(data, name="fruit.safetensors")
    assert str(refused.value).startswith("'fruit.safetensors' ")
    assert "Error" not in str(refused.value) and "\n" not in str(refused.value)


def test_a_missing_file_is_refused(tmp_path):
    with pytest.raises(BundleError, match="no readable model file"):
        load_bundle(tmp_path / "nothing.safetensors")


def test_saving_needs_a_classifier_fitted_on_this_backbones_embeddings(backbone, embedded):
    with pytest.raises(NotFittedError, match="nothing to save"):
        bundle_bytes(CalibratedClassifier(), backbone=backbone)
    other_backbone = CalibratedClassifier().fit(embedded.support[:, :16], embedded.labels)
    with pytest.raises(ValueError, match="16-d embeddings"):
        bundle_bytes(other_backbone, backbone=backbone)


def test_the_bundle_keeps_what_the_classifier_was_fitted_on(backbone, embedded):
    """Saving needs only the classifier: its examples, their labels and ids travel with it,
    so the restored model explains a prediction with the same examples."""
    ids = [f"example-{i}" for i in range(len(embedded.labels))]
    live = CalibratedClassifier().fit(embedded.support, embedded.labels, ids=ids)
    restored = load_bundle(bundle_bytes(live, backbone=backbone)).classifier
    np.testing.assert_array_equal(restored.support_, live.support_)
    assert restored.labels_.tolist() == embedded.labels and restored.ids_ == ids
    names = [f"query {i}" for i in range(len(embedded.query))]
    expected = live.predict_pictures(embedded.query, ids=names, names=names)
    got = restored.predict_pictures(embedded.query, ids=names, names=names)
    assert [p.neighbours for p in got] == [p.neighbours for p in expected]
    assert [p.confidence for p in got] == pytest.approx([p.confidence for p in expected])


# --- Command line ----------------------------------------------------------------------------


def run_cli(capsys, *args) -> tuple[int, str, str]:
    code = main([*map(str, args)])
    out, err = capsys.readouterr()
    return code, out, err


def test_export_then_predict_with_the_bundle_matches_predict_with_the_examples(
    folders, tmp_path, capsys
):
    # The default learner learns from the pictures still to sort: the file keeps them.
    model = tmp_path / "birds.safetensors"
    export = ["export", "--support", folders.support, "--images", folders.query, "--out", model]
    code, out, _ = run_cli(capsys, *export)
    assert code == 0 and str(model) in out and model.is_file()

    for output in ("json", "csv", "table"):
        query = ["--query", folders.query, "--format", output]
        live = run_cli(capsys, "predict", "--support", folders.support, *query)
        from_file = run_cli(capsys, "predict", "--bundle", model, *query)
        assert from_file == live, "same exit code, same output, same notes"
        assert live[0] == 0
        if output == "json":
            rows = json.loads(from_file[1])
            assert sum(row["prediction"] == folders.true_class(row["path"]) for row in rows) >= 13


def test_support_and_bundle_together_are_refused(folders, tmp_path, capsys):
    with pytest.raises(SystemExit) as stopped:
        main(
            [
                "predict",
                "--support",
                str(folders.support),
                "--bundle",
                str(tmp_path / "m"),
                "--query",
                str(folders.query),
            ]
        )
    assert stopped.value.code == 2
    assert "not allowed with argument" in capsys.readouterr().err


def test_bundle_options_it_fixes_are_refused(folders, tmp_path, capsys):
    model = tmp_path / "m.safetensors"
    assert run_cli(capsys, "export", "--support", folders.support, "--out", model)[0] == 0
    code, out, err = run_cli(
        capsys, "predict", "--bundle", model, "--query", folders.query, "--learner", "linear"
    )
    assert code == 2 and out == ""
    assert "leave out --learner when using --bundle" in err


def test_a_bad_or_foreign_bundle_exits_2_with_one_sentence(folders, tmp_path, capsys):
    not_a_model = tmp_path / "photo.safetensors"
    not_a_model.write_bytes(next(folders.query.rglob("*.*")).read_bytes())
    code, out, err = run_cli(capsys, "predict", "--bundle", not_a_model, "--query", folders.query)
    assert code == 2 and out == ""
    assert err == (
        "error: 'photo.safetensors' is not a model file saved by fsl_app: "
        "pick a file exported from the app.\n"
    )

    model = tmp_path / "m.safetensors"
    assert run_cli(capsys, "export", "--support", folders.support, "--out", model)[0] == 0
    foreign = tmp_path / "foreign.safetensors"
    foreign.write_bytes(rewritten(model.read_bytes(), backbone="no_such_backbone"))
    code, out, err = run_cli(capsys, "predict", "--bundle", foreign, "--query", folders.query)
    assert code == 2 and out == "" and "Traceback" not in err
    assert "the backbone 'no_such_backbone', which this version of fsl_app does not know" in err


def test_export_with_images_keeps_the_pool_a_semi_supervised_model_learned_from(
    folders, tmp_path, capsys
):
    """`export --images` gives soft k-means the pictures still to sort, as `predict --examples
    --images` does: the saved model then answers as the live one, and unlike one saved without."""
    query = ["--query", folders.query, "--format", "json"]
    learner = ["--learner", "soft_kmeans"]
    live = run_cli(capsys, "predict", "--support", folders.support, *learner, *query)
    answers = {}
    for name, pool in (("with", ["--images", folders.query]), ("without", [])):
        model = tmp_path / f"{name}.fslbundle"
        export = ["export", "--support", folders.support, *pool, *learner, "--out", model]
        assert run_cli(capsys, *export)[0] == 0
        answers[name] = run_cli(capsys, "predict", "--bundle", model, *query)
    assert answers["with"] == live and live[0] == 0
    assert answers["without"][1] != live[1]
