"""Projects (home): projects (create, open, rename, delete, demo) and what the model runs on."""

from __future__ import annotations

import streamlit as st

from fsl_app.backbones import DEFAULT_BACKBONE, available_backbones, backbone_words
from fsl_app.embeddings import DEVICE_NAMES, available_devices, describe_device
from fsl_app.learners import DEFAULT_LEARNER, LEARNERS, available_learners
from fsl_app.plural import counted
from fsl_app.project.demo import open_demo_project
from fsl_app.project.store import TRASH_DAYS, StoreError
from fsl_app.trust.open_set import DEFAULT_STRICTNESS
from fsl_app.ui import icons
from fsl_app.ui.fine_tuning import fine_tuning_panel
from fsl_app.ui.image_models import image_model_settings
from fsl_app.ui.session import ProjectSettings, current_project, select_project, store_or_stop
from fsl_app.ui.widgets import plain

JUST_DELETED_KEY = "_just_deleted_project"

st.title("Teach the computer new image classes")
st.write(
    "Give a few example pictures of each class; the app sorts new pictures into your classes, "
    "says how sure it is, says *none of these* when a picture fits no class, and tells you "
    "which picture to label next."
)

store = store_or_stop()
project = current_project(store)
projects = store.list_projects()

left, right = st.columns([2, 1])
with left:
    st.subheader("Your projects")
    if not projects:
        st.info("No projects yet: make one under **New project**, or open the demo.")
    for item in projects:
        counts = store.list_classes(item.id)
        n_images = len(store.list_images(item.id))
        row = st.columns([4, 1])
        is_open = project is not None and item.id == project.id
        row[0].markdown(
            (f"{icons.PROJECTS} **open:** " if is_open else "")
            + f"{plain(item.name)} · {counted(len(counts), 'class', 'classes')}"
            f" · {counted(n_images, 'picture')}"
        )
        if counts:
            row[0].caption(
                "Examples: " + " · ".join(f"{plain(c.name)} {c.n_examples}" for c in counts)
            )
        if row[1].button("Open", key=f"open_{item.id}", disabled=is_open):
            select_project(item.id)
            st.rerun()

with right:
    st.subheader("New project")
    with st.form("new_project", clear_on_submit=True):
        new_name = st.text_input("Project name", placeholder="e.g. Birds in my garden")
        if st.form_submit_button("Create project", type="primary"):
            try:
                created = store.create_project(new_name)
            except StoreError as err:
                st.error(plain(str(err)))
            else:
                select_project(created.id)
                st.rerun()
    st.write("Or start from real photos of birds, flowers, fruit, road signs and tools:")
    if st.button("Open the demo project", key="demo", icon=":material/photo_library:"):
        try:
            with st.spinner("Copying the demo photos…"):
                demo = open_demo_project(store)
        except (FileNotFoundError, StoreError) as err:
            st.error(plain(f"The demo cannot be made here: {err}"))
        else:
            select_project(demo.id)
            st.rerun()

just_deleted = st.session_state.get(JUST_DELETED_KEY)
trash = store.list_trash()
if just_deleted is not None and project is None:  # until another project is opened
    deleted = next((t for t in trash if t.kind == "project" and t.id == just_deleted), None)
    if deleted is not None:
        message, undo = st.columns([4, 1])
        message.success(
            f"Deleted '{plain(deleted.name)}'. It stays under 'Recently deleted' below for "
            f"{TRASH_DAYS} days."
        )
        if undo.button("Restore it", key="undo_delete", icon=":material/undo:"):
            try:
                store.restore(deleted)
            except StoreError as err:
                st.error(plain(str(err)))
            else:
                st.session_state.pop(JUST_DELETED_KEY, None)
                select_project(deleted.id)
                st.rerun()
