"""A project's pictures as an embedded set: embeddings by stored hash, predictions, suggestions,
honest evaluation.

Real Tux Paint photos through the real default backbone, in a real store.
"""

from __future__ import annotations

import hashlib
import io
import zipfile

import numpy as np
import pytest

from fsl_app.active import suggest
from fsl_app.classifier import CalibratedClassifier, fit_classifier, predict_set
from fsl_app.datasets import DEMO_CLASSES, tuxpaint_photos
from fsl_app.embedded_set import (
    EmbeddedSet,
    embed_project,
    embed_uploads,
    few_example_hints,
    readiness,
    waiting_note,
)
from fsl_app.embeddings import Embedder, EmbeddingCache
from fsl_app.evaluation.held_out import evaluate_held_out
from fsl_app.project.demo import (
    DEMO_EXAMPLES_PER_CLASS,
    DEMO_UNLABELED_PER_CLASS,
    create_demo_project,
)
from fsl_app.project.io import export_sorted_zip
from fsl_app.project.sorting import label_unlabeled, sure_choices
from fsl_app.project.store import NONE_OF_THESE, Store
from fsl_app.trust.badges import badge


@pytest.fixture(scope="session")
def embedder(backbone, tmp_path_factory) -> Embedder:
    """One embedder and cache for the module: the demo photos are embedded once."""
    cache = EmbeddingCache(tmp_path_factory.mktemp("workspace") / "embeddings.sqlite")
    return Embedder(backbone, cache=cache)


@pytest.fixture
def demo(tmp_path):
    store = Store(tmp_path / "data")
    project = create_demo_project(store)
    yield store, project
    store.close()


def test_demo_project_has_labeled_examples_and_a_pool(demo):
    store, project = demo
    classes = store.list_classes(project.id)
    assert [c.name for c in classes] == ["bird", "flower", "fruit", "road sign", "tool"]
    assert all(c.n_examples == DEMO_EXAMPLES_PER_CLASS for c in classes)
    assert len(store.list_images(project.id, labeled=False)) == 5 * DEMO_UNLABELED_PER_CLASS
    assert create_demo_project(store).name.endswith("(2)")  # a second demo gets its own name


def test_features_come_from_the_cache_by_hash_without_new_forward_passes(demo, embedder):
    store, project = demo
    progress = []
    first = embed_project(store, project.id, embedder, progress=lambda *a: progress.append(a))
    n = len(store.list_images(project.id))
    assert first.embeddings.shape == (n, embedder.backbone.embedding_dim)
    forwarded = embedder.images_forwarded
    again = embed_project(store, project.id, embedder, progress=lambda *a: progress.append(a))
    assert embedder.images_forwarded == forwarded
    np.testing.assert_array_equal(first.embeddings, again.embeddings)
    # Labeling changes labels only.
    store.label(project.id, [first.ids[-1]], "bird")
    relabeled = embed_project(store, project.id, embedder)
    assert relabeled.labels[-1] == "bird" and embedder.images_forwarded == forwarded


def test_predictions_of_the_pool_are_mostly_right_with_explanations(demo, embedder):
    store, project = demo
    features = embed_project(store, project.id, embedder)
    classifier = fit_classifier(features)
    predictions = predict_set(classifier, features)
    assert [p.id for p in predictions] == features.unlabeled_ids
    photos = tuxpaint_photos(DEMO_CLASSES)
    truth = {p.name: name for name, paths in photos.items() for p in paths}
    right = sum(p.prediction == truth[p.name] and not p.unknown for p in predictions)
    # 5-way 4-shot, chance is 0.2: benchmarks/demo.py measures 36 of 40 right, 0 "none of
    # these" and none wrong at 90% confidence or more.
    assert right / len(predictions) >= 0.8
    assert sum(p.unknown for p in predictions) <= 2
    assert not [p for p in predictions if p.confidence >= 0.9 and p.prediction != truth[p.name]]
    labeled_ids = {i for i, label in zip(features.ids, features.labels, strict=True) if label}
    for p in predictions:
        assert abs(sum(p.probabilities.values()) - 1) < 1e-5
        assert 0 <= p.uncertainty <= 1
        assert p.badge == badge(p.confidence, p.unknown)
        assert p.neighbours and set(p.neighbours) <= labeled_ids
        assert p.explanation


