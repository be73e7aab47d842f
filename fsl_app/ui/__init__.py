"""Streamlit glue shared by the pages: the only part of fsl_app that imports streamlit."""
