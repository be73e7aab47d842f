"""The open project of a browser session, its settings, and its images as embeddings.

Every page but the home page starts with :func:`open_project`: it finds the project this tab
has open (kept in the session and in the address, so a reload stays on it), or says how to open
one and stops the page.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace

import streamlit as st

from fsl_app import warmup
from fsl_app.backbones import DEFAULT_BACKBONE, BackboneError
from fsl_app.classifier import CalibratedClassifier
from fsl_app.embedded_set import EmbeddedSet, embed_project, for_learner
from fsl_app.embeddings import Embedder, ImageSource, ProgressCallback
from fsl_app.errors import UnusableInputError
from fsl_app.learners import DEFAULT_LEARNER, available_learners
from fsl_app.project.store import Project, Store, StoreError
from fsl_app.trust.open_set import DEFAULT_STRICTNESS
from fsl_app.ui import icons
from fsl_app.ui.resources import fitted_classifier, get_embedder, open_store
from fsl_app.ui.widgets import plain, show_flashed

PROJECT_KEY = "project_id"
PREPARING = "Preparing your pictures for fine-tuning (once per picture)"
MAX_PROJECT_ID = 2**63 - 1  # SQLite's largest integer: a larger id overflows in a query


@dataclass(frozen=True)
class ProjectSettings:
    backbone: str
    learner: str
    strictness: float
    device: str

    @classmethod
    def of(cls, project: Project) -> ProjectSettings:
        settings = project.settings
        learner = settings.get("learner", DEFAULT_LEARNER)
        return cls(
            backbone=settings.get("backbone", DEFAULT_BACKBONE),
            learner=learner if learner in available_learners() else DEFAULT_LEARNER,
            strictness=float(settings.get("strictness", DEFAULT_STRICTNESS)),
            device=settings.get("device", "auto"),
        )


def store_or_stop() -> Store:
    try:
        return open_store()
    except StoreError as err:
        st.error(str(err))
        st.stop()


def select_project(project_id: int | None) -> None:
    if project_id is None:
        st.session_state.pop(PROJECT_KEY, None)
        st.query_params.pop("project", None)
    else:
        st.session_state[PROJECT_KEY] = project_id
        st.query_params["project"] = str(project_id)


def project_id_of(text: str) -> int | None:
    """The project id an address's ``?project=`` names, or None when it names none.

    Only ASCII digits within SQLite's integer range: ``str.isdigit`` also accepts "²" and
    other Unicode digits, and a 23-digit number overflows SQLite.
    """
    if not (text.isascii() and text.isdigit()):
        return None
    project_id = int(text)
    return project_id if 0 < project_id <= MAX_PROJECT_ID else None


def current_project(store: Store) -> Project | None:
    project_id = st.session_state.get(PROJECT_KEY)
    if project_id is None and "project" in st.query_params:
        project_id = project_id_of(st.query_params["project"])
        if project_id is None:
            select_project(None)  # a mistyped or forged address: no project is open
    if project_id is None:
        return None
    try:
        project = store.get_project(project_id)
    except StoreError:
        select_project(None)  # deleted in another tab
        return None
    select_project(project.id)
    return project


def open_project(store: Store) -> Project:
    """The tab's open project; without one, a pointer to the Projects page and a stop."""
    project = current_project(store)
    if project is None:
        st.info("Open or create a project first, on the Projects page.")
        st.page_link("pages/0_Projects.py", label="Go to Projects", icon=icons.PROJECTS)
        st.stop()
    st.sidebar.caption(f"Project: **{plain(project.name)}**")
    return project


def embedder_or_stop(settings: ProjectSettings) -> Embedder:
    try:
        return get_embedder(settings.backbone, settings.device)
    except (BackboneError, RuntimeError) as err:
        st.error(
            f"The image model '{settings.backbone}' cannot be loaded here: {err} "
            "Choose another one on the Projects page."
        )
        st.stop()


def load_embedded(store: Store, project: Project, embedder: Embedder) -> EmbeddedSet:
    """The project's pictures as embeddings; a progress bar while new ones go through the
    model."""
    bar = st.empty()

    def progress(done: int, total: int) -> None:
        bar.progress(done / max(total, 1), text=f"Reading new images: {done} of {total}")

    embedded = embed_project(store, project.id, embedder, progress=progress)
    bar.empty()
    for unreadable in embedded.unreadable:
        st.warning(plain(f"'{unreadable.name}' is left out: {unreadable.reason}"))
    return embedded


