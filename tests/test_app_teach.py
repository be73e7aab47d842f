"""Teach and test on one page, check the labels, and a model file opened in the app: headless
(AppTest), with real photo bytes and the real default image model."""

from __future__ import annotations

import io

import pytest
import test_app
from PIL import Image
from streamlit.testing.v1 import AppTest
from test_app import (
    ROOT,
    TIMEOUT,
    add_class,
    class_uploader,
    create_project,
    files,
    go,
    shown,
    start,
    texts,
)

from fsl_app.classifier import fit_classifier
from fsl_app.deploy.bundle import bundle_bytes
from fsl_app.embedded_set import embed_project
from fsl_app.embeddings import Embedder, NoCache
from fsl_app.project.store import Store

pytestmark = pytest.mark.slow
data_dir = test_app.data_dir  # the fixture: a data folder of the test's own


def camera_shot(path) -> tuple[str, bytes, str]:
    """A real photo as the browser's camera sends it: one JPEG."""
    picture = Image.open(path).convert("RGB")
    buffer = io.BytesIO()
    picture.save(buffer, format="JPEG", quality=90)
    return ("image.jpg", buffer.getvalue(), "image/jpeg")


def project_with(at: AppTest, photos, per_class: dict[str, list]) -> AppTest:
    create_project(at, "Teach")
    go(at, "1_Classes")
    for name in per_class:
        add_class(at, name)
    for name, paths in per_class.items():
        class_uploader(at, name).set_value(files(paths))
        at.run()
        assert not at.exception
    return at


def class_counts(data_dir) -> dict[str, int]:
    with Store(data_dir) as store:
        project = store.list_projects()[0]
        return {c.name: c.n_examples for c in store.list_classes(project.id)}


def test_a_camera_shot_is_predicted_at_once_and_kept_only_when_asked(data_dir, photos):
    at = project_with(
        start(data_dir), photos, {"bird": photos["bird"][:5], "fruit": photos["fruit"][:5]}
    )
    # One card per class, in the order they were made; the camera is one switch away.
    assert [m.value for m in at.markdown if m.value.startswith("#### ")] == [
        "#### bird",
        "#### fruit",
    ]
    at.toggle(key="preview_camera_on").set_value(True).run()
    at.camera_input[-1].set_value(camera_shot(photos["bird"][12])).run()
    assert not at.exception
    page = texts(at)
    assert "**Looks like:** bird" in page
    # A bar per class with its calibrated probability, in the classes' order.
    bars = [bar.proto.text for bar in at.get("progress")]
    assert [b.split(":")[0] for b in bars] == ["bird", "fruit"]
    assert all(b.endswith("%") for b in bars)
    assert class_counts(data_dir) == {"bird": 5, "fruit": 5}  # tested, not added
    # A dropped picture is tested too; "Add to fruit" makes it an example.
    at.file_uploader(key="preview_file_0").set_value(files(photos["fruit"][6:7])).run()
    verdicts = [m.value for m in at.markdown if m.value.startswith("**Looks like:**")]
    assert verdicts == ["**Looks like:** bird", "**Looks like:** fruit"]
    add = [b for b in at.button if b.label == "Add to fruit" and "preview_file" in b.key]
    add[0].click().run()
    assert not at.exception
    assert class_counts(data_dir) == {"bird": 5, "fruit": 6}
    assert "Added 1 picture to 'fruit'." in texts(at)


def test_check_labels_does_not_ask_again_about_a_kept_picture(data_dir, photos):
    planted = photos["fruit"][-1]  # a strawberry among the birds
    at = project_with(
        start(data_dir),
        photos,
        {"bird": [*photos["bird"][:5], planted], "fruit": photos["fruit"][:5]},
    )
    suggestions = [b for b in at.button if b.label.startswith("Keep it in")]
    assert len(suggestions) == 1
    reasons = [shown(m.value) for m in at.markdown if "looks more like" in m.value]
    assert len(reasons) == 1 and "% 'fruit' against " in reasons[0]
    at.button(key=suggestions[0].key).click().run()
    assert not [b for b in at.button if b.label.startswith("Keep it in")]
    with Store(data_dir) as store:
        project = store.list_projects()[0]
        assert len(store.confirmed_labels(project.id)) == 1
    # A new session (a reload, another day) reads the decision from the store.
    again = AppTest.from_file(str(ROOT / "app.py"), default_timeout=TIMEOUT)
    again.query_params["project"] = str(project.id)
    again.run()
    go(again, "1_Classes")
    assert not [b for b in again.button if b.label.startswith(("Keep it in", "Move it to"))]
    assert "No example looks like it is in the wrong class." in texts(again)


def test_a_model_file_sorts_pictures_in_the_app_without_a_project(data_dir, photos, backbone):
    # A real small project, exported as the Export page does.
    with Store(data_dir) as store:
        project = store.create_project("Garden")
        for name in ("bird", "fruit"):
            store.add_class(project.id, name)
            store.add_images(project.id, [(p.name, p.read_bytes()) for p in photos[name][:5]], name)
        embedder = Embedder(backbone, device="cpu", cache=NoCache())
        classifier = fit_classifier(embed_project(store, project.id, embedder))
        model = bundle_bytes(classifier, backbone=embedder.backbone)

    at = start(data_dir)
    go(at, "7_Use_a_model_file")
    at.file_uploader(key="model_file").set_value(
        ("garden.fslbundle", model, "application/octet-stream")
    ).run()
    assert not at.exception
    assert "sorts pictures into 2 classes: bird, fruit" in texts(at)
    pictures = [photos["bird"][10], photos["fruit"][6]]
    at.file_uploader(key="model_pictures").set_value(
        [*files(pictures), ("notes.png", b"not a picture", "image/png")]
    ).run()
    assert not at.exception
    table = at.dataframe[0].value
    assert list(table["name"]) == [p.name for p in pictures]
    assert list(table["class"]) == ["bird", "fruit"]
    assert ((table["confidence"] > 50) & (table["confidence"] <= 100)).all()  # percent
    assert "'notes.png' was left out" in texts(at)
    assert at.get("download_button")

    # A damaged file or one that is no model gets a sentence, not a traceback.
    for name, data, says in (
        ("cut.fslbundle", model[: len(model) // 2], "is damaged or cut short"),
        ("photo.png", pictures[0].read_bytes(), "is not a model file saved by fsl_app"),
    ):
        at.file_uploader(key="model_file").set_value((name, data, "application/octet-stream")).run()
        assert not at.exception
        assert at.error and says in shown(at.error[0].value)
