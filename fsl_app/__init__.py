"""fsl_app: few-shot image classification on pretrained timm backbones.

The library is usable without Streamlit; only :mod:`fsl_app.ui` imports it.
"""

__version__ = "0.1.0"