def prepared_for(
    embedded: EmbeddedSet,
    embedder: Embedder,
    learner: str,
    source_of: Callable[[int], ImageSource],
) -> EmbeddedSet:
    """``embedded`` as ``learner`` takes it (:func:`fsl_app.embedded_set.for_learner`): for the
    learner that fine-tunes the image model's last stage, each picture with the activations
    entering that stage, computed once per picture (:func:`with_preparing_progress`) and read
    from their cache afterwards; for the others, unchanged and at no cost.

    ``embedded`` is the set of embeddings alone (``stage`` None). A picture that cannot be read
    again leaves fine-tuning out for now, with a warning; the page and the pictures stay.
    """
    try:
        return with_preparing_progress(
            lambda progress: for_learner(
                embedded, embedder, learner, None, source_of, progress=progress
            )
        )
    except (UnusableInputError, StoreError) as err:
        st.warning(
            plain(
                f"{err} Until then the image model is not fine-tuned: only the small model "
                "on top of it learns your classes."
            )
        )
        return embedded


def with_preparing_progress(
    prepare: Callable[[ProgressCallback], EmbeddedSet],
) -> EmbeddedSet:
    """``prepare(progress)`` (:func:`fsl_app.embedded_set.for_learner` or ``for_classifier``)
    with a progress bar while pictures go through the image model up to its last stage, and a
    spinner saying what happens until the first batch moves the bar."""
    bar = st.empty()

    def progress(done: int, total: int) -> None:
        bar.progress(done / max(total, 1), text=f"Pictures prepared: {done} of {total}")

    try:
        # The spinner shows only after half a second: a set read from the cache shows nothing.
        with st.spinner(f"{PREPARING}…"):
            return prepare(progress)
    finally:
        bar.empty()


def classifier_or_none(page: ProjectPage, *, explain: bool = True) -> CalibratedClassifier | None:
    """The fitted classifier, or None after saying what to add first (when ``explain``)."""
    problems = page.embedded.readiness()
    if problems:
        if explain:
            for problem in problems:
                st.info(plain(problem))  # names the classes that lack examples
            st.page_link("pages/1_Classes.py", label="Go to Classes", icon=icons.CLASSES)
        return None
    try:
        return fitted_classifier(
            page.embedded,
            backbone_key=page.embedder.cache_key,
            learner=page.settings.learner,
            strictness=page.settings.strictness,
        )
    except UnusableInputError as err:  # e.g. a damaged checkpoint: say so, keep the page
        st.error(str(err))
        return None


def wait_until_ready() -> None:
    """Let the server's background warm-up (:mod:`fsl_app.warmup`) finish, saying so while it
    runs: a page that comes before it is done needs the same modules, imported once."""
    warmup.start()  # a first visit straight to a project page: warm up now, while it waits
    if warmup.running():
        with st.spinner("Getting the app ready (once after it starts)…", show_time=True):
            warmup.wait()


@dataclass(frozen=True)
class ProjectPage:
    """What every project page starts from: the open project, its settings and embeddings."""

    store: Store
    project: Project
    settings: ProjectSettings
    embedder: Embedder
    # As the project's learner takes it: with the last stage's activations for the learner
    # that fine-tunes that stage (EmbeddedSet.inputs), else the embeddings alone.
    embedded: EmbeddedSet

    def set_for(self, learner: str) -> EmbeddedSet:
        """The project's pictures as ``learner`` takes them (each learner compared gets its
        own: the one that fine-tunes the last stage with its activations, the others without)."""
        if learner == self.settings.learner:
            return self.embedded
        return prepared_for(
            replace(self.embedded, stage=None), self.embedder, learner, self.source_of
        )

    def source_of(self, row: int) -> ImageSource:
        """The file of the picture in row ``row`` of :attr:`embedded`."""
        return self.store.image_path(self.embedded.ids[row])


def project_page(title: str, intro: str | None = None) -> ProjectPage:
    """The page's heading and messages from the last action, then the open project's
    pictures as its learner takes them (with a progress bar for pictures not read yet,
    :func:`prepared_for`); stops the page, saying why,
    when no project is open or its image model cannot be loaded."""
    store = store_or_stop()
    project = open_project(store)
    st.title(title)
    if intro:
        st.write(intro)
    show_flashed()
    wait_until_ready()
    settings = ProjectSettings.of(project)
    embedder = embedder_or_stop(settings)
    page = ProjectPage(store, project, settings, embedder, load_embedded(store, project, embedder))
    return replace(
        page, embedded=prepared_for(page.embedded, embedder, settings.learner, page.source_of)
    )
