"""Label next: the pictures that would teach the model most, why, and one click to label them."""

from __future__ import annotations

import plotly.graph_objects as go
import streamlit as st

from fsl_app.active import suggest
from fsl_app.project.store import AccuracyPoint
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
    st.page_link("pages/1_Classes.py", label="Go to Classes", icon="🏷️")
    st.stop()

skipped = st.session_state.setdefault(f"skipped_{project.id}", [])
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
names = dict(zip(embedded.ids, embedded.names, strict=True))
for rank, (image_id, suggestion) in enumerate(suggestions):
    key = image_id[:16]
    with st.container(border=True):
        picture, actions = st.columns([1, 3])
        with picture:
            show_thumbnail(store, image_id, names[image_id], width=220 if rank == 0 else 140)
        with actions:
            st.markdown(f"**Suggestion {rank + 1}** · why: {plain(suggestion.reason)}")
            if suggestion.prediction:
                st.caption(f"The model's guess: {plain(suggestion.prediction)}")
            buttons = st.columns(min(len(classes), 6))
            for i, class_name in enumerate(classes):
                if buttons[i % len(buttons)].button(plain(class_name), key=f"label_{key}_{i}"):
                    store.label(project.id, [image_id], class_name)
                    flash([("success", f"Labeled '{names[image_id]}' as {class_name}.")])
                    st.rerun()
            skip, none = st.columns(2)
            if skip.button("Skip for now", key=f"skip_{key}"):
                skipped.append(image_id)
                st.rerun()
            if none.button("None of these classes", key=f"none_{key}"):
                store.mark_none_of_these(project.id, [image_id])
                flash(
                    [
                        (
                            "info",
                            f"'{names[image_id]}' belongs to none of the classes; it will "
                            "not be suggested again.",
                        )
                    ]
                )
                st.rerun()

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
)
st.caption(f"Each labeled picture predicted by a model that did not see it ({evaluation.method}).")
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
chart.update_layout(
    xaxis_title="labeled pictures",
    yaxis={"title": "estimated accuracy", "tickformat": ".0%", "range": [0, 1.02]},
    height=320,
    margin={"l": 10, "r": 10, "t": 10, "b": 10},
)
st.plotly_chart(chart, key="accuracy_history")
