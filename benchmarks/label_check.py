"""How many wrong labels "Check the labels" finds, and how many right ones it doubts, by the
lowest probability at which it suggests a move.

Projects of the demo's 5 Tux Paint classes with 4 or 8 real photos each (seeded draws); in each,
the first example of every class is moved to the next class (5 planted mistakes). The label
check runs once per project at the lowest threshold; each row keeps the suggestions at or above
its threshold (a suggestion's probability does not depend on the threshold). The app and
``check-labels`` use the "sure" badge's threshold (80%).

    python benchmarks/label_check.py [--draws 10]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from fsl_app.backbones import load_backbone  # noqa: E402
from fsl_app.datasets import DEMO_CLASSES, tuxpaint_photos  # noqa: E402
from fsl_app.embeddings import Embedder, EmbeddingCache  # noqa: E402
from fsl_app.trust.label_check import DEFAULT_MIN_SCORE, find_mislabeled  # noqa: E402

THRESHOLDS = (0.5, 0.65, DEFAULT_MIN_SCORE, 0.9)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--draws", type=int, default=10)
    parser.add_argument("--cache", default=str(Path.home() / ".cache/fsl_app/embeddings.sqlite"))
    args = parser.parse_args()
    photos = tuxpaint_photos(DEMO_CLASSES)
    classes = list(photos)
    paths = [p for files in photos.values() for p in files]
    labels = np.asarray([c for c, files in photos.items() for _ in files])
    embedder = Embedder(load_backbone(), device="cpu", cache=EmbeddingCache(args.cache))
    features = embedder.embed(paths).embeddings
    print(f"{len(classes)} classes, {args.draws} projects per row, 5 labels planted wrong in each")
    print("| examples per class | suggest from | planted found | right labels doubted |")
    print("|---|---|---|---|")
    for shots in (4, 8):
        found = dict.fromkeys(THRESHOLDS, 0)
        doubted = dict.fromkeys(THRESHOLDS, 0)
        for seed in range(args.draws):
            rng = np.random.default_rng(seed)
            keep = np.concatenate(
                [rng.choice(np.flatnonzero(labels == c), shots, replace=False) for c in classes]
            )
            given = labels[keep].copy()
            planted = {k * shots: classes[(k + 1) % len(classes)] for k in range(len(classes))}
            for index, wrong in planted.items():
                given[index] = wrong
            suspects = find_mislabeled(features[keep], given, min_score=min(THRESHOLDS))
            for threshold in THRESHOLDS:
                flagged = {s.index for s in suspects if s.score >= threshold}
                found[threshold] += len(flagged & set(planted))
                doubted[threshold] += len(flagged - set(planted))
        planted_total = args.draws * len(classes)
        right_total = args.draws * len(classes) * (shots - 1)
        for threshold in THRESHOLDS:
            print(
                f"| {shots} | {threshold:.0%} | {found[threshold]} of {planted_total} | "
                f"{doubted[threshold]} of {right_total} |"
            )


if __name__ == "__main__":
    main()
