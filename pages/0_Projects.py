"""Projects (home): projects (create, open, rename, delete, demo) and what the model runs on."""

from __future__ import annotations

import streamlit as st

from fsl_app.backbones import DEFAULT_BACKBONE, available_backbones
from fsl_app.embeddings import DEVICE_NAMES, available_devices, describe_device
from fsl_app.learners import DEFAULT_LEARNER, LEARNERS, available_learners
from fsl_app.project.demo import create_demo_project
from fsl_app.project.store import TRASH_DAYS, StoreError
from fsl_app.trust.open_set import DEFAULT_STRICTNESS
from fsl_app.ui.fine_tuning import fine_tuning_panel
from fsl_app.ui.session import ProjectSettings, current_project, select_project, store_or_stop
from fsl_app.ui.widgets import plain

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
        st.info("No projects yet: create one below, or try the demo.")
    for item in projects:
        counts = store.list_classes(item.id)
        n_images = len(store.list_images(item.id))
        row = st.columns([4, 1])
        is_open = project is not None and item.id == project.id
        marker = "▶ " if is_open else ""
        row[0].text(f"{marker}{item.name} · {len(counts)} classes · {n_images} images")
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
    if st.button("Open the demo project", key="demo"):
        try:
            with st.spinner("Copying the demo photos…"):
                demo = create_demo_project(store)
        except (FileNotFoundError, StoreError) as err:
            st.error(plain(f"The demo cannot be made here: {err}"))
        else:
            select_project(demo.id)
            st.rerun()

trash = store.list_trash()
if trash:
    with st.expander(f"Recently deleted ({len(trash)})"):
        st.caption(f"Deleted projects and classes stay here {TRASH_DAYS} days, then go for good.")
        for item in trash:
            row = st.columns([4, 1])
            where = "project" if item.kind == "project" else f"class in {item.project_name}"
            row[0].text(
                f"{item.name} ({where}) · {item.n_images} images · kept until {item.purged_after}"
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
st.page_link("pages/1_Classes.py", label="Next: define your classes", icon="🏷️")

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
        if st.button("Delete this project…", key="delete"):
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
backbones = available_backbones()
learners = available_learners()
with st.form("model_settings"):
    device = st.selectbox(
        "Device",
        devices,
        index=devices.index(settings.device) if settings.device in devices else 0,
        format_func=DEVICE_NAMES.get,
    )
    backbone = st.selectbox(
        "Image model (reads each picture once)",
        backbones,
        index=backbones.index(settings.backbone) if settings.backbone in backbones else 0,
        help=f"{DEFAULT_BACKBONE} is fast and works offline. Changing it reads every image again.",
    )
    learner = st.selectbox(
        "Few-shot learner (learns your classes from the examples)",
        learners,
        index=learners.index(settings.learner) if settings.learner in learners else 0,
        format_func=lambda name: LEARNERS[name].label,
    )
    strictness = st.slider(
        '"None of these" strictness',
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
            {"device": device, "backbone": backbone, "learner": learner, "strictness": strictness},
        )
        st.success("Saved. Every page now uses these settings.")
fine_tuning_panel(store, project.id, settings.backbone, settings.device)
if settings.learner != DEFAULT_LEARNER:
    st.caption(
        f"This project uses '{settings.learner}' instead of the default '{DEFAULT_LEARNER}'."
    )
