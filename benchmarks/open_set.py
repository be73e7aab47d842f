"""How often "none of these" flags pictures of the known classes and of other things.

Small projects: 3 Tux Paint categories (of those with >= 10 photos, no two from the same
family such as two alphabets) with 1, 3 or 5 examples each; the other photos of those
categories are the known queries. Other things: photos of Tux Paint categories from other
families, scikit-image's bundled photos and textures, scikit-learn digits, Fashion-MNIST.

Rows, at strictness 1: the detector without negatives (what shipped before), the detector
with 3 pictures of other things marked "none of these" (not among the queries), and two
ceilings: the share of other things a threshold chosen afterwards could flag while flagging
8% of the known queries, for the distance the detector uses and for the same distance minus
the distance to the nearest of ~1,300 Open Clip Art pictures (a background of generic
images: if that does not beat the plain distance, a background does not help here).

    python benchmarks/open_set.py [--draws 100]
"""

from __future__ import annotations

import argparse
import io
import random
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from fsl_app.backbones import load_backbone  # noqa: E402
from fsl_app.datasets import load_dataset  # noqa: E402
from fsl_app.embeddings import Embedder, EmbeddingCache  # noqa: E402
from fsl_app.trust.open_set import OpenSetDetector, power_normalize  # noqa: E402

TUXPAINT = Path("/usr/share/tuxpaint/stamps")
OPENCLIPART = Path("/usr/share/openclipart/png")
SKIMAGE = ("astronaut", "brick", "camera", "cat", "chelsea", "checkerboard", "clock", "coffee")
SKIMAGE += ("coins", "colorwheel", "grass", "gravel", "horse", "hubble_deep_field", "logo")
SKIMAGE += ("immunohistochemistry", "moon", "page", "rocket", "text")
FALSE_ALARMS = 0.08


def folders(root: Path, minimum: int, skip: str | None = None) -> dict[str, list[Path]]:
    found: dict[str, list[Path]] = {}
    for path in sorted(root.rglob("*.png")):
        if skip not in path.relative_to(root).parts:
            found.setdefault(str(path.parent.relative_to(root)), []).append(path)
    return {name: paths for name, paths in found.items() if len(paths) >= minimum}


def skimage_pictures() -> list[bytes]:
    import skimage.data
    from PIL import Image

    pictures = []
    for name in SKIMAGE:
        pixels = np.asarray(getattr(skimage.data, name)(), dtype=np.float64)
        pixels = (255 * (pixels - pixels.min()) / max(np.ptp(pixels), 1e-9)).astype(np.uint8)
        buffer = io.BytesIO()
        Image.fromarray(pixels).save(buffer, format="PNG")
        pictures.append(buffer.getvalue())
    return pictures


def family(category: str) -> str:
    return "/".join(category.split("/")[:2])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--draws", type=int, default=100, help="projects per number of shots")
    args = parser.parse_args()
    embedder = Embedder(load_backbone(), device="cpu", cache=EmbeddingCache(None))
    tux = {c: embedder.embed(p).embeddings for c, p in folders(TUXPAINT, 10, "cartoon").items()}
    foreign = {
        "skimage": embedder.embed(skimage_pictures()).embeddings,
        "digits": embedder.embed(load_dataset("digits", per_class=15).sources).embeddings,
        "fashion": embedder.embed(load_dataset("fashion-mnist-test", per_class=15).sources),
    }
    foreign["fashion"] = foreign["fashion"].embeddings
    rng = random.Random(0)
    clipart = [
        p
        for paths in folders(OPENCLIPART, 10).values()
        for p in rng.sample(paths, min(12, len(paths)))
    ]
    background = power_normalize(embedder.embed(clipart).embeddings)
    names = sorted(tux)
    print(f"{len(names)} Tux Paint categories, {len(background)} clip-art pictures, ", end="")
    print(f"{args.draws} projects per row, strictness 1")
    columns = ["shots", "detector", "known flagged %", "other flagged %", "Tux", "scikit-image"]
    print("| " + " | ".join([*columns, "digits", "Fashion-MNIST"]) + " |")
    print("|---|---|---|---|---|---|---|---|")
    for shots in (1, 3, 5):
        rows: dict[str, dict[str, list]] = {}
        scores: dict[str, dict[str, list]] = {"distance": {}, "minus clip art": {}}
        draw_rng = np.random.default_rng(shots)
        for _ in range(args.draws):
            while True:
                known = list(draw_rng.choice(names, 3, replace=False))
                if len({family(c) for c in known}) == 3:
                    break
            support, labels, queries = [], [], {"known": []}
            for name in known:
                order = draw_rng.permutation(len(tux[name]))
                support.append(tux[name][order[:shots]])
                labels += [name] * shots
                queries["known"].append(tux[name][order[shots : shots + 5]])
            queries["known"] = np.concatenate(queries["known"])
            others = [c for c in names if family(c) not in {family(k) for k in known}]
            queries["Tux"] = np.concatenate(
                [tux[c][draw_rng.choice(len(tux[c]), 2, replace=False)] for c in others]
            )
            queries.update(foreign)
            pool = np.concatenate([v for k, v in queries.items() if k != "known"])
            told = draw_rng.choice(len(pool), 3, replace=False)
            support = np.concatenate(support)
            detectors = {
                "before (no negatives)": OpenSetDetector().fit(support, labels),
                "3 negatives": OpenSetDetector().fit(support, labels, negatives=pool[told]),
            }
            for row, detector in detectors.items():
                for kind, query in queries.items():
                    flags = detector.is_unknown(query)
                    if row == "3 negatives" and kind != "known":
                        # The pictures told are not scored.
                        flags = np.delete(flags, np.isin(query, pool[told]).all(1).nonzero())
                    rows.setdefault(row, {}).setdefault(kind, []).append(flags.mean())
            plain = detectors["before (no negatives)"]
            for kind, query in queries.items():
                distance = plain.distance(query)
                nearest = 1 - (power_normalize(query) @ background.T).max(axis=1)
                scores["distance"].setdefault(kind, []).append(distance)
                scores["minus clip art"].setdefault(kind, []).append(distance - nearest)
        kinds = ["Tux", "skimage", "digits", "fashion"]
        for row, flags in rows.items():
            other = np.mean([np.mean(flags[k]) for k in kinds])
            cells = [f"{100 * np.mean(flags[k]):.1f}" for k in ["known", *kinds]]
            print(f"| {shots} | {row} | {cells[0]} | {100 * other:.1f} | {' | '.join(cells[1:])} |")
        for row, by_kind in scores.items():
            threshold = np.quantile(np.concatenate(by_kind["known"]), 1 - FALSE_ALARMS)
            shares = [np.mean(np.concatenate(by_kind[k]) > threshold) for k in kinds]
            cells = " | ".join(f"{100 * s:.1f}" for s in shares)
            print(f"| {shots} | ceiling: {row} | 8.0 | {100 * np.mean(shares):.1f} | {cells} |")


if __name__ == "__main__":
    main()
