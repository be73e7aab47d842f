"""A project that learns with "Class centres, then fine-tuned" (``maml``) on the default image
model: every page gets the pictures with the activations entering the image model's last
stage, which the learner fine-tunes on the examples; the other learners compared get the
embeddings alone.

Real Tux Paint photos through the real app (AppTest) and the real default weights.
"""

from __future__ import annotations

import os

import pytest
from test_app import (  # noqa: F401 (data_dir is a fixture)
    add_class,
    class_uploader,
    create_project,
    data_dir,
    files,
    go,
    shown,
    start,
    texts,
)

from fsl_app.classifier import fit_classifier, predict_set
from fsl_app.deploy.bundle import bundle_bytes
from fsl_app.embedded_set import embed_project, embed_uploads, for_learner
from fsl_app.embeddings import Embedder, EmbeddingCache, NoCache
from fsl_app.learners import LEARNERS, needs_last_stage
from fsl_app.project.store import Store

pytestmark = pytest.mark.slow

CLASSES = ("bird", "fruit", "flower")
EXAMPLES = 3  # per class: the calibrated fit of the last stage takes seconds on 2 cores


def the_project_as_maml_takes_it(folder, backbone):
    """The project's pictures with their last-stage activations, read from the app's caches,
    and the classifier fitted on them: what the pages must show."""
    store = Store(folder)
    project = store.list_projects()[0]
    embedder = Embedder(backbone, device="cpu", cache=EmbeddingCache(os.environ["FSL_APP_CACHE"]))
    embedded = embed_project(store, project.id, embedder)
    wide = for_learner(
        embedded, embedder, "maml", None, lambda i: store.image_path(embedded.ids[i])
    )
    assert embedder.images_forwarded == 0  # the app embedded every picture already
    return wide, fit_classifier(wide, learner="maml")


def wide_rows(paths, backbone):
    """The rows of the pictures at ``paths`` as the fine-tuning learner takes them, made afresh
    (no cache)."""
    embedder = Embedder(backbone, device="cpu", cache=NoCache())
    pictures = [(p.name, p.read_bytes()) for p in paths]
    embedded = embed_uploads(embedder, pictures)
    return for_learner(embedded, embedder, "maml", None, lambda i: pictures[i][1]).inputs


