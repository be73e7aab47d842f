"""Use a model file: sort new pictures with a model someone exported, no project needed."""

from __future__ import annotations

import base64
from datetime import datetime

import streamlit as st

from fsl_app.classifier import predict_set
from fsl_app.deploy.batch import COLUMNS, error_row, prediction_row
from fsl_app.embedded_set import embed_uploads, for_classifier
from fsl_app.errors import UnusableInputError
from fsl_app.images import image_sha256
from fsl_app.plural import counted
from fsl_app.project.io import table_csv
from fsl_app.trust.badges import BADGES, MARKED, confidence_caption
from fsl_app.ui.model_file import open_model_file
from fsl_app.ui.session import with_preparing_progress
from fsl_app.ui.widgets import plain, thumbnail_of

st.title("Sort pictures with a model file")
st.write(
    "A model file is what the Export page saves (it ends in .fslbundle): the classes someone "
    "taught the app, ready to use. Open one here and drop pictures: each gets its class and "
    "how sure the model is. No project is needed, and the pictures are not kept."
)

model_file = st.file_uploader("Open a model file", key="model_file")
if model_file is None:
    st.stop()
opened = open_model_file(model_file.name, model_file.getvalue())
if isinstance(opened, str):
    st.error(plain(opened))
    st.stop()
bundle = opened.bundle
classes = f"{counted(len(bundle.classes), 'class', 'classes')}: {', '.join(bundle.classes)}"
st.success(plain(f"'{model_file.name}' sorts pictures into {classes}."))
try:
    saved = datetime.fromisoformat(bundle.created).strftime("on %d %B %Y, %H:%M UTC")
except ValueError:  # a file that does not say when it was saved
    saved = "at a time it does not say"
st.caption(plain(f"Saved {saved} by fsl_app {bundle.app_version}."))

files_column, folder_column = st.columns(2)
files = files_column.file_uploader(
    "Drop pictures to sort here (many at once is fine)",
    accept_multiple_files=True,
    key="model_pictures",
)
folder = folder_column.file_uploader(
    "…or choose a whole folder", accept_multiple_files="directory", key="model_folder"
)
uploads = [(f.name, f.getvalue()) for f in [*(files or []), *(folder or [])]]
if not uploads:
    st.stop()

bar = st.empty()


def progress(done: int, total: int) -> None:
    bar.progress(done / max(total, 1), text=f"Reading the pictures: {done} of {total}")


pictures = embed_uploads(opened.embedder, uploads, progress=progress)
bar.empty()
# A model that fine-tuned the image model's last stage takes each picture's activations
# entering that stage too, read from the bytes given.
content = {image_sha256(data): data for _, data in uploads}
try:
    pictures = with_preparing_progress(
        lambda progress: for_classifier(
            pictures,
            opened.embedder,
            bundle.classifier,
            lambda row: content[pictures.ids[row]],
            progress=progress,
        )
    )
except UnusableInputError as err:
    st.error(plain(str(err)))
    st.stop()
predictions = predict_set(bundle.classifier, pictures)
for unreadable in pictures.unreadable:
    st.warning(plain(f"'{unreadable.name}' was left out: {unreadable.reason}"))

badges = [b for b in BADGES if b != MARKED]  # marking a picture needs a project
summary = st.columns(1 + len(badges))
summary[0].metric("Pictures sorted", len(predictions))
for tile, name in zip(summary[1:], badges, strict=True):
    tile.metric(name.capitalize(), sum(p.badge == name for p in predictions))

data = {image_sha256(content): content for _, content in uploads}
st.dataframe(
    [
        {
            "picture": "data:image/jpeg;base64,"
            + base64.b64encode(thumbnail_of(data[p.id], 96) or b"").decode(),
            "name": p.name,
            "class": p.verdict,
            "confidence": round(100 * p.confidence),
            "how sure": p.badge,
        }
        for p in predictions
    ],
    column_config={
        "picture": st.column_config.ImageColumn("picture"),
        "confidence": st.column_config.ProgressColumn(
            "confidence", format="%d%%", min_value=0, max_value=100
        ),
    },
    hide_index=True,
    row_height=64,
)
st.caption(confidence_caption("the examples the model was made from"))
rows = [prediction_row(p) for p in predictions]
rows += [error_row(u.name, u.reason) for u in pictures.unreadable]
stem = model_file.name.rsplit(".", 1)[0] or "model"
st.download_button(
    "Download the results (CSV)",
    table_csv(rows, COLUMNS),
    file_name=f"{stem}-sorted.csv",
    mime="text/csv",
)
