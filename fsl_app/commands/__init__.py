"""Subcommands of ``python -m fsl_app``: one module each, with ``register`` and ``run``."""
