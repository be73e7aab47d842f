"""Classes: one card per class to teach it (pictures, a whole folder, the camera), and beside
them a live test of what the model makes of a new picture."""

from __future__ import annotations

import streamlit as st

from fsl_app.classifier import predict_set
from fsl_app.embedded_set import embed_uploads, few_example_hints
from fsl_app.plural import counted
from fsl_app.project.store import ProjectClass, StoreError
from fsl_app.ui.evaluation import label_suspects
from fsl_app.ui.session import classifier_or_none, load_embedded, prepared_for, project_page
from fsl_app.ui.widgets import (
    add_report_messages,
    camera_shot,
    clear_upload,
    flash,
    plain,
    probability_bars,
    show_badge,
    show_thumbnail,
    thumbnail_of,
    upload_key,
)

PAGE_SIZE = 12

page = project_page(
    "Classes",
    "Make a class for each kind of picture and give each a few example pictures. "
    "Try the model on a new picture at any time, on the right.",
)
store, project, settings = page.store, page.project, page.settings
embedder, embedded = page.embedder, page.embedded

with st.form("add_class", clear_on_submit=True):
    name = st.text_input("New class name", placeholder="e.g. robin")
    if st.form_submit_button("Add class", type="primary"):
        try:
            store.add_class(project.id, name)
        except StoreError as err:
            st.error(plain(str(err)))
        else:
            st.rerun()

classes = store.list_classes(project.id)
if not classes:
    st.info("No classes yet: add the first one above (you will need at least two).")
    st.stop()
for hint in few_example_hints(embedded.class_counts()):
    st.info(plain(hint))


def add_files(files: list[tuple[str, bytes]], class_name: str, uploader: str) -> None:
    """Store pictures in a class, embed them with a progress bar, and report what happened."""
    try:
        report = store.add_images(project.id, files, class_name)
    except StoreError as err:
        st.error(plain(f"Nothing was added: {err}"))
        return
    clear_upload(uploader)
    if report.added:
        load_embedded(store, project, embedder)  # embeds the new images now, with progress
    flash(add_report_messages(report, f"'{class_name}'"))
    st.rerun()


