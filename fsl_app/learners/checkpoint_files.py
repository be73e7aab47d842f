"""Meta-trained tensors on disk: safetensors in half precision, with a format name and version
that are checked when the file is read back."""

from __future__ import annotations

import os
from pathlib import Path

import torch

from fsl_app.files import write_atomically


def save_tensors(
    path: str | os.PathLike,
    tensors: dict[str, torch.Tensor],
    metadata: dict[str, str],
    *,
    format_name: str,
    version: int,
) -> Path:
    """Write ``tensors`` (as float16, to keep the file small) and ``metadata``, atomically."""
    from safetensors.torch import save

    half = {k: v.detach().to(torch.float16).contiguous() for k, v in tensors.items()}
    header = {**metadata, "format": format_name, "format_version": str(version)}
    # Bytes through write_atomically, not safetensors' save_file, which makes files only their
    # owner can read.
    return write_atomically(path, save(half, metadata=header))


def read_tensors(
    path: str, *, format_name: str, version: int, what: str
) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Tensors (as float32) and header of a file :func:`save_tensors` wrote as ``format_name``.

    ``what`` names the kind of file in errors ("MAML checkpoint"). ValueError for an unreadable
    file, another format, or a newer version than ``version``.
    """
    from safetensors import safe_open

    try:
        with safe_open(path, framework="pt") as handle:
            metadata = dict(handle.metadata() or {})
            tensors = {k: handle.get_tensor(k).float() for k in handle.keys()}  # noqa: SIM118
    except Exception as err:  # safetensors raises its own error types for a damaged header
        raise ValueError(f"'{path}' is not a readable safetensors file: {err}") from err
    if metadata.get("format") != format_name:
        raise ValueError(f"'{path}' is not a {what} of this app.")
    if int(metadata.get("format_version", 0)) > version:
        raise ValueError(
            f"'{path}' was written by a newer version of this app "
            f"(format {metadata['format_version']}); update the app to use it."
        )
    return tensors, metadata
