"""Classes: add, rename and delete classes; drop example images into each."""

from __future__ import annotations

import streamlit as st

from fsl_app.embedded_set import few_example_hints
from fsl_app.project.store import StoreError
from fsl_app.ui.evaluation import label_suspects
from fsl_app.ui.session import load_embedded, project_page
from fsl_app.ui.widgets import (
    add_report_messages,
    clear_upload,
    flash,
    plain,
    show_thumbnail,
    upload_key,
)

PAGE_SIZE = 12

page = project_page(
    "Classes", "Make a class for each kind of picture, and drop a few example pictures into each."
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


def add_files(files, class_name: str | None, where: str, uploader: str) -> None:
    """Store uploaded files, embed them with a progress bar, and report what happened."""
    try:
        report = store.add_images(project.id, [(f.name, f.getvalue()) for f in files], class_name)
    except StoreError as err:
        st.error(plain(f"Nothing was added: {err}"))
        return
    clear_upload(uploader)
    st.session_state["_last_class"] = class_name
    if report.added:
        load_embedded(store, project, embedder)  # embeds the new images now, with progress
    flash(add_report_messages(report, where))
    st.rerun()


counts = embedded.class_counts()
st.caption(" · ".join(f"{plain(c.name)}: {c.n_examples}" for c in classes))
for hint in few_example_hints(counts):
    st.info(plain(hint))

# After an upload the page reruns with new counts in the tab labels: open the tab just used.
tab_labels = [f"{plain(c.name)} ({c.n_examples})" for c in classes]
last_used = st.session_state.get("_last_class")
tabs = st.tabs(
    tab_labels,
    default=next(
        (t for c, t in zip(classes, tab_labels, strict=True) if c.name == last_used), None
    ),
)
for tab, item in zip(tabs, classes, strict=True):
    with tab:
        key = f"class_{item.id}"
        files = st.file_uploader(
            f"Drop example pictures of '{plain(item.name)}' here (many at once is fine)",
            accept_multiple_files=True,
            key=upload_key(f"{key}_files"),
        )
        folder = st.file_uploader(
            "…or choose a whole folder",
            accept_multiple_files="directory",
            key=upload_key(f"{key}_folder"),
        )
        with st.expander("Take a picture with the camera"):
            photo = st.camera_input("Camera", key=upload_key(f"{key}_camera"))
        if files:
            add_files(files, item.name, f"'{item.name}'", f"{key}_files")
        if folder:
            add_files(folder, item.name, f"'{item.name}'", f"{key}_folder")
        if photo is not None:
            add_files([photo], item.name, f"'{item.name}'", f"{key}_camera")

        images = store.list_images(project.id, class_name=item.name)
        if images:
            pages = max(1, -(-len(images) // PAGE_SIZE))
            page = st.pagination(pages, key=f"{key}_page") if pages > 1 else 1
            shown = images[(page - 1) * PAGE_SIZE : page * PAGE_SIZE]
            columns = st.columns(6)
            for i, image in enumerate(shown):
                with columns[i % 6]:
                    show_thumbnail(store, image.sha256, image.name, width=140)
                    if st.button("Remove", key=f"remove_{item.id}_{image.sha256[:16]}"):
                        store.remove_images(project.id, [image.sha256])
                        st.rerun()
        else:
            st.caption("No examples yet.")

        with st.expander(f"Rename or delete '{plain(item.name)}'"):
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
            else:
                st.warning(
                    f"Delete the class '{plain(item.name)}'? Its {item.n_examples} pictures:"
                )
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

st.subheader("Check the labels")
st.caption(
    "Each example is judged by a model that has not seen it: an example that looks like another "
    "class may have been put in the wrong one."
)
kept = store.confirmed_labels(project.id)
suspects = [(i, s) for i, s in label_suspects(embedded, settings) if i not in kept]
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
                flash([("success", f"Moved '{names[image_id]}' to {suspect.suspected}.")])
                st.rerun()
            if keep.button(f"Keep it in {plain(suspect.label)}", key=f"keep_{key}"):
                store.confirm_labels(project.id, [image_id])
                st.rerun()

st.page_link("pages/2_Predict.py", label="Next: see what the app predicts", icon="🔮")
