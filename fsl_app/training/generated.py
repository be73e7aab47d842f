"""The base-class statistics of the ``generated`` learner (distribution calibration), written as a
checkpoint beside the meta-trained heads.

Nothing is trained: the statistics are each base class's mean and (low-rank plus diagonal)
covariance of the power-transformed embeddings (:func:`fsl_app.learners.generated.base_statistics`).
They go through :mod:`fsl_app.pretrained` like every checkpoint, so the learner gets them as
tensors, with the backbone, the embedding size and the data in the header::

    python -m fsl_app.training.generated --dataset openclipart-base
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence

import numpy as np
import torch

from fsl_app import pretrained
from fsl_app.learners.generated import DEFAULT_POWER, base_statistics, tukey
from fsl_app.pretrained import Checkpoint

DEFAULT_RANK = 16
MIN_IMAGES = 5  # a class with fewer images has no covariance worth keeping


def statistics_checkpoint(
    features: np.ndarray,
    labels: Sequence[str],
    *,
    backbone: str,
    backbone_id: str = "",
    power: float = DEFAULT_POWER,
    rank: int = DEFAULT_RANK,
    metadata: dict[str, object] | None = None,
) -> Checkpoint:
    """The statistics of the classes of ``labels`` with at least :data:`MIN_IMAGES` embeddings
    among ``features`` (n, dim), as a ``generated`` checkpoint (not yet saved)."""
    labels = np.asarray(labels)
    names, counts = np.unique(labels, return_counts=True)
    kept = names[counts >= MIN_IMAGES]
    if len(kept) == 0:
        raise ValueError(f"No base class has {MIN_IMAGES} images or more.")
    rows = np.isin(labels, kept)
    transformed = tukey(torch.as_tensor(np.asarray(features, np.float32)[rows]), power)
    tensors = base_statistics(transformed, labels[rows].tolist(), rank)
    record = {**(metadata or {}), "classes": kept.tolist(), "images": int(rows.sum())}
    return Checkpoint(
        "generated",
        tensors,
        {
            "backbone": backbone,
            "backbone_id": backbone_id,
            "embedding_dim": str(transformed.shape[1]),
            "power": str(power),
            "rank": str(rank),
            "meta_training": json.dumps(record),
        },
    )


def main(argv: Sequence[str] | None = None) -> int:
    from fsl_app.backbones import DEFAULT_BACKBONE, load_backbone
    from fsl_app.datasets import OFFLINE_DATASETS, load_dataset
    from fsl_app.embeddings import Embedder, EmbeddingCache, default_cache_path

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", nargs="+", choices=OFFLINE_DATASETS, required=True)
    parser.add_argument("--backbone", default=DEFAULT_BACKBONE)
    parser.add_argument("--rank", type=int, default=DEFAULT_RANK)
    parser.add_argument("--power", type=float, default=DEFAULT_POWER)
    parser.add_argument("--out", help="default: pretrained/generated-<backbone>.safetensors")
    args = parser.parse_args(argv)
    backbone = load_backbone(args.backbone)
    embedder = Embedder(backbone, cache=EmbeddingCache(default_cache_path()))
    features, labels = [], []
    for name in args.dataset:
        data = load_dataset(name)
        embedded = embedder.embed(data.sources)
        features.append(embedded.embeddings)
        labels.extend(f"{name}:{data.labels[i]}" for i in embedded.indices)
    checkpoint = statistics_checkpoint(
        np.concatenate(features),
        labels,
        backbone=args.backbone,
        backbone_id=backbone.id,
        power=args.power,
        rank=args.rank,
        metadata={"datasets": args.dataset},
    )
    out = args.out or pretrained.default_path("generated", args.backbone)
    written = pretrained.save(checkpoint, out)
    size = os.path.getsize(written.path) / 1e6
    n_classes = len(checkpoint.tensors["means"])
    print(f"Wrote {written.path}: {n_classes} base classes, {size:.1f} MB.", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
