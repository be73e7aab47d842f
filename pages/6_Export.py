"""Export: the labeled pictures, labels and predictions, and the model itself; import a dataset."""

from __future__ import annotations

import re

import streamlit as st

from fsl_app.classifier import predict_set
from fsl_app.deploy.bundle import bundle_bytes
from fsl_app.embedded_set import waiting_note
from fsl_app.plural import counted
from fsl_app.project.dataset_zip import DatasetZipError
from fsl_app.project.io import (
    export_dataset_zip,
    image_table,
    import_dataset_zip,
    table_csv,
    table_json,
)
from fsl_app.project.store import StoreError
from fsl_app.ui import icons
from fsl_app.ui.session import classifier_or_none, project_page
from fsl_app.ui.widgets import clear_upload, flash, plain, upload_key

page = project_page("Export and import")
store, project, settings = page.store, page.project, page.settings
embedder, embedded = page.embedder, page.embedded
file_stem = re.sub(r"[^\w.-]+", "_", project.name).strip("_") or "project"
classifier = classifier_or_none(page, explain=False)
# A prepared download belongs to this project as it is now; after any change it is made again.
state_now = (project.id, settings, tuple(zip(embedded.ids, embedded.labels, strict=True)))


def prepared(name: str) -> bytes | None:
    kept = st.session_state.get(name)
    return kept[1] if kept is not None and kept[0] == state_now else None


st.subheader("The model")
if classifier is None:
    st.info("The model can be exported once two classes have examples.")
else:
    st.write(
        "One file with what the app learned: the image model's name and exact preprocessing, "
        "your classes, the examples' embeddings, the calibration and the 'none of these' "
        "threshold. Open it in this app on any machine with fsl_app:"
    )
    st.page_link("pages/7_Use_a_model_file.py", label="Use a model file", icon=icons.MODEL_FILE)
    st.caption("…or, from a command line:")
    st.code(
        f"python -m fsl_app predict --bundle {file_stem}.fslbundle --images FOLDER_OF_PICTURES",
        wrap_lines=True,  # the whole command, never cut off at the box's edge
    )
    if note := waiting_note(embedded.class_counts()):  # the file covers the classes with examples
        st.info(plain(note))
    if st.button("Prepare the model file", key="prepare_bundle"):
        try:
            st.session_state["bundle"] = (
                state_now,
                bundle_bytes(classifier, backbone=embedder.backbone),
            )
        except ValueError as err:  # a model the file cannot hold: say why, keep the page
            st.error(plain(f"The model file cannot be made: {err}"))
    if (bundle := prepared("bundle")) is not None:
        st.download_button(
            "Download the model",
            bundle,
            file_name=f"{file_stem}.fslbundle",
            mime="application/octet-stream",
            key="download_bundle",
        )

st.subheader("Labels and predictions")
predictions = {}
if classifier is not None:
    predictions = {p.id: p for p in predict_set(classifier, embedded, embedded.ids)}
rows = image_table(store.list_images(project.id), predictions, embedded.none_of_these)
csv_column, json_column = st.columns(2)
csv_column.download_button(
    "Download as CSV", table_csv(rows), file_name=f"{file_stem}.csv", mime="text/csv"
)
json_column.download_button(
    "Download as JSON", table_json(rows), file_name=f"{file_stem}.json", mime="application/json"
)
st.caption(
    f"{counted(len(rows), 'picture')}: name, content hash, your label (blank if unlabeled), "
    "and the model's prediction, confidence and 'none of these' flag."
)

st.subheader("The pictures")
include_unlabeled = st.checkbox("Include unlabeled pictures (in a folder 'unlabeled')")
if st.button("Prepare a ZIP of the pictures", key="prepare_zip"):
    with st.spinner("Packing the pictures…"):
        st.session_state["dataset_zip"] = (
            state_now,
            export_dataset_zip(store, project.id, include_unlabeled=include_unlabeled),
        )
if (archive := prepared("dataset_zip")) is not None:
    st.download_button(
        "Download the ZIP (one folder per class)",
        archive,
        file_name=f"{file_stem}.zip",
        mime="application/zip",
        key="download_zip",
    )

st.subheader("Import a dataset")
st.write(
    "A ZIP with one folder per class (the same layout as the export). Classes the project "
    "lacks are created; pictures already here are not added twice."
)
uploaded = st.file_uploader("Drop a ZIP here", type=["zip"], key=upload_key("import_zip"))
if uploaded is not None:
    try:
        with st.spinner("Importing…"):
            report = import_dataset_zip(store, project.id, uploaded.getvalue())
    except (DatasetZipError, StoreError) as err:
        st.error(plain(f"Nothing was imported: {err}"))
    else:
        clear_upload("import_zip")
        messages = [("success", f"Imported: {report.summary()}")]
        messages += [("warning", f"'{r.name}' was not added: {r.message}") for r in report.rejected]
        messages += [("info", f"Skipped: {s}") for s in report.skipped[:20]]
        flash(messages)
        st.rerun()
