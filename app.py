"""fsl_app: teach the computer new image classes from a handful of examples.

The entry point of ``streamlit run app.py``: the pages of the workflow, in the order they are used.
Each page lives in ``pages/`` and stays thin: it reads the open project, calls fsl_app, draws.
Icons are Streamlit's Material icons (``:material/name:``): they need no emoji font.
"""

from __future__ import annotations

import streamlit as st

from fsl_app import warmup
from fsl_app.allocator import tune_allocator
from fsl_app.ui import icons

PAGES = [
    st.Page(
        "pages/0_Projects.py",
        title="Projects",
        icon=icons.PROJECTS,
        url_path="projects",
        default=True,
    ),
    st.Page("pages/1_Classes.py", title="Classes", icon=icons.CLASSES, url_path="classes"),
    st.Page("pages/2_Predict.py", title="Predict", icon=icons.PREDICT, url_path="predict"),
    st.Page("pages/3_Embedding_map.py", title="Map of pictures", icon=icons.MAP, url_path="map"),
    st.Page(
        "pages/4_Label_next.py", title="Label next", icon=icons.LABEL_NEXT, url_path="label-next"
    ),
    st.Page("pages/5_Evaluate.py", title="Evaluate", icon=icons.EVALUATE, url_path="evaluate"),
    st.Page("pages/6_Export.py", title="Export", icon=icons.EXPORT, url_path="export"),
    st.Page(
        "pages/7_Use_a_model_file.py",
        title="Use a model file",
        icon=icons.MODEL_FILE,
        url_path="model-file",
    ),
]

tune_allocator()  # a faster forward pass on the CPU; see fsl_app/allocator.py
st.set_page_config(
    page_title="fsl_app: teach new image classes", page_icon=icons.APP, layout="wide"
)
try:
    st.navigation(PAGES).run()
finally:
    # Once the first page is drawn, import and run for the first time, in the background, what
    # the project pages need (they wait for it: see fsl_app/warmup.py).
    warmup.start()
