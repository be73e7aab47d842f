"""fsl_app: teach the computer new image classes from a handful of examples.

A first page: name a few classes, drop example photos into each, drop in new
photos, and see what they are. Projects that last, the embedding map and
"label this next" come with the full app.
"""

from __future__ import annotations

import streamlit as st

from fsl_app.backbones import DEFAULT_BACKBONE, BackboneError
from fsl_app.classify import UnusableInputError, classify_images
from fsl_app.ui.resources import get_embedder

MAX_CLASSES = 10

st.set_page_config(page_title="fsl_app: teach new image classes", page_icon="🔎", layout="wide")
st.title("Teach the computer new image classes")
st.write(
    "Name your classes, give a few example photos of each, then drop in new photos: "
    "the app tells you which class each one belongs to, how sure it is, "
    "or that it looks like none of them."
)

n_classes = st.number_input("How many classes?", min_value=2, max_value=MAX_CLASSES, value=2)
examples: list[bytes] = []
labels: list[str] = []
example_names: list[str] = []
class_names: list[str] = []
columns = st.columns(min(int(n_classes), 4))
for i in range(int(n_classes)):
    with columns[i % len(columns)]:
        name = st.text_input(f"Name of class {i + 1}", value=f"class {i + 1}", key=f"name_{i}")
        files = st.file_uploader(
            f"Example photos of class {i + 1}", accept_multiple_files=True, key=f"examples_{i}"
        )
        class_names.append(name.strip())
        for file in files or []:
            examples.append(file.getvalue())
            labels.append(name.strip())
            example_names.append(file.name)

st.divider()
uploaded_queries = st.file_uploader(
    "New photos to classify", accept_multiple_files=True, key="queries"
)

problems = []
if any(not name for name in class_names):
    problems.append("Every class needs a name.")
if len(set(class_names)) < len(class_names):
    problems.append("Two classes have the same name; give each class its own name.")
if missing := [n for n in class_names if n and n not in labels]:
    problems.append(f"Add at least one example photo to: {', '.join(missing)}.")
if not uploaded_queries:
    problems.append("Drop in the new photos you want classified.")

if problems:
    for problem in problems:
        st.info(problem)
    st.stop()

progress_bar = st.progress(0.0, text="Reading the photos…")


def show_progress(stage: str):
    def update(done: int, total: int) -> None:
        progress_bar.progress(done / max(total, 1), text=f"Reading {stage}: {done} of {total}")

    return update


try:
    result = classify_images(
        get_embedder(DEFAULT_BACKBONE),
        examples,
        labels,
        [file.getvalue() for file in uploaded_queries],
        example_names=example_names,
        query_names=[file.name for file in uploaded_queries],
        classes=class_names,
        progress=show_progress,
    )
except (UnusableInputError, BackboneError) as err:
    progress_bar.empty()
    st.error(str(err))
    st.stop()
progress_bar.empty()

for _name, reason in result.skipped_examples:
    st.warning(f"Example left out: {reason}")
st.subheader("Predictions")
for note in result.notes:
    st.info(note)
if not result.notes:
    st.caption(
        'How sure the app is has been tuned on your own examples, so that "80% sure" '
        "should be right about 8 times in 10."
    )
by_name = {file.name: file for file in uploaded_queries}
for query in result.results:
    if query.error:
        st.warning(query.error)
        continue
    picture, verdict = st.columns([1, 3])
    picture.image(by_name[query.name].getvalue(), width=160)
    if query.unknown:
        verdict.metric(
            "Looks like",
            f"None of these (closest: {query.prediction})",
            "unlike the examples of every class",
            delta_color="off",
        )
    else:
        verdict.metric(
            "Looks like", query.prediction, f"{query.confidence:.0%} sure", delta_color="off"
        )
    verdict.bar_chart(query.probabilities, horizontal=True, height=40 + 30 * len(result.classes))
