"""Map of pictures (the embedding map): every picture as a point, similar pictures close
together; click or lasso to label."""

from __future__ import annotations

import streamlit as st

from fsl_app import projection
from fsl_app.active import suggest
from fsl_app.classifier import predict_set
from fsl_app.plural import counted
from fsl_app.projection import (
    LAYOUT_WORDS,
    METHODS,
    SYMBOL_WORDS,
    map_figure,
    map_points,
    selected_ids,
    slow_first_time,
)
from fsl_app.trust.badges import MARKED
from fsl_app.ui import icons
from fsl_app.ui.session import classifier_or_none, project_page
from fsl_app.ui.widgets import flash, show_thumbnail

MAX_SHOWN_SELECTED = 12

page = project_page(
    "Map of pictures",
    "Each point is a picture; pictures the model finds alike are close together. "
    f"{SYMBOL_WORDS['example'].capitalize()} are your examples, {SYMBOL_WORDS['query']} the "
    f"pictures to sort, {SYMBOL_WORDS['prototype']} the class centres (the average of a "
    f"class's examples), {SYMBOL_WORDS['suggested']} the pictures to label next. Click a point "
    "to see it; to label several at once, pick the lasso in the map's toolbar (top right) and "
    "draw around them.",
)
store, project, settings = page.store, page.project, page.settings
embedded = page.embedded
labeled = embedded.labeled
if not labeled.any():
    st.info("Add example pictures to a class first; the map shows them with the other pictures.")
    st.page_link("pages/1_Classes.py", label="Go to Classes", icon=icons.CLASSES)
    st.stop()

controls = st.columns(3)
method = controls[0].selectbox(
    "Layout", list(LAYOUT_WORDS), format_func=LAYOUT_WORDS.get, key="map_layout"
)
dims = controls[1].radio("View", [2, 3], format_func=lambda d: f"{d}-D", horizontal=True)
color_by = controls[2].radio(
    "Colour by",
    ["class", "prediction"],
    format_func={"class": "the class you gave", "prediction": "the model's guess"}.get,
    horizontal=True,
)
with st.expander("Advanced: how the map is made", icon=":material/science:"):
    st.markdown(
        "Each picture is an embedding (the image model's 1,280 numbers), drawn in "
        f"{dims}-D by a projection:\n\n"
        + "\n".join(f"- {LAYOUT_WORDS[m]}: {METHODS[m]}" for m in LAYOUT_WORDS)
        + "\n\nEmbeddings are L2-normalised first; t-SNE and UMAP start from a 50-D PCA."
    )

classifier = classifier_or_none(page, explain=False)
pool_ids = embedded.unlabeled_ids
predictions = predict_set(classifier, embedded) if classifier else []
example_predictions = None
if classifier is not None:
    example_predictions = [
        p.prediction for p in predict_set(classifier, embedded, embedded.example_ids)
    ]
suggested = [embedded.ids[row] for row, _ in suggest(embedded, classifier, k=5)]
support, labels, example_ids = embedded.examples()
points = map_points(
    support,
    labels,
    example_ids,
    example_names=[n for n, label in zip(embedded.names, embedded.labels, strict=True) if label],
    query_embeddings=embedded.embeddings[~labeled],
    # A picture the user marked "none of these" is shown as such, not as a class guess.
    query_predictions=[MARKED if p.marked else p.prediction for p in predictions]
    or [None] * len(pool_ids),
    query_confidences=[None if p.marked else p.confidence for p in predictions],
    query_ids=pool_ids,
    query_names=[n for n, label in zip(embedded.names, embedded.labels, strict=True) if not label],
    example_predictions=example_predictions,
    suggested_ids=suggested,
)
if len(points.embeddings) < 3:
    st.info("The map needs at least three pictures.")
    st.stop()
if slow_first_time(method):
    with st.status(
        "Preparing this layout for its first use since the app started: about a minute on a "
        "2-core computer. Later maps take a second; the fast layout is ready at once.",
        expanded=True,
    ) as preparing:
        coords = projection.map_coordinates(points.embeddings, method=method, dims=dims)
        preparing.update(label="Layout ready.", state="complete", expanded=False)
else:
    with st.spinner(f"Laying out {counted(len(points.embeddings), 'point')}…"):
        coords = projection.map_coordinates(points.embeddings, method=method, dims=dims)
names = dict(zip(embedded.ids, embedded.names, strict=True))
labels_by_id = dict(zip(embedded.ids, embedded.labels, strict=True))
classes = [c.name for c in store.list_classes(project.id)]


@st.fragment
def map_with_selection() -> None:
    """The map and what is selected on it: a click or lasso reruns only this part."""
    figure = map_figure(coords, points, color_by=color_by)
    state = st.plotly_chart(
        figure,
        key=f"map_{method}_{dims}",
        on_select="rerun",
        selection_mode=("points", "lasso") if dims == 2 else ("points",),
    )

    picked = [i for i in selected_ids(state) if not i.startswith("prototype:")]
    if not picked:
        st.caption("Nothing selected yet.")
        return
    st.subheader(f"{counted(len(picked), 'picture')} selected")
    columns = st.columns(6)
    for i, image_id in enumerate(picked[:MAX_SHOWN_SELECTED]):
        with columns[i % 6]:
            current = labels_by_id.get(image_id)
            show_thumbnail(store, image_id, f"{names.get(image_id, '')} · {current or 'unlabeled'}")
    if len(picked) > MAX_SHOWN_SELECTED:
        st.caption(f"…and {len(picked) - MAX_SHOWN_SELECTED} more.")
    target = st.selectbox("Label the selected pictures as", classes, index=None, key="map_label")
    if st.button("Label them", disabled=target is None, type="primary"):
        moved = store.label(project.id, picked, target)
        flash([("success", f"{counted(moved, 'picture')} labeled as {target}.")])
        st.rerun()
    if st.button("Make them unlabeled again"):
        store.label(project.id, picked, None)
        flash([("info", f"{counted(len(picked), 'picture')} unlabeled now.")])
        st.rerun()


map_with_selection()
