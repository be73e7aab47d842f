"""How long an embedding map takes to draw: PCA, t-SNE and UMAP on real embeddings.

Targets on a 2-core CPU for a few hundred points: PCA < 0.1 s, t-SNE and UMAP
< 5 s. UMAP compiles its numba kernels on the first call of a process, so the
first ("cold") call is reported apart from the following ("warm") ones.

    python benchmarks/projection.py [--points 300] [--repeats 3]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np

# Run as a script from anywhere: make the repository's fsl_app importable.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from fsl_app.backbones import load_backbone
from fsl_app.datasets import load_dataset
from fsl_app.embeddings import Embedder, EmbeddingCache
from fsl_app.projection import METHODS, clear_cache, map_coordinates

TARGETS = {"pca": 0.1, "tsne": 5.0, "umap": 5.0}


def real_embeddings(n_points: int) -> np.ndarray:
    """Tux Paint photos plus Fashion-MNIST images: real, varied embeddings."""
    photos = load_dataset("tuxpaint")
    extra = load_dataset("fashion-mnist-test", per_class=max(1, (n_points - 115) // 10 + 1))
    cache = EmbeddingCache(os.path.expanduser("~/.cache/fsl_app/benchmarks.sqlite"))
    embedder = Embedder(load_backbone(), cache=cache)
    features = embedder.embed(photos.sources + extra.sources).embeddings
    return features[:n_points]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--points", type=int, default=300)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    features = real_embeddings(args.points)
    print(f"{len(features)} points x {features.shape[1]} dims, {os.cpu_count()} CPUs")
    print(f"{'method':<6} {'dims':>4} {'cold s':>8} {'warm s (median)':>16} {'target':>8}  verdict")
    for method in METHODS:
        for dims in (2, 3):
            times = []
            for _ in range(1 + args.repeats):
                clear_cache()  # time the real work, not a cache hit
                started = time.perf_counter()
                map_coordinates(features, method, dims, seed=0)
                times.append(time.perf_counter() - started)
            warm = statistics.median(times[1:])
            verdict = "PASS" if warm < TARGETS[method] else "MISS"
            print(
                f"{method:<6} {dims:>4} {times[0]:>8.3f} {warm:>16.3f} "
                f"{TARGETS[method]:>7.1f}s  {verdict}"
            )


if __name__ == "__main__":
    main()
