"""Meta-trained heads of the metric learners (``relation``, ``siamese``): files and fall-back.

A head is a few tensors meta-trained on a backbone's embeddings of base
classes by :mod:`fsl_app.training.metric_heads`, shipped as
``pretrained/<learner>-<backbone>.safetensors`` with the backbone, the
embedding size and the training record in its header. A learner asked for
``checkpoint="auto"`` uses that file when it fits the embeddings and otherwise
falls back to its untrained form with a note and a warning, as MAML does; an
explicit file for another embedding size is refused.
"""

from __future__ import annotations

import functools
import json
import os
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch

from fsl_app.backbones import pretrained_dir
from fsl_app.learners.checkpoint_files import read_tensors, save_tensors

Tensors = dict[str, torch.Tensor]
HEAD_FORMAT_VERSION = 1


@dataclass(frozen=True)
class HeadCheckpoint:
    """A meta-trained head of ``learner``: its tensors and the strings of the file's header.

    ``metadata`` holds ``backbone``, ``backbone_id``, ``embedding_dim``,
    ``hidden``, the training ``config`` (JSON) and the ``meta_training``
    record (JSON: datasets, classes, tasks, seconds).
    """

    learner: str
    path: Path | None
    tensors: Tensors
    metadata: dict[str, str]

    @property
    def embedding_dim(self) -> int:
        return int(self.metadata["embedding_dim"])

    @property
    def backbone(self) -> str:
        return self.metadata["backbone"]

    def describe(self) -> str:
        training = json.loads(self.metadata.get("meta_training", "{}"))
        data = ", ".join(training.get("datasets", [])) or "base classes"
        name = self.path.name if self.path else "in memory"
        return (
            f"Used the {self.learner} head meta-trained for {self.backbone} on {data} ('{name}')."
        )


def default_head_path(learner: str, backbone: str) -> Path:
    """Where ``checkpoint="auto"`` looks for ``learner``'s head for ``backbone``."""
    return pretrained_dir() / f"{learner}-{backbone}.safetensors"


def _format(learner: str) -> str:
    return f"fsl_app.{learner}"


def save_head(checkpoint: HeadCheckpoint, path: str | os.PathLike) -> Path:
    """Write ``checkpoint`` as safetensors, atomically, in half precision to keep the file small."""
    return save_tensors(
        path,
        checkpoint.tensors,
        checkpoint.metadata,
        format_name=_format(checkpoint.learner),
        version=HEAD_FORMAT_VERSION,
    )


def load_head(path: str | os.PathLike, learner: str) -> HeadCheckpoint:
    """Read ``learner``'s head written by :func:`save_head`; tensors come back as float32."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"There is no {learner} checkpoint at '{path}'.")
    stat = path.stat()
    return _read_head(str(path.resolve()), learner, stat.st_mtime_ns, stat.st_size)


@functools.lru_cache(maxsize=8)
def _read_head(path: str, learner: str, mtime_ns: int, size: int) -> HeadCheckpoint:
    """Cached by (path, mtime, size): evaluation fits thousands of learners from one file."""
    tensors, metadata = read_tensors(
        path,
        format_name=_format(learner),
        version=HEAD_FORMAT_VERSION,
        what=f"{learner} checkpoint",
    )
    return HeadCheckpoint(learner, Path(path), tensors, metadata)


def find_head(
    checkpoint: str | os.PathLike | None,
    *,
    learner: str,
    backbone: str,
    dim: int,
    untrained: str,
    notes: list[str],
    stacklevel: int = 4,
) -> HeadCheckpoint | None:
    """The head to use for ``dim``-d embeddings, or None for the untrained form.

    ``checkpoint`` is a path, ``"auto"`` (:func:`default_head_path`) or None.
    ``untrained`` says in a few words what the learner does without a head
    ("scored queries by cosine to the prototypes"). Each outcome appends a
    sentence to ``notes``; falling back from ``"auto"`` also warns, pointing
    ``stacklevel`` frames up (4: the caller of ``fit`` when ``_fit`` calls this).
    """
    if checkpoint is None:
        notes.append(f"{learner.capitalize()} {untrained}: no meta-trained head was asked for.")
        return None
    if checkpoint != "auto":
        found = load_head(checkpoint, learner)
        if found.embedding_dim != dim:
            raise ValueError(
                f"The {learner} checkpoint '{found.path}' was meta-trained on {found.backbone} "
                f"embeddings of {found.embedding_dim} dimensions, but these have {dim}. Use the "
                "checkpoint made for the backbone that made these embeddings, or checkpoint=None."
            )
        notes.append(found.describe())
        return found
    path = default_head_path(learner, backbone)
    if not path.is_file():
        note = (
            f"No meta-trained {learner} head for the backbone '{backbone}' (looked for "
            f"'{path}'), so {learner} {untrained}."
        )
    else:
        found = load_head(path, learner)
        if found.embedding_dim == dim:
            notes.append(found.describe())
            return found
        note = (
            f"The meta-trained head '{path.name}' is for {found.embedding_dim}-d {found.backbone} "
            f"embeddings but these have {dim} dimensions, so {learner} {untrained}. "
            "Pass backbone= the backbone that made them."
        )
    notes.append(note)
    warnings.warn(note, UserWarning, stacklevel=stacklevel)
    return None
