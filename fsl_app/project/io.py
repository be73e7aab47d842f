"""A project's data in and out: dataset ZIPs in ImageFolder layout, labels and predictions as CSV
or JSON.

Import goes through the store like any upload, so bad files are refused one by one and the
project keeps everything it had; a ZIP is imported all or nothing, one picture in memory at a time.
"""

from __future__ import annotations

import csv
import io
import json
import unicodedata
from collections.abc import Collection, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from fsl_app.files import spreadsheet_safe
from fsl_app.images import image_sha256
from fsl_app.plural import counted
from fsl_app.project.dataset_zip import DatasetZip, DatasetZipError, ZipImage, imagefolder_zip
from fsl_app.project.store import (
    NONE_OF_THESE,
    ProjectImage,
    Rejected,
    Store,
    StoreError,
    check_name,
)

TABLE_COLUMNS = ("name", "sha256", "label", "prediction", "confidence", "unknown")
# The label of a picture the user marked "none of these classes": in a table's label column
# and as a dataset ZIP's folder, which import maps back to the mark.


@dataclass
class ImportReport:
    classes_created: list[str] = field(default_factory=list)
    added: int = 0
    duplicates: int = 0
    rejected: list[Rejected] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)  # entries of the ZIP that are not images

    def summary(self) -> str:
        parts = [f"{counted(self.added, 'image')} added"]
        if self.classes_created:
            parts.append(f"new classes: {', '.join(self.classes_created)}")
        if self.duplicates:
            parts.append(f"{self.duplicates} already in the project")
        if self.rejected:
            parts.append(f"{len(self.rejected)} not usable")
        return "; ".join(parts) + "."


def import_dataset_zip(store: Store, project_id: int, data: bytes) -> ImportReport:
    """Add a ZIP of class folders (and unlabeled images) to the project, all or nothing.

    Classes it names that the project lacks are created. Raises DatasetZipError when the bytes
    are not a usable ZIP or a folder name cannot be a class name, and StoreError when saving
    fails; nothing is added then. Pictures that are not usable images are refused one by one.
    """
    with DatasetZip(data) as dataset:
        class_names = [n for n in dataset.class_names if n.casefold() != NONE_OF_THESE]
        for name in class_names:
            try:
                check_name("class", name)
            except StoreError as err:
                message = str(err)
                raise DatasetZipError(
                    f"The folder '{_shown(name)}' cannot be a class: {message[0].lower()}"
                    f"{message[1:]} Rename the folder, make the ZIP again and upload it."
                ) from None
        marked: list[str] = []
        added = store.add_dataset(project_id, class_names, _marks_taken(dataset.images(), marked))
        skipped = list(dataset.problems)
    store.mark_none_of_these(project_id, marked)
    return ImportReport(
        classes_created=added.classes_created,
        added=len(added.added),
        duplicates=len(added.duplicates),
        rejected=added.rejected,
        skipped=skipped,
    )


def _marks_taken(
    images: Iterable[ZipImage], marked: list[str]
) -> Iterator[tuple[str | None, str, bytes]]:
    """(class, name, bytes) of each image; those in the "none of these" folder come unlabeled
    and their hashes go into ``marked``."""
    for image in images:
        if image.class_name is not None and image.class_name.casefold() == NONE_OF_THESE:
            marked.append(image_sha256(image.data))
            yield None, image.name, image.data
        else:
            yield image.class_name, image.name, image.data


def _shown(name: str, limit: int = 40) -> str:
    """A name as a sentence can quote it: invisible characters as '?', a long one cut short."""
    visible = "".join("?" if unicodedata.category(c) == "Cc" else c for c in name)
    return visible if len(visible) <= limit else visible[: limit - 1] + "…"


def export_dataset_zip(store: Store, project_id: int, *, include_unlabeled: bool = False) -> bytes:
    """The project's labeled images as ``class/name`` in a ZIP (unlabeled under ``unlabeled/``,
    those marked "none of these" under ``none of these/``)."""
    marked = set(store.none_of_these(project_id))
    images = [
        image
        for image in store.list_images(project_id)
        if include_unlabeled or image.class_name is not None or image.sha256 in marked
    ]
    return imagefolder_zip(
        ZipImage(
            NONE_OF_THESE if image.sha256 in marked else image.class_name,
            image.name,
            store.image_bytes(image.sha256),
        )
        for image in images
    )


def export_sorted_zip(
    store: Store,
    project_id: int,
    predictions: Mapping[str, TablePrediction],
    *,
    include_examples: bool = True,
) -> bytes:
    """The pile, sorted: each picture to sort in the folder of the class the model puts it in,
    those it answers "none of these" for (or the user marked so) under ``none of these/``, and,
    with ``include_examples``, every example in its class's folder.

    ``predictions`` maps a picture's sha256 to its prediction (``fsl_app.classifier.
    predict_set``); a picture to sort without one (not readable) is left out.
    """
    marked = set(store.none_of_these(project_id))

    def folder(image: ProjectImage) -> str | None:
        if image.class_name is not None:
            return image.class_name if include_examples else None
        predicted = predictions.get(image.sha256)
        if image.sha256 in marked or (predicted is not None and predicted.unknown):
            return NONE_OF_THESE
        return None if predicted is None else predicted.prediction

    placed = [(folder(image), image) for image in store.list_images(project_id)]
    return imagefolder_zip(
        ZipImage(place, image.name, store.image_bytes(image.sha256))
        for place, image in placed
        if place is not None
    )


class TablePrediction(Protocol):
    """What :func:`image_table` reads of a prediction.

    A protocol rather than one class, so that whichever record the caller predicted with
    (today ``fsl_app.workspace.ImagePrediction``) fills the table as it is.
    """

    @property
    def prediction(self) -> str: ...  # the closest class, also when ``unknown``

    @property
    def confidence(self) -> float: ...

    @property
    def unknown(self) -> bool: ...  # "none of these"


def image_table(
    images: Sequence[ProjectImage],
    predictions: Mapping[str, TablePrediction],
    none_of_these: Collection[str] = (),
) -> list[dict[str, object]]:
    """One row per image: its name, hash, label and the model's prediction (blank if none).

    ``predictions`` maps an image's sha256 to any object with ``prediction``, ``confidence``
    and ``unknown`` attributes (see :class:`TablePrediction`); images whose sha256 is in
    ``none_of_these`` were marked so by the user: their label is "none of these".
    """
    rows = []
    for image in images:
        predicted = predictions.get(image.sha256)
        rows.append(
            {
                "name": image.name,
                "sha256": image.sha256,
                "label": NONE_OF_THESE if image.sha256 in none_of_these else image.class_name or "",
                "prediction": "" if predicted is None else predicted.prediction,
                "confidence": "" if predicted is None else round(predicted.confidence, 4),
                "unknown": "" if predicted is None else bool(predicted.unknown),
            }
        )
    return rows


def table_csv(rows: Sequence[Mapping[str, object]], columns: Sequence[str] = TABLE_COLUMNS) -> str:
    """CSV of :func:`image_table` rows (or other rows of ``columns``), safe to open in a
    spreadsheet.

    A file or class name that a spreadsheet program would run as a formula gets a leading
    apostrophe (:func:`fsl_app.files.spreadsheet_safe`).
    """
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    writer.writerows({k: spreadsheet_safe(v) for k, v in row.items()} for row in rows)
    return buffer.getvalue()


def table_json(rows: Sequence[Mapping[str, object]]) -> str:
    return json.dumps(
        [{k: (None if v == "" else v) for k, v in row.items()} for row in rows], indent=2
    )