def class_card(item: ProjectClass) -> None:
    """A class's card: its examples, and three ways to add more (pictures, folder, camera)."""
    key = f"class_{item.id}"
    with st.container(border=True):
        st.markdown(f"#### {plain(item.name)}")
        st.caption(counted(item.n_examples, "example"))
        files_column, folder_column = st.columns(2)
        files = files_column.file_uploader(
            f"Drop example pictures of '{plain(item.name)}' here (many at once is fine)",
            accept_multiple_files=True,
            key=upload_key(f"{key}_files"),
        )
        folder = folder_column.file_uploader(
            "…or choose a whole folder",
            accept_multiple_files="directory",
            key=upload_key(f"{key}_folder"),
        )
        photo = None
        if st.toggle(":material/photo_camera: Add pictures with the camera", key=f"{key}_camera"):
            photo = st.camera_input(
                f"Take a picture of '{plain(item.name)}'", key=upload_key(f"{key}_shot")
            )
        if files:
            add_files([(f.name, f.getvalue()) for f in files], item.name, f"{key}_files")
        if folder:
            add_files([(f.name, f.getvalue()) for f in folder], item.name, f"{key}_folder")
        if photo is not None:
            add_files([camera_shot(photo)], item.name, f"{key}_shot")

        images = store.list_images(project.id, class_name=item.name)
        if images:
            pages = max(1, -(-len(images) // PAGE_SIZE))
            number = st.pagination(pages, key=f"{key}_page") if pages > 1 else 1
            shown = images[(number - 1) * PAGE_SIZE : number * PAGE_SIZE]
            columns = st.columns(4)
            for i, image in enumerate(shown):
                with columns[i % 4]:
                    show_thumbnail(store, image.sha256, image.name, width=96)
                    if st.button("Remove", key=f"remove_{item.id}_{image.sha256[:16]}"):
                        store.remove_images(project.id, [image.sha256])
                        st.rerun()

        with st.expander(f"Rename or delete '{plain(item.name)}'"):
            rename_or_delete(item, key)


def rename_or_delete(item: ProjectClass, key: str) -> None:
    new_name = st.text_input("New name", value=item.name, key=f"{key}_rename_value")
    if st.button("Rename", key=f"{key}_rename"):
        try:
            store.rename_class(project.id, item.name, new_name)
        except StoreError as err:
            st.error(plain(str(err)))
        else:
            st.rerun()
    confirm_key = f"{key}_confirm_delete"
    if not st.session_state.get(confirm_key):
        if st.button("Delete this class…", key=f"{key}_delete"):
            st.session_state[confirm_key] = True
            st.rerun()
        return
    st.warning(f"Delete the class '{plain(item.name)}'? Its {counted(item.n_examples, 'picture')}:")
    keep, drop, cancel = st.columns(3)
    if keep.button("Keep them as unlabeled", key=f"{key}_delete_keep"):
        store.delete_class(project.id, item.name, keep_images=True)
        st.session_state[confirm_key] = False
        st.rerun()
    if drop.button("Delete them too", key=f"{key}_delete_all", type="primary"):
        store.delete_class(project.id, item.name, keep_images=False)
        st.session_state[confirm_key] = False
        st.rerun()
    if cancel.button("Cancel", key=f"{key}_delete_cancel"):
        st.session_state[confirm_key] = False
        st.rerun()


@st.fragment
def live_preview() -> None:
    """What the model says about a camera shot or a dropped picture, at once; the picture is
    kept only when the user adds it to a class."""
    st.subheader(":material/science: Try it")
    classifier = classifier_or_none(page, explain=False)
    if classifier is None:
        st.info(
            "Give at least two classes a few example pictures each; then take or drop a "
            "picture here to see which class the app thinks it is."
        )
        return
    st.caption(
        "Take or drop a picture the app has not seen: it says at once which class it looks "
        "like. The picture is not added to the project unless you say so."
    )
    tests: list[tuple[str, bytes, str]] = []
    if st.toggle(":material/photo_camera: Test with the camera", key="preview_camera_on"):
        shot = st.camera_input("Take a test picture", key=upload_key("preview_shot"))
        if shot is not None:
            tests.append((*camera_shot(shot), "preview_shot"))
    dropped = st.file_uploader("Drop a picture to test", key=upload_key("preview_file"))
    if dropped is not None:
        tests.append((dropped.name, dropped.getvalue(), "preview_file"))
    for name, data, uploader in tests:
        with st.container(border=True):
            preview(name, data, uploader, classifier)


def preview(name: str, data: bytes, uploader: str, classifier) -> None:
    tested = embed_uploads(embedder, [(name, data)])
    if tested.unreadable:
        st.warning(plain(f"'{name}' cannot be tested: {tested.unreadable[0].reason}"))
        return
    # As the classifier takes its pictures (with the last stage's activations for the learner
    # that fine-tunes it), read from the bytes given.
    tested = prepared_for(tested, embedder, settings.learner, lambda _: data)
    prediction = predict_set(classifier, tested)[0]
    picture = thumbnail_of(data)
    if picture is not None:
        st.image(picture, width=192)
    st.markdown(f"**Looks like:** {plain(prediction.verdict)}")
    show_badge(prediction)
    probability_bars(prediction, embedded.in_class_order(list(prediction.probabilities)))
    st.caption(plain(prediction.explanation))
    st.caption("Add this picture to a class as an example:")
    buttons = st.container(horizontal=True)  # as wide as their names, wrapping
    for item in classes:
        if buttons.button(
            f"Add to {plain(item.name)}",
            key=f"{uploader}_add_{item.id}",
            type="primary" if item.name == prediction.prediction else "secondary",
        ):
            add_files([(name, data)], item.name, uploader)


cards, preview_column = st.columns([3, 2], gap="large")
with cards:
    for item in classes:  # the user's order, as in every menu and button (in_class_order)
        class_card(item)
with preview_column:
    live_preview()

st.subheader("Check the labels")
st.caption(
    "Each example is judged by a model that has not seen it. An example is shown here only "
    "when the model is sure it belongs to another class; what you move or keep is not asked "
    "again."
)
suspects = label_suspects(embedded, settings, store.confirmed_labels(project.id))
if not suspects:
    st.caption("No example looks like it is in the wrong class.")
names = dict(zip(embedded.ids, embedded.names, strict=True))
for image_id, suspect in suspects:
    key = image_id[:16]
    with st.container(border=True):
        picture, verdict = st.columns([1, 4])
        with picture:
            show_thumbnail(store, image_id, names[image_id], width=120)
        with verdict:
            st.write(plain(f"'{names[image_id]}' is {suspect.reason}."))
            move, keep = st.columns(2)
            if move.button(f"Move it to {plain(suspect.suspected)}", key=f"move_{key}"):
                store.label(project.id, [image_id], suspect.suspected)
                store.confirm_labels(project.id, [image_id])  # the user decided: not asked again
                flash([("success", f"Moved '{names[image_id]}' to {suspect.suspected}.")])
                st.rerun()
            if keep.button(f"Keep it in {plain(suspect.label)}", key=f"keep_{key}"):
                store.confirm_labels(project.id, [image_id])
                st.rerun()

st.page_link(
    "pages/2_Predict.py", label="Next: see what the app predicts", icon=":material/arrow_forward:"
)
