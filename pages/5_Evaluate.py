"""Evaluate: how often the model is right on pictures it did not see, per class, and how honest its
confidence is; learners compared on this project."""

from __future__ import annotations

import pandas as pd
import plotly.graph_objects as go
import streamlit as st

from fsl_app.learners import LEARNERS, available_learners
from fsl_app.plural import counted
from fsl_app.ui import icons
from fsl_app.ui.evaluation import compare_learners, held_out_evaluation
from fsl_app.ui.session import project_page
from fsl_app.ui.widgets import plain, show_thumbnail

page = project_page(
    "Evaluate",
    "How often the model is right on pictures it has not seen: each labeled picture is "
    "predicted by a model that did not learn from it.",
)
store, settings, embedded = page.store, page.settings, page.embedded
evaluation, problem = held_out_evaluation(embedded, settings)
if evaluation is None:
    st.info(plain(problem))
    st.page_link("pages/1_Classes.py", label="Go to Classes", icon=icons.CLASSES)
    st.stop()

verdict, verdict_sentence = evaluation.confidence_verdict()
overall = st.columns(3)
overall[0].metric("Accuracy", f"{evaluation.accuracy:.0%}")
# An interval is a range, not a gain: a caption, never a metric's (green, arrowed) delta.
overall[0].caption(
    f"Likely between {evaluation.low:.0%} and {evaluation.high:.0%} (95% interval): "
    "more examples narrow it."
)
overall[1].metric("Pictures tested", f"{evaluation.correct} right of {evaluation.n}")
overall[2].metric("Its confidence", verdict)
overall[2].caption(verdict_sentence)
st.caption(f"How: {evaluation.method_words}.")
for note in evaluation.notes:
    st.info(plain(note))  # names classes
with st.expander("Details", icon=":material/science:"):
    st.markdown(
        f"- Method: {evaluation.method}, learner "
        f"{LEARNERS[settings.learner].technical_name} (`{settings.learner}`)\n"
        f"- {plain(evaluation.summary())}\n"
        f"- Calibration error (ECE): {evaluation.ece:.3f} (0 = confidence means exactly what "
        "it says; the average gap between confidence and how often it is right)"
    )

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
    st.subheader("What it mixes up")
    st.caption(
        "Rows: the true class. Columns: what the model said (a confusion matrix). Click a cell "
        "to see those pictures."
    )
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
        f"**{counted(len(ids), 'picture')}** of '{plain(true_class)}' predicted as "
        f"'{plain(predicted_class)}':"
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
            text=[counted(b.count, "picture") for b in bins],
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

st.subheader("Compare the ways of learning on this project")
st.caption(
    "Each way of learning is measured like the one in use. Results show one by one as each is done."
)
if st.button("Compare all of them", key="compare", icon=":material/compare_arrows:"):
    learners = available_learners()
    progress = st.progress(0.0, text=f"Measuring '{LEARNERS[learners[0]].display_name}'…")
    table = st.empty()
    rows, details = [], []
    for done, (learner, result, seconds) in enumerate(compare_learners(page.set_for, settings), 1):
        entry = LEARNERS[learner]
        if result is not None:
            rows.append(
                {
                    "how it learns": entry.display_name
                    + (" (in use)" if learner == settings.learner else ""),
                    "accuracy": result.accuracy,
                    "likely between": f"{result.low:.0%} and {result.high:.0%}",
                    "its confidence": result.confidence_verdict()[0],
                    "seconds": round(seconds, 1),
                }
            )
            details.append(
                {
                    "learner": f"{entry.technical_name} ({learner})",
                    "method": result.method,
                    "calibration error (ECE)": round(result.ece, 3),
                }
            )
            table.dataframe(
                pd.DataFrame(rows),
                hide_index=True,
                column_config={
                    "how it learns": st.column_config.TextColumn(width="large"),
                    "accuracy": st.column_config.NumberColumn(format="percent"),
                },
            )
        if done < len(learners):
            following = LEARNERS[learners[done]].display_name
            progress.progress(
                done / len(learners),
                text=f"Measured {done} of {len(learners)}; now '{following}'…",
            )
    progress.empty()
    st.caption("Change how it learns on the Projects page. Ranges that overlap: no clear winner.")
    with st.expander("Advanced: technical names and calibration", icon=":material/science:"):
        st.dataframe(pd.DataFrame(details), hide_index=True)