if trash:
    with st.expander(f"Recently deleted ({len(trash)})"):
        st.caption(f"Deleted projects and classes stay here {TRASH_DAYS} days, then go for good.")
        for item in trash:
            row = st.columns([4, 1])
            where = "project" if item.kind == "project" else f"class in {item.project_name}"
            row[0].text(
                f"{item.name} ({where}) · {counted(item.n_images, 'picture')}"
                f" · kept until {item.purged_after}"
            )
            if row[1].button("Restore", key=f"restore_{item.kind}_{item.id}"):
                try:
                    store.restore(item)
                except StoreError as err:
                    st.error(plain(str(err)))
                else:
                    st.rerun()

if project is None:
    st.stop()

st.divider()
st.subheader(f"Open project: {plain(project.name)}")
settings = ProjectSettings.of(project)
st.page_link("pages/1_Classes.py", label="Next: define your classes", icon=icons.CLASSES)

with st.expander("Rename or delete this project"):
    renamed = st.text_input("New name", value=project.name, key="rename_value")
    if st.button("Rename", key="rename"):
        try:
            store.rename_project(project.id, renamed)
        except StoreError as err:
            st.error(plain(str(err)))
        else:
            st.rerun()
    if not st.session_state.get("confirm_delete_project"):
        if st.button("Delete this project…", key="delete", icon=":material/delete:"):
            st.session_state["confirm_delete_project"] = True
            st.rerun()
    else:
        st.warning(
            f"Delete '{plain(project.name)}' with all its classes and images? You can restore "
            f"it under 'Recently deleted' for {TRASH_DAYS} days."
        )
        yes, no = st.columns(2)
        if yes.button("Yes, delete it", type="primary", key="delete_yes"):
            store.delete_project(project.id)
            st.session_state[JUST_DELETED_KEY] = project.id
            select_project(None)
            st.session_state["confirm_delete_project"] = False
            st.rerun()
        if no.button("Cancel", key="delete_no"):
            st.session_state["confirm_delete_project"] = False
            st.rerun()

st.subheader("How the model works")
running_on = describe_device()
st.write(
    f"Running on: **{running_on}**"
    + (
        " — no GPU here; everything works, the first reading of images is slower."
        if running_on == "CPU"
        else ""
    )
)
devices = available_devices()
learners = available_learners()
image_model_settings(store, project)
with st.form("model_settings"):
    device = st.selectbox(
        "Device",
        devices,
        index=devices.index(settings.device) if settings.device in devices else 0,
        format_func=DEVICE_NAMES.get,
    )
    learner = st.selectbox(
        "How it learns your classes from the examples",
        learners,
        index=learners.index(settings.learner) if settings.learner in learners else 0,
        format_func=lambda name: LEARNERS[name].label,
    )
    strictness = st.slider(
        'How readily it answers "none of these"',
        min_value=0.0,
        max_value=1.5,
        value=float(settings.strictness),
        step=0.05,
        help=(
            f"{DEFAULT_STRICTNESS:g} is the default. Higher answers 'none of these' more often, "
            "lower less often, 0 never."
        ),
    )
    if st.form_submit_button("Save model settings"):
        store.update_settings(
            project.id,
            {"device": device, "learner": learner, "strictness": strictness},
        )
        st.success("Saved. Every page now uses these settings.")
# The form's values: what is saved, also in the run that saves them.
fine_tuning_panel(store, project.id, settings.backbone, device, learner)
if learner != DEFAULT_LEARNER:
    st.caption(
        f"This project learns with '{LEARNERS[learner].display_name}' instead of the "
        f"default '{LEARNERS[DEFAULT_LEARNER].display_name}'."
    )
with st.expander("Advanced: the technical names", icon=":material/science:"):
    st.markdown(
        f"**Image model** (a pretrained [timm](https://github.com/huggingface/pytorch-image-models)"
        f" backbone; the default is `{DEFAULT_BACKBONE}`):\n\n"
        + "\n".join(f"- {backbone_words(b).display_name}: `{b}`" for b in available_backbones())
        + "\n\n**How it learns** (the few-shot learner, over the image model's embeddings):\n\n"
        + "\n".join(
            f"- {entry.display_name}: {entry.technical_name} (`{name}`)"
            for name, entry in LEARNERS.items()
        )
        + "\n\n**None of these**: an open-set detector; the strictness scales its distance "
        "threshold."
    )
