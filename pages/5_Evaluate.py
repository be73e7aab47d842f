"""Evaluate: how often the model is right on pictures it did not see, per class, and how honest its
confidence is; learners compared on this project."""

from __future__ import annotations

import time

import pandas as pd
import plotly.graph_objects as go
import streamlit as st

from fsl_app.learners import available_learners
from fsl_app.ui.evaluation import held_out_evaluation
from fsl_app.ui.session import project_page
from fsl_app.ui.widgets import plain, show_thumbnail

page = project_page(
    "Evaluate",
    "Each labeled picture is predicted by a model trained on all the other labeled pictures, "
    "so these numbers describe pictures the model had not seen.",
)
store, settings, embedded = page.store, page.settings, page.embedded
evaluation, problem = held_out_evaluation(embedded, settings)
if evaluation is None:
    st.info(plain(problem))
    st.page_link("pages/1_Classes.py", label="Go to Classes", icon="🏷️")
    st.stop()

overall = st.columns(3)
overall[0].metric(
    "Accuracy",
    f"{evaluation.accuracy:.0%}",
    f"95% interval {evaluation.low:.0%}–{evaluation.high:.0%}",
    delta_color="off",
)
overall[1].metric("Pictures tested", f"{evaluation.correct} right of {evaluation.n}")
overall[2].metric(
    "Calibration error",
    f"{evaluation.ece:.2f}",
    "0 = confidence means what it says",
    delta_color="off",
)
st.caption(f"Method: {evaluation.method}. {evaluation.summary()}.")
for note in evaluation.notes:
    st.info(plain(note))  # names classes

per_class, confusion = st.columns(2)
with per_class:
    st.subheader("Per class")
    st.dataframe(
        pd.DataFrame(
            [
                {"class": c, "right": right, "tested": n, "accuracy": right / n if n else None}
                for c, (right, n) in evaluation.per_class().items()
            ]
        ),
        hide_index=True,
        column_config={"accuracy": st.column_config.ProgressColumn(format="percent")},
    )
with confusion:
    st.subheader("Confusion matrix")
    st.caption("Rows: the true class. Columns: what the model said. Click a cell to see them.")
    matrix = pd.DataFrame(
        evaluation.confusion, index=evaluation.classes, columns=evaluation.classes
    )
    state = st.dataframe(matrix, key="confusion", on_select="rerun", selection_mode="single-cell")
cells = state.selection.get("cells", []) if state else []
if cells:
    row, column = cells[0]
    true_class = evaluation.classes[row]
    predicted_class = str(column)
    ids = evaluation.images(true_class, predicted_class)
    st.write(
        f"**{len(ids)}** pictures of '{plain(true_class)}' predicted as '{plain(predicted_class)}':"
    )
    names = dict(zip(embedded.ids, embedded.names, strict=True))
    columns = st.columns(6)
    for i, image_id in enumerate(ids[:24]):
        with columns[i % 6]:
            show_thumbnail(store, image_id, names.get(image_id), width=120)

st.subheader("Can you trust its confidence?")
bins = evaluation.reliability
reliability = go.Figure(
    [
        go.Bar(
            x=[(b.low + b.high) / 2 for b in bins],
            y=[b.accuracy for b in bins],
            width=[(b.high - b.low) * 0.9 for b in bins],
            text=[f"{b.count} pictures" for b in bins],
            name="how often right",
        ),
        go.Scatter(
            x=[0, 1], y=[0, 1], mode="lines", name="perfectly honest", line={"dash": "dash"}
        ),
    ]
)
reliability.update_layout(
    xaxis={"title": "confidence the model gave", "tickformat": ".0%", "range": [0, 1]},
    yaxis={"title": "how often it was right", "tickformat": ".0%", "range": [0, 1.02]},
    height=340,
    margin={"l": 10, "r": 10, "t": 10, "b": 10},
)
st.plotly_chart(reliability, key="reliability")
st.caption("Bars close to the dashed line: '80% sure' is right about 8 times in 10.")

st.subheader("Compare learners on this project")
if st.button("Compare all learners", key="compare"):
    rows = []
    for learner in available_learners():
        started = time.perf_counter()
        result, problem = held_out_evaluation(embedded, settings, learner=learner)
        if result is None:
            continue
        rows.append(
            {
                "learner": learner + (" (in use)" if learner == settings.learner else ""),
                "accuracy": result.accuracy,
                "95% interval": f"{result.low:.0%}–{result.high:.0%}",
                "calibration error": round(result.ece, 3),
                "seconds": round(time.perf_counter() - started, 1),
            }
        )
    st.dataframe(
        pd.DataFrame(rows),
        hide_index=True,
        column_config={"accuracy": st.column_config.NumberColumn(format="percent")},
    )
    st.caption("Change the learner on the Projects page. Intervals that overlap: no clear winner.")
