"""A project's pictures and labels in and out: ZIP round trip, CSV and JSON tables."""

from __future__ import annotations

import csv
import io
import json
from types import SimpleNamespace

import pytest

from fsl_app.project.dataset_zip import DatasetZipError, ZipImage, imagefolder_zip
from fsl_app.project.io import (
    export_dataset_zip,
    image_table,
    import_dataset_zip,
    table_csv,
    table_json,
)
from fsl_app.project.store import Store


@pytest.fixture
def store(tmp_path):
    with Store(tmp_path / "data") as opened:
        yield opened


def test_a_project_exported_as_zip_imports_into_another_unchanged(store, photos):
    source = store.create_project("Source")
    for name in ("bird", "fruit"):
        store.add_class(source.id, name)
        store.add_images(source.id, [(p.name, p.read_bytes()) for p in photos[name][:3]], name)
    store.add_images(source.id, [(p.name, p.read_bytes()) for p in photos["fish"][:2]])
    archive = export_dataset_zip(store, source.id, include_unlabeled=True)

    copy = store.create_project("Copy")
    store.add_class(copy.id, "Bird")  # an existing class is matched whatever its case
    report = import_dataset_zip(store, copy.id, archive)
    assert report.added == 8 and report.classes_created == ["fruit"]
    assert report.summary() == "8 images added; new classes: fruit."

    def contents(project_id):
        return sorted(
            (image.sha256, (image.class_name or "").lower())
            for image in store.list_images(project_id)
        )

    assert contents(copy.id) == contents(source.id)
    again = import_dataset_zip(store, copy.id, archive)
    assert again.added == 0 and again.duplicates == 8


def test_bad_files_in_a_zip_are_refused_one_by_one(store, photos):
    project = store.create_project("Mixed")
    archive = imagefolder_zip(
        [
            ZipImage("bird", "good.png", photos["bird"][0].read_bytes()),
            ZipImage("bird", "broken.png", b"\x89PNG\r\n\x1a\n not really"),
        ]
    )
    report = import_dataset_zip(store, project.id, archive)
    assert report.added == 1
    assert [r.name for r in report.rejected] == ["broken.png"]


def test_not_a_zip_changes_nothing(store, photos):
    project = store.create_project("Kept")
    store.add_images(project.id, [(photos["bird"][0].name, photos["bird"][0].read_bytes())])
    with pytest.raises(DatasetZipError):
        import_dataset_zip(store, project.id, b"this is not a zip file")
    assert len(store.list_images(project.id)) == 1


def test_tables_hold_labels_and_predictions_and_are_safe_in_spreadsheets(store, photos):
    project = store.create_project("Tables")
    store.add_class(project.id, "bird")
    labeled = store.add_images(
        project.id, [("=HYPERLINK(1).png", photos["bird"][0].read_bytes())], "bird"
    ).added[0]
    unlabeled = store.add_images(project.id, [("b.png", photos["bird"][1].read_bytes())]).added[0]
    # Any record with these three attributes will do, e.g. workspace.ImagePrediction.
    predictions = {
        unlabeled.sha256: SimpleNamespace(prediction="bird", confidence=0.91234, unknown=False)
    }
    rows = image_table(store.list_images(project.id), predictions)
    assert rows[0]["label"] == "bird" and rows[0]["prediction"] == ""
    assert rows[1]["prediction"] == "bird" and rows[1]["confidence"] == 0.9123

    parsed = list(csv.DictReader(io.StringIO(table_csv(rows))))
    assert parsed[0]["name"] == "'=HYPERLINK(1).png"  # not run as a formula
    assert parsed[1]["unknown"] == "False"
    as_json = json.loads(table_json(rows))
    assert as_json[0]["prediction"] is None and as_json[1]["sha256"] == unlabeled.sha256
    assert labeled.sha256 == as_json[0]["sha256"]
