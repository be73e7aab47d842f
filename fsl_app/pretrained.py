"""The one place that finds, reads and writes shipped checkpoints.

They are ``pretrained/<learner>-<backbone>.safetensors``.

A checkpoint holds the tensors a meta-trainable learner (MAML, relation, siamese) was
meta-trained to, for one backbone's embeddings, with the backbone, the embedding size and the
training record in its header. :func:`fsl_app.learners.create_learner` calls :func:`find` and
passes the tensors to the learner, so learners only do the math and never touch files.

Files are safetensors in half precision (small), with a format name (``fsl_app.<learner>``)
and version that are checked when read back, so a file of another learner or a newer app is
refused with a sentence instead of misread.
"""

from __future__ import annotations

import functools
import json
import os
from dataclasses import dataclass
from pathlib import Path

import torch

from fsl_app.backbones import pretrained_dir
from fsl_app.errors import UnusableInputError
from fsl_app.files import write_atomically

Tensors = dict[str, torch.Tensor]
FORMAT_VERSION = 1


@dataclass(frozen=True)
class Checkpoint:
    """Meta-trained tensors of ``learner`` and the strings of the file's header.

    ``metadata`` holds at least ``backbone``, ``backbone_id`` and ``embedding_dim``, plus the
    training ``config`` (JSON), the ``meta_training`` record (JSON: datasets, classes, tasks,
    seconds) and what the learner itself records. ``path`` is None until it is saved.
    """

    learner: str
    tensors: Tensors
    metadata: dict[str, str]
    path: Path | None = None

    @property
    def embedding_dim(self) -> int:
        return int(self.metadata["embedding_dim"])

    @property
    def backbone(self) -> str:
        return self.metadata["backbone"]

    def describe(self) -> str:
        """Where the tensors come from, for a learner's notes: "<backbone> on <data> ('<file>')"."""
        training = json.loads(self.metadata.get("meta_training", "{}"))
        data = ", ".join(training.get("datasets", [])) or "base classes"
        name = self.path.name if self.path else "in memory"
        return f"{self.backbone} on {data} ('{name}')"

    def mismatch(self, dim: int) -> str | None:
        """Why this checkpoint cannot serve ``dim``-d embeddings (a clause), or None when it can."""
        if self.embedding_dim == dim:
            return None
        name = self.path.name if self.path else "in memory"
        return (
            f"the meta-trained checkpoint '{name}' is for {self.embedding_dim}-d {self.backbone} "
            f"embeddings but these have {dim} dimensions (pass backbone= the backbone that made "
            "them)"
        )


@dataclass(frozen=True)
class Lookup:
    """What :func:`find` found: a checkpoint, or None and why not (a clause for a note)."""

    checkpoint: Checkpoint | None
    missing_reason: str | None = None


class CheckpointError(UnusableInputError):
    """A checkpoint file that cannot be used; the sentence says what to do about it."""


def default_path(learner: str, backbone: str) -> Path:
    """Where ``learner``'s checkpoint for ``backbone`` is shipped and looked for."""
    return pretrained_dir() / f"{learner}-{backbone}.safetensors"


def find(learner: str, backbone: str) -> Lookup:
    """``learner``'s shipped checkpoint for ``backbone``, or the reason there is none."""
    path = default_path(learner, backbone)
    if not path.is_file():
        return Lookup(
            None, f"no meta-trained checkpoint for the backbone '{backbone}' (looked for '{path}')"
        )
    return Lookup(load(path, learner))


def save(checkpoint: Checkpoint, path: str | os.PathLike) -> Checkpoint:
    """Write ``checkpoint`` atomically, tensors as float16 (small); returns it with its ``path``."""
    from safetensors.torch import save as safetensors_bytes

    half = {k: v.detach().to(torch.float16).contiguous() for k, v in checkpoint.tensors.items()}
    header = {
        **checkpoint.metadata,
        "format": _format(checkpoint.learner),
        "format_version": str(FORMAT_VERSION),
    }
    # Bytes through write_atomically, not safetensors' save_file, which makes files only their
    # owner can read.
    written = write_atomically(path, safetensors_bytes(half, metadata=header))
    return Checkpoint(checkpoint.learner, checkpoint.tensors, checkpoint.metadata, written)


def load(path: str | os.PathLike, learner: str) -> Checkpoint:
    """Read ``learner``'s checkpoint written by :func:`save`; tensors come back as float32.

    FileNotFoundError for no file; :class:`CheckpointError` (a ValueError whose sentence says
    what to do) for a damaged or cut-short file, another learner's or another format, or a
    newer version.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"There is no {learner} checkpoint at '{path}'.")
    stat = path.stat()
    return _read(str(path.resolve()), learner, stat.st_mtime_ns, stat.st_size)


@functools.lru_cache(maxsize=8)
def _read(path: str, learner: str, mtime_ns: int, size: int) -> Checkpoint:
    """Cached by (path, mtime, size): evaluation fits thousands of learners from one file."""
    from safetensors import safe_open

    try:
        with safe_open(path, framework="pt") as handle:
            metadata = dict(handle.metadata() or {})
            tensors = {k: handle.get_tensor(k).float() for k in handle.keys()}  # noqa: SIM118
    except Exception as err:  # safetensors raises its own error types for a damaged file
        raise CheckpointError(
            f"The {learner} checkpoint '{path}' is damaged or cut short ({err}): reinstall "
            f"fsl_app to get it back, or write it again with `python -m fsl_app meta-train "
            f"--learner {learner}`."
        ) from err
    if metadata.get("format") != _format(learner):
        raise CheckpointError(f"'{path}' is not a {learner} checkpoint of this app.")
    if int(metadata.get("format_version", 0)) > FORMAT_VERSION:
        raise CheckpointError(
            f"'{path}' was written by a newer version of this app "
            f"(format {metadata['format_version']}); update the app to use it."
        )
    return Checkpoint(learner, tensors, metadata, Path(path))


def _format(learner: str) -> str:
    return f"fsl_app.{learner}"
