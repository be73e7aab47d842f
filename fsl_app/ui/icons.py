"""The app's icons, one per page, as Streamlit Material icons (``:material/name:``).

Material icons come with Streamlit's own font, so they show on a machine without an emoji
font (emoji there are empty boxes). The sidebar (app.py) and every "Next:" or "Go to" link use
these, so a page has one icon everywhere.
"""

from __future__ import annotations

PROJECTS = ":material/folder_open:"
CLASSES = ":material/label:"
PREDICT = ":material/auto_awesome:"
MAP = ":material/scatter_plot:"
LABEL_NEXT = ":material/ads_click:"
EVALUATE = ":material/insights:"
EXPORT = ":material/ios_share:"
APP = ":material/image_search:"
MODEL_FILE = ":material/file_open:"