def test_readiness_says_what_to_add():
    assert readiness({"cat": 3}) == [
        "Add at least two classes: the app tells classes apart, so it needs two or more."
    ]
    assert readiness({"cat": 3, "dog": 0}) == ["Add example images to: dog."]
    assert readiness({"cat": 3, "dog": 1}) == []
    # A new class without examples waits; the two with examples are enough to predict.
    assert readiness({"cat": 3, "dog": 1, "fox": 0}) == []
    assert waiting_note({"cat": 3, "dog": 1, "fox": 0}) == (
        "'fox' is waiting for examples, so the model leaves it out for now and answers among "
        "'cat', 'dog'."
    )
    assert waiting_note({"cat": 3, "dog": 1}) is None
    assert few_example_hints({"cat": 3, "dog": 1})[0].startswith("'dog' has 1 example:")


def test_a_class_without_examples_waits_and_the_others_keep_their_predictions(demo, embedder):
    store, project = demo
    store.add_class(project.id, "fish")  # just made: no example yet
    embedded = embed_project(store, project.id, embedder)
    assert embedded.readiness() == [] and embedded.waiting_classes == ["fish"]
    classifier = fit_classifier(embedded)
    assert "fish" not in classifier.classes_ and len(classifier.classes_) == len(DEMO_CLASSES)
    assert classifier.notes[0].startswith("'fish' is waiting for examples")
    predictions = predict_set(classifier, embedded)
    assert len(predictions) == len(embedded.unlabeled_ids)


def test_accepting_the_sure_ones_and_the_sorted_zip(demo, embedder):
    store, project = demo
    embedded = embed_project(store, project.id, embedder)
    predictions = predict_set(fit_classifier(embedded), embedded)
    sure = sure_choices(predictions)
    assert sure and all(p.badge == "sure" for p in predictions if p.id in sure)
    assert sure_choices(predictions, "bird") == {i: c for i, c in sure.items() if c == "bird"}
    # Another window labeled one of them meanwhile and removed another: both are left alone.
    taken, removed, *rest = sure
    store.label(project.id, [taken], "tool")
    store.remove_images(project.id, [removed])
    outcome = label_unlabeled(store, project.id, sure)
    assert outcome.labeled == {i: sure[i] for i in rest}
    assert outcome.already == {taken: "tool"} and outcome.gone == [removed]
    names = dict(zip(embedded.ids, embedded.names, strict=True))
    kinds = [kind for kind, _ in outcome.messages(names)]
    assert kinds == ["success", "info", "warning"]
    assert f"{len(rest)} pictures accepted as examples" in outcome.messages(names)[0][1]

    # The rest of the pile, sorted into folders: examples in their class, pictures to sort
    # where the model puts them, "none of these" for the marked and the unknown.
    embedded = embed_project(store, project.id, embedder)
    predictions = {p.id: p for p in predict_set(fit_classifier(embedded), embedded)}
    marked = next(iter(predictions))
    store.mark_none_of_these(project.id, [marked])
    with zipfile.ZipFile(io.BytesIO(export_sorted_zip(store, project.id, predictions))) as z:
        folders = {
            hashlib.sha256(z.read(name)).hexdigest(): name.split("/")[0] for name in z.namelist()
        }
    images = store.list_images(project.id)
    assert len(folders) == len(images)  # every picture once
    for image in images:
        if image.class_name is not None:
            expected = image.class_name
        elif image.sha256 == marked or predictions[image.sha256].unknown:
            expected = NONE_OF_THESE
        else:
            expected = predictions[image.sha256].prediction
        assert folders[image.sha256] == expected, image.name
    assert folders[marked] == NONE_OF_THESE
    to_sort = export_sorted_zip(store, project.id, predictions, include_examples=False)
    with zipfile.ZipFile(io.BytesIO(to_sort)) as z:
        assert len(z.namelist()) == len(store.list_images(project.id, labeled=False))


