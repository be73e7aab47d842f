"""One picture, one number: the same calibrated probability on Predict, in Label next's reason,
in the CSV export, from the `predict` command (from folders or from the exported model).

The demo project (real Tux Paint photos) is opened in the app (AppTest); the library's
:func:`fit_classifier` and :func:`predict_set` give the numbers every other place must show.
"""

from __future__ import annotations

import csv
import io
import json
import os
import re
import zipfile
from dataclasses import dataclass
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from fsl_app.classifier import CalibratedClassifier, Prediction, fit_classifier, predict_set
from fsl_app.cli import main
from fsl_app.deploy.bundle import bundle_bytes
from fsl_app.embedded_set import embed_project
from fsl_app.embeddings import Embedder, EmbeddingCache
from fsl_app.project.demo import create_demo_project
from fsl_app.project.io import export_dataset_zip, image_table, table_csv
from fsl_app.project.store import Project, Store
from fsl_app.trust.badges import CONFIDENCE_MEANING

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parent.parent
# The two likeliest classes as a reason quotes them: a close call or a clear lead (active.py).
BETWEEN = re.compile(
    r"between '(.+?)' and '(.+?)' \((\d+)% vs (\d+)%\)"
    r"|most likely '(.+?)' \((\d+)%\), but not sure: '(.+?)' comes next \((\d+)%\)"
)
CARD_KEY = re.compile(r"accept_([0-9a-f]+)")  # one card's "Yes, ..." button, by picture id


@pytest.fixture
def demo(tmp_path, monkeypatch, backbone):
    """The demo project in a data folder of its own, and what the library predicts for it."""
    data = tmp_path / "data"
    monkeypatch.setenv("FSL_APP_DATA", str(data))
    store = Store(data)
    project = create_demo_project(store)
    # The app's embedding cache is $FSL_APP_CACHE (set per test in conftest): share it.
    embedder = Embedder(backbone, cache=EmbeddingCache(os.environ["FSL_APP_CACHE"]))
    embedded = embed_project(store, project.id, embedder)
    classifier = fit_classifier(embedded)
    predictions = {p.id: p for p in predict_set(classifier, embedded)}
    yield Demo(store, project, classifier, predictions)
    store.close()


@dataclass
class Demo:
    store: Store
    project: Project
    classifier: CalibratedClassifier
    predictions: dict[str, Prediction]  # by picture id: what every place must show


def open_page(project_id: int, page: str) -> AppTest:
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=300)
    at.session_state["project_id"] = project_id
    at.run()
    at.switch_page(f"pages/{page}.py").run()
    assert not at.exception, at.exception[0].value
    return at


def by_prefix(predictions: dict, prefix: str):
    (match,) = [p for image_id, p in predictions.items() if image_id.startswith(prefix)]
    return match


def test_predict_page_and_label_next_show_the_librarys_numbers(demo):
    project, predictions = demo.project, demo.predictions
    at = open_page(project.id, "2_Predict")
    # Cards in order: each has one badge and one "Yes, ..." button keyed by the picture's id.
    badges = [m.value for m in at.markdown if "-badge[" in m.value]
    cards = [m[1] for b in at.button if (m := CARD_KEY.fullmatch(b.key))]
    assert len(badges) == len(cards) > 0
    for prefix, shown in zip(cards, badges, strict=True):
        prediction = by_prefix(predictions, prefix)
        expected = "none of these" if prediction.unknown else f"{prediction.confidence:.0%}"
        assert expected in shown, (prediction.name, shown)
    # What the numbers promise is said beside them: for pictures of the user's classes only.
    assert any(CONFIDENCE_MEANING in caption.value for caption in at.caption)

    at = open_page(project.id, "4_Label_next")
    reasons = [m.value for m in at.markdown if m.value.startswith("**Suggestion")]
    keys = [b.key for b in at.button if b.key.startswith("label_")]
    suggested = list(dict.fromkeys(key.split("_")[1] for key in keys))
    assert len(reasons) == len(suggested) == 3
    quoted = 0
    for prefix, reason in zip(suggested, reasons, strict=True):
        prediction = by_prefix(predictions, prefix)
        for found in BETWEEN.findall(reason.replace("\\", "")):
            first, second, p_first, p_second = (
                found[:4] if found[0] else (found[4], found[6], found[5], found[7])
            )
            assert f"{prediction.probabilities[first]:.0%}" == f"{p_first}%", reason
            assert f"{prediction.probabilities[second]:.0%}" == f"{p_second}%", reason
            quoted += 1
    assert quoted >= 1, reasons  # 3 examples per class: auto mixes in uncertain picks


def test_csv_and_the_predict_command_give_the_same_probabilities(demo, backbone, tmp_path, capsys):
    store, project, predictions = demo.store, demo.project, demo.predictions
    rows = list(
        csv.DictReader(
            io.StringIO(table_csv(image_table(store.list_images(project.id), predictions)))
        )
    )
    for row in rows:
        if row["sha256"] in predictions:
            assert float(row["confidence"]) == pytest.approx(
                predictions[row["sha256"]].confidence, abs=1e-4
            )

    # The project's examples as folders, and its pictures to sort as files: the default learner
    # learns from the pictures still to sort, so the command gets the same ones as the app.
    examples = tmp_path / "examples"
    with zipfile.ZipFile(io.BytesIO(export_dataset_zip(store, project.id))) as archive:
        archive.extractall(examples)
    images = tmp_path / "images"
    images.mkdir()
    chosen = list(predictions.values())
    for prediction in chosen:
        (images / f"{prediction.id[:12]}.png").write_bytes(store.image_bytes(prediction.id))
    bundle = tmp_path / "model.fslbundle"
    bundle.write_bytes(bundle_bytes(demo.classifier, backbone=backbone))

    for source in (["--examples", examples], ["--bundle", bundle]):
        argv = ["predict", *map(str, source), "--images", str(images), "--format", "json"]
        assert main(argv) == 0
        out = json.loads(capsys.readouterr().out)
        assert len(out) == len(chosen)
        for row in out:
            prediction = by_prefix(predictions, Path(row["path"]).stem)
            assert row["confidence"] == pytest.approx(prediction.confidence, abs=1e-6)
            assert row["probabilities"] == pytest.approx(prediction.probabilities, abs=1e-6)
            assert row["unknown"] == prediction.unknown


def test_the_embedding_maps_hover_quotes_the_same_confidence(demo):
    at = open_page(demo.project.id, "3_Embedding_map")
    figure = json.loads(at.get("plotly_chart")[0].proto.spec)
    quoted = 0
    for trace in figure["data"]:
        for image_id, hover in zip(trace["customdata"], trace["hovertext"], strict=True):
            prediction = demo.predictions.get(image_id)
            if prediction is not None:
                assert hover.endswith(f"'{prediction.prediction}' ({prediction.confidence:.0%})")
                quoted += 1
    assert quoted == len(demo.predictions)
