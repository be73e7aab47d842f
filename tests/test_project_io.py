"""A project's pictures and labels in and out: ZIP round trip, CSV and JSON tables."""

from __future__ import annotations

import csv
import io
import json
import zipfile
from types import SimpleNamespace

import pytest

from fsl_app.project import store as store_module
from fsl_app.project.dataset_zip import DatasetZipError, ZipImage, imagefolder_zip
from fsl_app.project.io import (
    export_dataset_zip,
    image_table,
    import_dataset_zip,
    table_csv,
    table_json,
)
from fsl_app.project.store import Store, StoreError


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


def seven_classes(photos, seventh: str) -> bytes:
    """A ZIP of seven class folders with a real photo each; the seventh folder is ``seventh``."""
    files = [p for name in sorted(photos) for p in photos[name][:2]][:7]
    names = [f"class {i}" for i in range(1, 7)] + [seventh]
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:  # as another tool writes it: names as they are
        for name, path in zip(names, files, strict=True):
            archive.writestr(f"{name}/{path.name}", path.read_bytes())
    return buffer.getvalue()


@pytest.mark.parametrize(
    ("seventh", "problem"),
    [("x" * 130, "too long (130 characters)"), ("bad\x07name", "invisible character")],
)
def test_a_bad_seventh_folder_name_imports_nothing(store, photos, seventh, problem):
    project = store.create_project("Kept")
    store.add_images(project.id, [(photos["bird"][0].name, photos["bird"][0].read_bytes())])
    before = (store.list_classes(project.id), store.list_images(project.id))

    with pytest.raises(DatasetZipError) as refused:
        import_dataset_zip(store, project.id, seven_classes(photos, seventh))

    assert problem in str(refused.value)
    assert str(refused.value).startswith(f"The folder '{seventh[:20].replace(chr(7), '?')}")
    assert "Rename the folder" in str(refused.value)
    assert (store.list_classes(project.id), store.list_images(project.id)) == before


def test_a_save_failing_half_way_imports_nothing(store, photos, monkeypatch):
    project = store.create_project("Kept")
    writes = []

    def fail_on_the_fifth(path, data):
        writes.append(path)
        if len(writes) == 5:
            raise OSError(28, "No space left on device")
        write_blob(path, data)

    write_blob = store_module._write_blob
    monkeypatch.setattr(store_module, "_write_blob", fail_on_the_fifth)
    with pytest.raises(StoreError, match="so nothing was added"):
        import_dataset_zip(store, project.id, seven_classes(photos, "class 7"))
    assert store.list_classes(project.id) == [] and store.list_images(project.id) == []

    monkeypatch.setattr(store_module, "_write_blob", write_blob)
    report = import_dataset_zip(store, project.id, seven_classes(photos, "class 7"))
    assert report.added == 7 and len(report.classes_created) == 7


def test_classes_named_like_windows_devices_export_and_come_back(store, photos):
    source = store.create_project("Devices")
    for index, name in enumerate(("CON", "nul", "Com1")):
        store.add_class(source.id, name)
        photo = photos["fish"][index]
        store.add_images(source.id, [(photo.name, photo.read_bytes())], name)
    archive = export_dataset_zip(store, source.id)
    assert sorted(n.split("/")[0] for n in zipfile.ZipFile(io.BytesIO(archive)).namelist()) == [
        "CON_",
        "Com1_",
        "nul_",
    ]
    copy = store.create_project("Copy")
    report = import_dataset_zip(store, copy.id, archive)
    assert report.classes_created == ["CON", "nul", "Com1"] and report.added == 3