def test_suggestions_come_from_the_pool_with_reasons(demo, embedder):
    store, project = demo
    features = embed_project(store, project.id, embedder)
    pool = {i for i, label in zip(features.ids, features.labels, strict=True) if label is None}
    classifier = fit_classifier(features)
    suggestions = suggest(features, classifier, k=3)
    assert len(suggestions) == 3
    assert {features.ids[row] for row, _ in suggestions} <= pool
    assert all(s.reason for _, s in suggestions)
    skipped = features.ids[suggestions[0][0]]
    again = suggest(features, classifier, k=3, skipped=[skipped])
    assert skipped not in {features.ids[row] for row, _ in again}


def test_held_out_evaluation_predicts_each_example_without_it(demo, embedder):
    store, project = demo
    features = embed_project(store, project.id, embedder)
    support, labels, ids = features.examples()
    result = evaluate_held_out(support, labels, ids)
    assert result.method == "leave-one-out" and result.n == len(labels)
    assert result.confusion.sum() == result.n
    assert result.low <= result.accuracy <= result.high
    assert result.accuracy > 0.4  # 5 classes, 2 examples left per class when one is held out
    assert sum(right for right, _ in result.per_class().values()) == result.correct
    assert sum(b.count for b in result.reliability) == result.n
    true, predicted = result.true[0], result.predicted[0]
    assert result.ids[0] in result.images(true, predicted)


def test_evaluation_needs_two_classes_with_two_examples():
    features = np.random.default_rng(0).normal(size=(3, 8)).astype(np.float32)
    with pytest.raises(ValueError, match="two classes two or more examples"):
        evaluate_held_out(features, ["a", "a", "b"], ["1", "2", "3"])


def test_none_of_these_is_kept_everywhere_and_can_be_taken_back(demo, embedder, backbone):
    from fsl_app.deploy.bundle import bundle_bytes, load_bundle
    from fsl_app.project.io import (
        NONE_OF_THESE,
        export_dataset_zip,
        image_table,
        import_dataset_zip,
    )
    from fsl_app.trust.badges import MARKED

    store, project = demo
    marked = store.list_images(project.id, labeled=False)[0].sha256
    store.mark_none_of_these(project.id, [marked])
    embedded = embed_project(store, project.id, embedder)
    assert embedded.none_of_these == {marked}
    classifier = fit_classifier(embedded)
    # The marked picture is a negative example of the open-set detector...
    np.testing.assert_array_equal(classifier.open_set_.negatives_.shape, (1, 1280))
    # ...so a picture just like it is "none of these" whatever the threshold says.
    row = embedded.rows([marked])
    assert classifier.predict_calibrated(embedded.embeddings[row]).unknown.all()
    # The record says it was the user's mark, with its own badge, not a class guess.
    records = {p.id: p for p in predict_set(classifier, embedded)}
    mine = records[marked]
    assert mine.marked and mine.unknown and mine.badge == MARKED
    assert mine.verdict == "none of these (marked by you)"
    assert not any(p.marked for i, p in records.items() if i != marked)
    # Exports: the table's label, the dataset ZIP's folder, which import maps back to the mark.
    rows = image_table(store.list_images(project.id), records, embedded.none_of_these)
    assert [r["label"] for r in rows if r["sha256"] == marked] == [NONE_OF_THESE]
    archive = export_dataset_zip(store, project.id)
    copy = store.create_project("copy")
    report = import_dataset_zip(store, copy.id, archive)
    assert NONE_OF_THESE not in report.classes_created
    assert store.none_of_these(copy.id) == [marked]
    assert store.list_classes(copy.id)[0].n_examples == DEMO_EXAMPLES_PER_CLASS
    # The model file keeps the negatives, and the restored model flags what the fitted one did.
    restored = load_bundle(bundle_bytes(classifier, backbone=backbone)).classifier
    np.testing.assert_allclose(restored.open_set_.negatives_, classifier.open_set_.negatives_)
    np.testing.assert_array_equal(
        restored.predict_calibrated(embedded.embeddings).unknown,
        classifier.predict_calibrated(embedded.embeddings).unknown,
    )
    # Undo: "not none of these", or a class.
    assert store.unmark_none_of_these(project.id, [marked]) == 1
    assert not embed_project(store, project.id, embedder).none_of_these
    store.mark_none_of_these(project.id, [marked])
    store.label(project.id, [marked], "bird")
    again = embed_project(store, project.id, embedder)
    assert not again.none_of_these and len(fit_classifier(again).open_set_.negatives_) == 0


