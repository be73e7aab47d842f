"""Predict: what the model says about each unlabeled picture; accept or correct with one click."""

from __future__ import annotations

import streamlit as st

from fsl_app.classifier import BADGES, predict_set
from fsl_app.project.io import image_table, table_csv
from fsl_app.project.store import StoreError
from fsl_app.ui.session import classifier_or_none, project_page
from fsl_app.ui.widgets import (
    BADGE_COLOURS,
    add_report_messages,
    clear_upload,
    flash,
    plain,
    runner_up_text,
    show_badge,
    show_thumbnail,
    upload_key,
)

PAGE_SIZE = 12
SORTS = {
    "Least sure first": lambda p: (not p.unknown, p.confidence),
    "Most sure first": lambda p: (p.unknown, -p.confidence),
    "By predicted class": lambda p: (p.prediction, -p.confidence),
    "By name": lambda p: p.name.casefold(),
}

page = project_page("Predict")
store, project, settings = page.store, page.project, page.settings
embedded = page.embedded

new_files = st.file_uploader(
    "Drop new pictures to sort here", accept_multiple_files=True, key=upload_key("predict_files")
)
if new_files:
    try:
        report = store.add_images(project.id, [(f.name, f.getvalue()) for f in new_files])
    except StoreError as err:
        st.error(plain(f"Nothing was added: {err}"))
    else:
        clear_upload("predict_files")
        flash(add_report_messages(report, "the pictures to sort"))
        st.rerun()

classifier = classifier_or_none(page)
if classifier is None:
    st.stop()
for note in classifier.notes:
    st.info(plain(note))

if not embedded.unlabeled_ids:
    st.info("Every picture is labeled. Drop new pictures above to see what the app makes of them.")
    st.stop()
predictions = predict_set(classifier, embedded)

classes = [str(c) for c in classifier.classes_]
# One tile per badge, named as the cards name it.
summary = st.columns(1 + len(BADGES))
summary[0].metric("Pictures to sort", len(predictions))
for tile, name in zip(summary[1:], BADGES, strict=True):
    tile.metric(name.capitalize(), sum(p.badge == name for p in predictions))
st.caption(
    'Confidence is tuned on your own examples: of the pictures shown as "80% sure", about 8 in '
    '10 should be right. "None of these" means the picture is unlike the examples of every class.'
)

controls = st.columns([1, 2, 2])
order = controls[0].selectbox("Sort", list(SORTS))
badges = controls[1].pills(
    "Show", list(BADGE_COLOURS), selection_mode="multi", default=list(BADGE_COLOURS)
)
shown_classes = controls[2].multiselect("Predicted class", classes, default=classes)
shown = sorted(
    (p for p in predictions if p.badge in badges and p.prediction in shown_classes),
    key=SORTS[order],
)
st.download_button(
    "Download predictions (CSV)",
    table_csv(
        image_table(
            store.list_images(project.id, labeled=False),
            {p.id: p for p in predictions},
            embedded.none_of_these,
        )
    ),
    file_name=f"{project.name}-predictions.csv",
    mime="text/csv",
)

if not shown:
    st.info("No picture matches these filters.")
    st.stop()
pages = max(1, -(-len(shown) // PAGE_SIZE))
page = st.pagination(pages, key="predict_page") if pages > 1 else 1
for prediction in shown[(page - 1) * PAGE_SIZE : page * PAGE_SIZE]:
    key = prediction.id[:16]
    with st.container(border=True):
        picture, verdict, why = st.columns([1, 2, 2])
        with picture:
            show_thumbnail(store, prediction.id, prediction.name, width=160)
        with verdict:
            st.markdown("**Looks like:**")
            st.text(prediction.verdict)
            show_badge(prediction)
            runner_up = runner_up_text(prediction)
            if runner_up:
                st.caption(plain(runner_up))
            accept, correct = st.columns(2)
            if accept.button(
                f"✓ Yes, {plain(prediction.prediction)}",
                key=f"accept_{key}",
                disabled=prediction.unknown,
            ):
                store.label(project.id, [prediction.id], prediction.prediction)
                flash(
                    [
                        (
                            "success",
                            f"'{prediction.name}' is now an example of {prediction.prediction}.",
                        )
                    ]
                )
                st.rerun()
            choice = correct.selectbox(
                "No, it is…",
                classes,
                index=None,
                placeholder="No, it is…",
                key=f"correct_{key}",
                label_visibility="collapsed",
            )
            if choice is not None:
                store.label(project.id, [prediction.id], choice)
                flash([("success", f"'{prediction.name}' is now an example of {choice}.")])
                st.rerun()
            if prediction.marked:
                if st.button("Not none of these", key=f"unmark_{key}"):
                    store.unmark_none_of_these(project.id, [prediction.id])
                    flash([("info", f"'{prediction.name}' is a picture to sort again.")])
                    st.rerun()
            elif st.button("None of these classes", key=f"none_{key}"):
                store.mark_none_of_these(project.id, [prediction.id])
                flash([("info", f"'{prediction.name}' is marked as none of these classes.")])
                st.rerun()
        with why:
            st.caption(plain(prediction.explanation))
            near = st.columns(3)
            for column, neighbour in zip(near, prediction.neighbours, strict=False):
                with column:
                    show_thumbnail(store, neighbour, width=80)
