"""Predict: what the model says about each picture to sort; accept or correct with one click,
accept everything it is sure of at once, and download the pile sorted into folders."""

from __future__ import annotations

import streamlit as st

from fsl_app.classifier import Prediction, predict_set
from fsl_app.plural import counted
from fsl_app.project.io import export_sorted_zip, image_table, table_csv
from fsl_app.project.sorting import label_unlabeled, sure_choices, sure_counts
from fsl_app.project.store import StoreError
from fsl_app.trust.badges import BADGES, confidence_caption
from fsl_app.ui import icons
from fsl_app.ui.session import classifier_or_none, project_page
from fsl_app.ui.widgets import (
    BADGE_COLOURS,
    add_report_messages,
    camera_shot,
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
# Answers given on a card since the page last ran whole: id -> (kind, sentence). A card that
# has one shows it instead of its buttons; the page's next whole run starts afresh.
ANSWERED = "_predict_answered"
JUST_ADDED = "_predict_just_added"  # ids of the pictures added last: shown first
LAST_ACCEPTED = "_predict_last_accepted"  # ids of the last "accept all sure": for its undo

page = project_page("Predict")
store, project, settings = page.store, page.project, page.settings
embedded = page.embedded
st.session_state[ANSWERED] = {}


def add_to_sort(pictures: list[tuple[str, bytes]], uploader: str) -> None:
    """Uploads and camera shots go through the same door: the store, which refuses bad files
    one by one and notices the same picture twice."""
    try:
        report = store.add_images(project.id, pictures)
    except StoreError as err:
        st.error(plain(f"Nothing was added: {err}"))
        return
    clear_upload(uploader)
    st.session_state[JUST_ADDED] = [image.sha256 for image in report.added]
    flash(add_report_messages(report, "the pictures to sort"))
    st.rerun()


new_files = st.file_uploader(
    "Drop new pictures to sort here", accept_multiple_files=True, key=upload_key("predict_files")
)
if new_files:
    add_to_sort([(f.name, f.getvalue()) for f in new_files], "predict_files")
# The camera turns on only when asked: a browser asks permission as soon as it is shown.
if st.toggle("Take pictures with the camera", key="predict_camera_on"):
    shot = st.camera_input("Take a picture to sort", key=upload_key("predict_camera"))
    if shot is not None:
        add_to_sort([camera_shot(shot)], "predict_camera")

classifier = classifier_or_none(page)
if classifier is None:
    st.stop()
for note in classifier.notes:
    st.info(plain(note))
if embedded.waiting_classes:
    st.page_link("pages/1_Classes.py", label="Add examples on the Classes page", icon=icons.CLASSES)

if not embedded.unlabeled_ids:
    st.info("Every picture is labeled. Drop new pictures above to see what the app makes of them.")
    st.stop()
predictions = predict_set(classifier, embedded)
names = dict(zip(embedded.ids, embedded.names, strict=True))


@st.fragment
def prediction_card(prediction: Prediction, all_classes: list[str]) -> None:
    """One picture to sort with its answer and the buttons to accept, correct or mark it.

    A fragment: a click here reruns this card alone, so accepting a picture takes no refit
    and no redraw of the page; the card then says what was done, and the other cards catch up
    at the page's next run.
    """
    done = st.session_state[ANSWERED].get(prediction.id)
    with st.container(border=True):
        picture, verdict, why = st.columns([1, 2, 2])
        with picture:
            show_thumbnail(store, prediction.id, prediction.name, width=160)
        slot = verdict.empty()
        if done is None:
            with slot.container():
                done = card_buttons(prediction, all_classes)
            if done is not None:
                st.session_state[ANSWERED][prediction.id] = done
        if done is not None:
            kind, text = done
            with slot.container():
                getattr(st, kind)(plain(text))
            return
        with why:
            st.caption(plain(prediction.explanation))
            near = st.columns(3)
            for column, neighbour in zip(near, prediction.neighbours, strict=False):
                with column:
                    show_thumbnail(store, neighbour, width=80)


def card_buttons(prediction: Prediction, all_classes: list[str]) -> tuple[str, str] | None:
    """The card's answer and buttons; what a click did, as (kind, sentence), or None."""
    key = prediction.id[:16]
    st.markdown("**Looks like:**")
    st.text(prediction.verdict)
    show_badge(prediction)
    runner_up = runner_up_text(prediction)
    if runner_up:
        st.caption(plain(runner_up))
    accept, correct = st.columns(2)
    choice = None
    if accept.button(
        f"Yes, {plain(prediction.prediction)}",
        key=f"accept_{key}",
        icon=":material/check:",
        disabled=prediction.unknown,
    ):
        choice = prediction.prediction
    corrected = correct.selectbox(
        "No, it is…",
        all_classes,
        index=None,
        placeholder="No, it is…",
        key=f"correct_{key}",
        label_visibility="collapsed",
    )
    choice = choice or corrected
    if choice is not None:
        messages = label_unlabeled(store, project.id, {prediction.id: choice}).messages(names)
        return messages[0]
    if prediction.marked:
        if st.button("Not none of these", key=f"unmark_{key}"):
            store.unmark_none_of_these(project.id, [prediction.id])
            return ("info", f"'{prediction.name}' is a picture to sort again.")
    elif st.button("None of these classes", key=f"none_{key}"):
        store.mark_none_of_these(project.id, [prediction.id])
        return ("info", f"'{prediction.name}' is marked as none of these classes.")
    return None


def accept_sure(class_name: str | None) -> None:
    outcome = label_unlabeled(store, project.id, sure_choices(predictions, class_name))
    st.session_state[LAST_ACCEPTED] = list(outcome.labeled)
    flash(outcome.messages(names))
    st.rerun()


classes = [str(c) for c in classifier.classes_]
# One tile per badge, named as the cards name it.
summary = st.columns(1 + len(BADGES))
summary[0].metric("Pictures to sort", len(predictions))
for tile, name in zip(summary[1:], BADGES, strict=True):
    tile.metric(name.capitalize(), sum(p.badge == name for p in predictions))
st.caption(confidence_caption("your own examples"))

sure = sure_counts(predictions)
with st.container(border=True):
    st.markdown("**Sort the pile**")
    if sure:
        st.caption(
            "Accept what the model is sure of: each picture becomes an example of its class "
            "(and the model learns from it). Check a few first: sure is right about 8 in 10."
        )
        # A row that wraps, each button as wide as its words: no label is cut off.
        buttons = st.container(horizontal=True)
        if buttons.button(
            f"Accept all {counted(sum(sure.values()), 'sure picture')}",
            key="accept_all_sure",
            type="primary",
            icon=":material/done_all:",
        ):
            accept_sure(None)
        for class_name in (c for c in classes if c in sure):
            if buttons.button(
                f"Only {plain(class_name)} ({sure[class_name]})",
                key=f"accept_sure_{classes.index(class_name)}",
            ):
                accept_sure(class_name)
    else:
        st.caption("The model is sure of none of the pictures left: answer them one by one below.")
    last = st.session_state.get(LAST_ACCEPTED)
    if last and st.button(
        f"Undo: put the {counted(len(last), 'picture')} just accepted back to sort", key="undo"
    ):
        store.label(project.id, last, None)
        st.session_state[LAST_ACCEPTED] = []
        flash([("info", f"{counted(len(last), 'picture')} back among the pictures to sort.")])
        st.rerun()
    by_id = {p.id: p for p in predictions}
    csv_column, zip_column = st.columns(2)
    csv_column.download_button(
        "Download predictions (CSV)",
        table_csv(
            image_table(store.list_images(project.id, labeled=False), by_id, embedded.none_of_these)
        ),
        file_name=f"{project.name}-predictions.csv",
        mime="text/csv",
        on_click="ignore",
        icon=":material/table:",
    )
    # Made when clicked (Streamlit runs the callable then), not at every run of the page.
    zip_column.download_button(
        "Download the sorted pictures (ZIP)",
        lambda: export_sorted_zip(store, project.id, by_id),
        file_name=f"{project.name}-sorted.zip",
        mime="application/zip",
        on_click="ignore",
        icon=":material/folder_zip:",
        key="download_sorted",
    )
    st.caption(
        "The ZIP has one folder per class, with your examples and each picture to sort where "
        'the model puts it, and a folder "none of these" for pictures unlike every class.'
    )

controls = st.columns([1, 2, 2])
order = controls[0].selectbox("Sort", list(SORTS))
badges = controls[1].pills(
    "Show", list(BADGE_COLOURS), selection_mode="multi", default=list(BADGE_COLOURS)
)
shown_classes = controls[2].multiselect("Predicted class", classes, default=classes)
just_added = set(st.session_state.get(JUST_ADDED, []))
shown = sorted(
    (p for p in predictions if p.badge in badges and p.prediction in shown_classes),
    key=lambda p: (p.id not in just_added, SORTS[order](p)),  # just added first
)
st.caption(
    "A click on a card answers that card at once; the other predictions learn from your "
    "answers at the page's next run."
)
st.button("Update the predictions now", key="refresh", icon=":material/refresh:")

if not shown:
    st.info("No picture matches these filters.")
    st.stop()
n_pages = max(1, -(-len(shown) // PAGE_SIZE))
page_number = st.pagination(n_pages, key="predict_page") if n_pages > 1 else 1
for prediction in shown[(page_number - 1) * PAGE_SIZE : page_number * PAGE_SIZE]:
    prediction_card(prediction, embedded.classes)
