"""Label next: the pictures that would teach the model most, why, and one click to label them."""

from __future__ import annotations

import math

import plotly.graph_objects as go
import streamlit as st

from fsl_app.active import suggest
from fsl_app.plural import counted
from fsl_app.project.sorting import label_unlabeled
from fsl_app.project.store import AccuracyPoint
from fsl_app.ui import icons
from fsl_app.ui.evaluation import held_out_evaluation
from fsl_app.ui.session import classifier_or_none, project_page
from fsl_app.ui.widgets import flash, plain, show_thumbnail

N_SUGGESTIONS = 3

page = project_page(
    "Label next",
    "The app picks the unlabeled pictures that would teach it most, and says why. "
    "Label them with one click; the model learns at once.",
)
store, project, settings, embedded = page.store, page.project, page.settings, page.embedded
classes = embedded.classes
if not classes:
    st.info("Make your classes first.")
    st.page_link("pages/1_Classes.py", label="Go to Classes", icon=icons.CLASSES)
    st.stop()

# Skips are kept with the project: a reload, another tab or tomorrow does not bring them back.
skipped = store.skipped(project.id)
outside = store.none_of_these(project.id)
suggestions = [
    (embedded.ids[row], suggestion)
    for row, suggestion in suggest(
        embedded,
        classifier_or_none(page, explain=False),
        k=N_SUGGESTIONS,
        skipped=[*skipped, *outside],
    )
]
if not suggestions:
    st.success(
        "Nothing left to suggest: every picture is labeled or skipped. Drop more pictures on "
        "the Predict page to go on."
    )
if skipped and st.button(
    f"Offer the {counted(len(skipped), 'skipped picture')} again", key="unskip"
):
    store.unskip(project.id)
    st.rerun()
names = dict(zip(embedded.ids, embedded.names, strict=True))


# The buttons act in callbacks, which run before the page does: a click counts even when the
# picture has left the suggestions meanwhile (labeled in another tab), and says so.
def give_label(image_id: str, class_name: str) -> None:
    flash(label_unlabeled(store, project.id, {image_id: class_name}).messages(names))


def mark_none(image_id: str) -> None:
    if store.mark_none_of_these(project.id, [image_id]):
        message = (
            "info",
            f"'{names[image_id]}' belongs to none of the classes; it will not be suggested again.",
        )
    else:
        message = ("info", f"'{names[image_id]}' was labeled in another window meanwhile.")
    flash([message])


for rank, (image_id, suggestion) in enumerate(suggestions):
    key = image_id[:16]
    with st.container(border=True):
        picture, actions = st.columns([1, 3])
        with picture:
            show_thumbnail(store, image_id, names[image_id], width=160 if rank == 0 else 130)
        with actions:
            st.markdown(f"**Suggestion {rank + 1}** · why: {plain(suggestion.reason)}")
            if suggestion.prediction:
                st.caption(f"The model's guess: {plain(suggestion.prediction)}")
            buttons = st.container(horizontal=True)  # wraps; no class name is cut off
            for i, class_name in enumerate(classes):
                buttons.button(
                    plain(class_name),
                    key=f"label_{key}_{i}",
                    on_click=give_label,
                    args=(image_id, class_name),
                )
            skip, none = st.columns(2)
            skip.button(
                "Skip for now",
                key=f"skip_{key}",
                on_click=store.skip,
                args=(project.id, [image_id]),
            )
            none.button(
                "None of these classes", key=f"none_{key}", on_click=mark_none, args=(image_id,)
            )

st.subheader("How good is the model now?")
evaluation, problem = held_out_evaluation(embedded, settings)
if evaluation is None:
    st.info(plain(problem))
    st.stop()
point = AccuracyPoint(
    int(embedded.labeled.sum()), evaluation.accuracy, evaluation.low, evaluation.high
)
history = store.accuracy_history(project.id)
if point not in history:  # a rerun with nothing new writes nothing
    store.record_accuracy(project.id, point)
    history = store.accuracy_history(project.id)
st.metric(
    "Estimated accuracy",
    f"{evaluation.accuracy:.0%}",
    f"95% interval {evaluation.low:.0%}–{evaluation.high:.0%}",
    delta_color="off",
    delta_arrow="off",  # a range, not a gain
)
st.caption("Each labeled picture is predicted by a model that did not see it.")
with st.expander("Details"):
    st.write(f"Method: {evaluation.method}, with a 95% Wilson interval.")
if len(history) < 2:
    st.caption(
        f"The chart starts here, at {counted(point.n_labels, 'labeled picture')}: each label "
        "you give adds a point."
    )
x = [h.n_labels for h in history]
chart = go.Figure(
    [
        go.Scatter(
            x=x + x[::-1],
            y=[h.high for h in history] + [h.low for h in history][::-1],
            fill="toself",
            fillcolor="rgba(31,119,180,0.2)",
            line={"width": 0},
            name="95% interval",
            hoverinfo="skip",
        ),
        go.Scatter(x=x, y=[h.accuracy for h in history], mode="lines+markers", name="accuracy"),
    ]
)
whole_step = max(1, math.ceil((x[-1] - x[0]) / 8))  # about 8 ticks, each a whole picture
chart.update_layout(
    # Whole pictures only: no "20.5 labeled pictures" between two points.
    xaxis={"title": "labeled pictures", "tickformat": "d", "dtick": whole_step},
    yaxis={"title": "estimated accuracy", "tickformat": ".0%", "range": [0, 1.02]},
    height=320,
    margin={"l": 10, "r": 10, "t": 10, "b": 10},
)
st.plotly_chart(chart, key="accuracy_history")