def test_uncertainty_reads_the_same_way_as_the_confidence(demo, embedder):
    store, project = demo
    embedded = embed_project(store, project.id, embedder)
    for p in predict_set(fit_classifier(embedded), embedded):
        assert p.uncertainty == pytest.approx(1 - p.confidence)
        assert p.confidence >= p.probabilities[p.runner_up]


def test_a_picture_flagged_by_a_marked_one_says_so(tux_embeddings):
    """Flagged because it is nearer to a picture marked "none of these" than to any class,
    not because it is far from every class: the explanation says which."""
    features, labels = tux_embeddings.features, tux_embeddings.labels
    birds, fish = np.flatnonzero(labels == "bird"), np.flatnonzero(labels == "fish")
    flowers = np.flatnonzero(labels == "flower")
    support = np.r_[birds[:5], fish[:5]]
    model = CalibratedClassifier().fit(
        features[support], labels[support], negatives=features[flowers[:5]]
    )
    query = features[flowers[5:15]]
    records = model.predict_pictures(query, ids=list("abcdefghij"), names=list("abcdefghij"))
    by_negative = [
        r
        for r, distance in zip(records, model.predict_calibrated(query).distance, strict=True)
        if r.unknown and distance <= model.threshold_
    ]
    assert by_negative, "some flowers are flagged by the marked flowers alone"
    assert all("marked 'none of these'" in r.explanation for r in by_negative)


def test_the_pool_leaves_out_marked_pictures_and_has_one_order():
    """A picture marked "none of these" belongs to no class: it is a negative, never part of
    the pool a semi-supervised learner refines its classes on; and the same pictures give
    the same pool whatever order they came in."""
    embeddings = np.arange(12, dtype=np.float32).reshape(4, 3)
    embedded = EmbeddedSet(
        ids=["d", "a", "c", "b"],
        names=["d", "a", "c", "b"],
        labels=[None, "bird", None, None],
        embeddings=embeddings,
        classes=["bird"],
        none_of_these=frozenset({"c"}),
    )
    np.testing.assert_array_equal(embedded.pool(), embeddings[[3, 0]])  # b, d
    np.testing.assert_array_equal(embedded.negatives(), embeddings[[2]])


def test_uploads_not_kept_get_the_same_prediction_as_in_the_project(demo, embedder):
    store, project = demo
    embedded = embed_project(store, project.id, embedder)
    classifier = fit_classifier(embedded)
    picture = store.list_images(project.id, labeled=False)[0]
    tested = embed_uploads(
        embedder,
        [("shot.png", store.image_bytes(picture.sha256)), ("notes.png", b"not a picture")],
    )
    assert [u.name for u in tested.unreadable] == ["notes.png"]
    assert tested.names == ["shot.png"] and tested.labels == [None]
    # The one classify path: the same picture, the same numbers, stored or only tested.
    (tried,) = predict_set(classifier, tested)
    (stored,) = predict_set(classifier, embedded, [picture.sha256])
    assert tried.prediction == stored.prediction and tried.badge == stored.badge
    assert tried.probabilities == pytest.approx(stored.probabilities)
    assert len(store.list_images(project.id)) == len(embedded.ids)  # nothing was added


def test_classes_come_in_the_users_order_everywhere():
    # Made in this order: "tool" first. A classifier's columns are alphabetical; the buttons,
    # menus and bars show the order the user made, and names of no class come last.
    made = EmbeddedSet(
        ids=[], names=[], labels=[], embeddings=np.zeros((0, 4)), classes=["tool", "bird", "fig"]
    )
    assert made.in_class_order(["bird", "Zebra", "fig", "tool", "apple"]) == [
        "tool",
        "bird",
        "fig",
        "apple",
        "Zebra",
    ]