def test_fine_tuning_the_last_stage_works_on_every_page(data_dir, photos, backbone):  # noqa: F811
    assert needs_last_stage("maml", backbone.name)  # a start is shipped for the default model
    at = start(data_dir)
    create_project(at, "Fine-tuned")
    at.selectbox[2].set_value("maml")  # device, image model, learner
    at.button(key="FormSubmitter:model_settings-Save model settings").click().run()
    assert Store(data_dir).list_projects()[0].settings["learner"] == "maml"
    projects_page = texts(at)
    assert LEARNERS["maml"].display_name in projects_page
    assert "fine-tunes the image model's last stage on your examples" in projects_page
    assert "This project learns that way." in projects_page

    go(at, "1_Classes")
    for name in CLASSES:
        add_class(at, name)
    for name in CLASSES:
        class_uploader(at, name).set_value(files(photos[name][:EXAMPLES]))
        at.run()
        assert not at.exception, at.exception
    # Try it: a dropped picture is answered through the fine-tuned stage too.
    at.file_uploader(key="preview_file_0").set_value(files(photos["fruit"][6:7])).run()
    assert not at.exception, at.exception
    assert [m.value for m in at.markdown if m.value.startswith("**Looks like:**")] == [
        "**Looks like:** fruit"
    ]

    go(at, "2_Predict")
    to_sort = [photos["bird"][10], photos["fruit"][8], photos["flower"][7]]
    at.file_uploader[0].set_value(files(to_sort)).run()
    assert not at.exception, at.exception
    # (shown as escaped markdown: "Fine\\-tuned ...")
    assert any("image model's last stage on your examples" in i.value for i in at.info)
    wide, classifier = the_project_as_maml_takes_it(data_dir, backbone)
    assert wide.stage is not None and classifier.learner_.adapts_last_stage_
    expected = {p.id: p for p in predict_set(classifier, wide)}
    assert sorted(t.value for t in at.text) == sorted(p.prediction for p in expected.values())
    # Each card's badge shows the confidence of the fine-tuned classifier.
    badges = sorted(shown(m.value) for m in at.markdown if "-badge[" in m.value)
    assert len(badges) == len(to_sort)
    for prediction in expected.values():
        badge = f"[{prediction.badge}: {prediction.confidence:.0%}]"
        assert any(badge in b for b in badges), (badge, badges)

    go(at, "4_Label_next")
    reasons = [m.value for m in at.markdown if m.value.startswith("**Suggestion")]
    assert reasons and all("why:" in r for r in reasons)
    assert [m.label for m in at.metric] == ["Estimated accuracy"]

    go(at, "3_Embedding_map")
    assert at.get("plotly_chart")
    at.radio[1].set_value("prediction").run()
    assert not at.exception, at.exception

    go(at, "5_Evaluate")
    assert [m.label for m in at.metric] == ["Accuracy", "Pictures tested", "Its confidence"]
    at.button(key="compare").click().run()
    assert not at.exception, at.exception
    table = at.dataframe[-2].value
    learned = set(table["how it learns"])
    assert f"{LEARNERS['maml'].display_name} (in use)" in learned
    assert {LEARNERS[name].display_name for name in ("protonet", "linear")} <= learned
    details = at.dataframe[-1].value  # under Advanced: how each was measured
    assert (details["learner"] == f"{LEARNERS['maml'].technical_name} (maml)").any()

    go(at, "6_Export")
    assert not at.exception, at.exception
    at.button(key="prepare_bundle").click().run()
    assert not at.exception, at.exception
    assert [b for b in at.get("download_button") if b.proto.label == "Download the model"]

    # The model file, opened on "Use a model file", sorts pictures through the fine-tuned stage.
    model = bundle_bytes(classifier, backbone=backbone)
    go(at, "7_Use_a_model_file")
    at.file_uploader(key="model_file").set_value(
        ("fine-tuned.fslbundle", model, "application/octet-stream")
    ).run()
    assert not at.exception, at.exception
    sorted_pictures = [photos["bird"][12], photos["flower"][9]]
    at.file_uploader(key="model_pictures").set_value(files(sorted_pictures)).run()
    assert not at.exception, at.exception
    table = at.dataframe[0].value
    assert list(table["name"]) == [p.name for p in sorted_pictures]
    assert list(table["class"]) == [
        str(p) for p in classifier.predict(wide_rows(sorted_pictures, backbone))
    ]

    # The model settings say, when asked, how long a refit takes on this device.
    go(at, "0_Projects")
    at.button(key="refit_time").click().run()
    assert not at.exception, at.exception
    estimate = next(m.value for m in at.markdown if "after each change to the examples" in m.value)
    assert estimate.startswith("**About ") and f"({3 * EXAMPLES} examples" in estimate


def test_each_learner_compared_gets_the_pictures_as_it_takes_them(data_dir, photos, backbone):  # noqa: F811
    """The comparison on Evaluate gives the learner that fine-tunes the last stage the wide rows
    and every other learner the embeddings alone, whichever learner the project uses."""
    from fsl_app.ui.session import ProjectPage, ProjectSettings

    store = Store(data_dir)
    project = store.create_project("Compared")
    for name in CLASSES[:2]:
        store.add_class(project.id, name)
        store.add_images(project.id, [(p.name, p.read_bytes()) for p in photos[name][:2]], name)
    embedder = Embedder(backbone, device="cpu", cache=EmbeddingCache(os.environ["FSL_APP_CACHE"]))
    plain = embed_project(store, project.id, embedder)
    for learner in ("protonet", "maml"):
        store.update_settings(project.id, {"learner": learner})
        settings = ProjectSettings.of(store.get_project(project.id))
        own = for_learner(plain, embedder, learner, None, lambda i: store.image_path(plain.ids[i]))
        page = ProjectPage(store, project, settings, embedder, own)
        assert page.set_for("protonet").stage is None
        assert page.set_for("linear").stage is None
        wide = page.set_for("maml")
        assert wide.stage is not None and wide.ids == plain.ids
        assert wide.inputs.shape[1] == plain.embedding_dim + wide.stage.shape[1]
