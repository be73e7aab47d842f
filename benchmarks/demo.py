"""How well does the demo project sort its own pictures? The numbers a stakeholder sees.

Run from the repository root::

    python benchmarks/demo.py [--seeds N] [--candidates]

Draws the demo exactly as :func:`fsl_app.project.demo.create_demo_project` does (same
classes, examples per class, pool and seed), fits the app's classifier on the examples with
the default learner and prints, for the pictures left to sort: the share sorted right, how
many are called "none of these", and how many are wrong at 90% confidence or more. Seed 0 is
the demo the app creates; further seeds show how much the numbers depend on the draw.

``--candidates`` measures other class sets drawn from Tux Paint's photo categories with at
least 10 photos (the measurement that chose :data:`fsl_app.datasets.DEMO_CLASSES`).
Embeddings are cached in ``/tmp/demo_cache.sqlite``, so only the first run embeds.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

for _variable in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_variable, "1")

import numpy as np  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from fsl_app.backbones import load_backbone  # noqa: E402
from fsl_app.classifier import fit_classifier, predict_set  # noqa: E402
from fsl_app.datasets import DEMO_CLASSES, tuxpaint_photos  # noqa: E402
from fsl_app.embedded_set import EmbeddedSet  # noqa: E402
from fsl_app.embeddings import Embedder, EmbeddingCache  # noqa: E402
from fsl_app.project.demo import (  # noqa: E402
    DEMO_EXAMPLES_PER_CLASS,
    DEMO_UNLABELED_PER_CLASS,
    draw_demo,
)

CACHE = Path("/tmp/demo_cache.sqlite")
SURE = 0.9
# Tux Paint photo categories with at least 10 photos, named as a person would name them.
CANDIDATE_CATEGORIES = {
    "bird": "animals/birds",
    "fish": "animals/fish",
    "cow": "animals/mammals/bovines",
    "flower": "plants/flowers",
    "fruit": "food/fruit",
    "vegetable": "food/vegetables",
    "road sign": "town/roadsigns",
    "tool": "household/tools",
    "planet": "space/planets",
    "clothes": "clothes",
    "chess piece": "symbols/chess",
    "music symbol": "symbols/music",
    "christmas": "seasonal/christmas",
    "halloween": "seasonal/halloween",
}
CANDIDATE_SETS = [
    ["bird", "fish", "flower", "fruit", "vegetable"],
    ["bird", "flower", "fruit", "road sign", "tool"],
    ["bird", "flower", "fruit", "road sign"],
    ["bird", "cow", "flower", "road sign", "tool"],
    ["bird", "flower", "fruit", "road sign", "clothes"],
    ["bird", "fish", "flower", "fruit", "road sign"],
    ["bird", "flower", "fruit", "road sign", "tool"],
    ["bird", "cow", "flower", "fruit", "road sign"],
    ["bird", "fish", "flower", "road sign", "tool"],
    ["bird", "flower", "fruit", "road sign", "planet"],
    ["bird", "cow", "flower", "fruit", "tool"],
    ["bird", "flower", "fruit", "tool", "clothes"],
    ["bird", "flower", "road sign", "tool", "clothes"],
]


def measure(
    embedder: Embedder,
    photos: dict[str, list[Path]],
    *,
    examples_per_class: int,
    seed: int,
) -> dict[str, float]:
    """Right share, "none of these" count and wrong-at-90% count of one demo draw."""
    draw = draw_demo(
        photos,
        examples_per_class=examples_per_class,
        unlabeled_per_class=DEMO_UNLABELED_PER_CLASS,
        seed=seed,
    )
    examples = [(p, c) for c, files in draw.examples.items() for p in files]
    sources = [p for p, _ in examples] + draw.unlabeled
    labels = [c for _, c in examples] + [None] * len(draw.unlabeled)
    embedded = embedder.embed(sources)
    assert not embedded.errors, embedded.errors
    found = EmbeddedSet(
        ids=embedded.ids,
        names=[sources[i].name for i in embedded.indices],
        labels=[labels[i] for i in embedded.indices],
        embeddings=embedded.embeddings,
        classes=list(photos),
        backbone=embedder.backbone.name,
    )
    predictions = predict_set(fit_classifier(found), found)
    right = [p.prediction == t for p, t in zip(predictions, draw.truth, strict=True)]
    return {
        "n": len(predictions),
        "right": float(np.mean(right)),
        "none": sum(p.unknown for p in predictions),
        "sure_wrong": sum(
            not r and p.confidence >= SURE and not p.unknown
            for p, r in zip(predictions, right, strict=True)
        ),
    }


def report(embedder: Embedder, classes: dict[str, str], shots: int, seeds: int) -> None:
    photos = tuxpaint_photos(classes)
    rows = [measure(embedder, photos, examples_per_class=shots, seed=s) for s in range(seeds)]
    first = rows[0]
    print(
        f"{', '.join(classes):<44} {shots} ex  seed 0: right {first['right']:5.1%}, "
        f"none of these {first['none']:2d}/{first['n']}, wrong at >=90% {first['sure_wrong']}"
        f"  | {seeds} seeds: right {np.mean([r['right'] for r in rows]):5.1%}"
        f" (min {min(r['right'] for r in rows):5.1%}), none of these "
        f"{np.mean([r['none'] for r in rows]):.1f}, wrong at >=90% "
        f"{np.mean([r['sure_wrong'] for r in rows]):.1f}",
        flush=True,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", type=int, default=5, help="demo draws to average over")
    parser.add_argument("--candidates", action="store_true", help="also measure other class sets")
    parser.add_argument(
        "--shots", type=int, nargs="+", default=[3, 5], help="examples per class to try"
    )
    args = parser.parse_args()
    embedder = Embedder(load_backbone(), device="cpu", cache=EmbeddingCache(CACHE))
    print(f"The demo ({DEMO_UNLABELED_PER_CLASS} pictures to sort per class):")
    report(embedder, DEMO_CLASSES, DEMO_EXAMPLES_PER_CLASS, args.seeds)
    if args.candidates:
        print("Candidate class sets:")
        for names in CANDIDATE_SETS:
            classes = {name: CANDIDATE_CATEGORIES[name] for name in names}
            for shots in args.shots:
                report(embedder, classes, shots, args.seeds)


if __name__ == "__main__":
    main()
