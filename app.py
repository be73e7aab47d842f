"""fsl_app: teach the computer new image classes from a handful of examples.

The entry point of ``streamlit run app.py``: the pages of the workflow, in the order they are used.
Each page lives in ``pages/`` and stays thin: it reads the open project, calls fsl_app, draws.
"""

from __future__ import annotations

import streamlit as st

from fsl_app.allocator import tune_allocator

PAGES = [
    st.Page("pages/0_Projects.py", title="Projects", icon="📁", url_path="projects", default=True),
    st.Page("pages/1_Classes.py", title="Classes", icon="🏷️", url_path="classes"),
    st.Page("pages/2_Predict.py", title="Predict", icon="🔮", url_path="predict"),
    st.Page("pages/3_Embedding_map.py", title="Embedding map", icon="🗺️", url_path="map"),
    st.Page("pages/4_Label_next.py", title="Label next", icon="🎯", url_path="label-next"),
    st.Page("pages/5_Evaluate.py", title="Evaluate", icon="📏", url_path="evaluate"),
    st.Page("pages/6_Export.py", title="Export", icon="📦", url_path="export"),
    st.Page(
        "pages/7_Use_a_model_file.py",
        title="Use a model file",
        icon=":material/file_open:",
        url_path="model-file",
    ),
]

tune_allocator()  # a faster forward pass on the CPU; see fsl_app/allocator.py
st.set_page_config(page_title="fsl_app: teach new image classes", page_icon="🔎", layout="wide")
st.navigation(PAGES).run()
