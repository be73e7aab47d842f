"""Every learner on the same episodes of photos no module was meta-trained on, and the three ways
to meta-learn MAML's initialisation side by side.

Part 1: each registered learner (with its shipped checkpoint, if it has one) on the same
fixed-seed 5-way episodes of Tux Paint photos, 1-shot and 5-shot, calibrated as the app uses it:
accuracy ± 95% CI, ECE, seconds per episode.

Part 2: MAML's initialisation meta-trained on Fashion-MNIST + digits (base classes; never the
photos) by second-order MAML, first-order MAML and Reptile with the same tasks, seed and budget
(fixed step sizes, since Reptile cannot learn them), then scored on held-out base classes and
on the Tux Paint photos: accuracy and meta-training time.

    python benchmarks/learners.py [--episodes 300] [--meta-episodes 400] [--per-class 100]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from fsl_app.backbones import load_backbone  # noqa: E402
from fsl_app.classifier import CalibratedClassifier  # noqa: E402
from fsl_app.datasets import load_dataset  # noqa: E402
from fsl_app.embeddings import Embedder, EmbeddingCache, default_cache_path  # noqa: E402
from fsl_app.evaluation.episodes import evaluate_learner, sample_episodes  # noqa: E402
from fsl_app.learners import MAML, available_learners, create_learner  # noqa: E402
from fsl_app.training.config import MetaTrainingConfig  # noqa: E402
from fsl_app.training.loop import meta_train  # noqa: E402
from fsl_app.training.maml import ALGORITHMS, MAMLOptions  # noqa: E402

WAYS, QUERIES = 5, 5


def embed(embedder: Embedder, name: str, per_class: int | None) -> tuple[np.ndarray, np.ndarray]:
    data = load_dataset(name, per_class=per_class)
    embedded = embedder.embed(data.sources)
    labels = np.asarray([f"{name}:{data.labels[i]}" for i in embedded.indices])
    return embedded.embeddings, labels


def table(rows: list[list[str]], header: list[str]) -> None:
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for row in rows:
        print("| " + " | ".join(row) + " |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--episodes", type=int, default=300, help="evaluation episodes per row")
    parser.add_argument("--meta-episodes", type=int, default=400, help="tasks per meta-training")
    parser.add_argument("--per-class", type=int, default=100, help="base images per class")
    parser.add_argument("--skip-meta", action="store_true", help="part 1 only")
    args = parser.parse_args()

    backbone = load_backbone()
    embedder = Embedder(backbone, cache=EmbeddingCache(default_cache_path()))
    photos, photo_labels = embed(embedder, "tuxpaint", None)

    print(f"Part 1: every learner, Tux Paint photos, {WAYS}-way, {args.episodes} episodes per row")
    rows = []
    for shots in (1, 5):
        episodes = sample_episodes(
            photo_labels, ways=WAYS, shots=shots, queries=QUERIES, n_episodes=args.episodes, seed=0
        )
        for learner in available_learners():
            result = evaluate_learner(
                lambda learner=learner: CalibratedClassifier(learner),
                photos,
                photo_labels,
                episodes,
                name=learner,
            )
            rows.append(
                [
                    learner,
                    str(shots),
                    f"{result.accuracy:.1%} ± {result.ci95:.1%}",
                    f"{result.ece:.3f}",
                    f"{result.seconds_per_episode:.3f}",
                ]
            )
    table(rows, ["learner", "shots", "accuracy ± 95% CI", "ECE", "s/episode"])
    if args.skip_meta:
        return

    base = [embed(embedder, name, args.per_class) for name in ("fashion-mnist", "digits")]
    features = np.concatenate([f for f, _ in base])
    labels = np.concatenate([lab for _, lab in base])
    rng = np.random.default_rng(0)
    held_out = [c for _, lab in base for c in rng.permutation(np.unique(lab))[:3]]
    train = ~np.isin(labels, held_out)
    test_features, test_labels = features[~train], labels[~train]
    print(
        f"\nPart 2: MAML's initialisation meta-trained {args.meta_episodes} tasks on "
        f"{len(np.unique(labels[train]))} base classes; held out: {', '.join(held_out)}"
    )

    def scores(make) -> list[str]:
        cells = []
        for data, data_labels in ((test_features, test_labels), (photos, photo_labels)):
            for shots in (1, 5):
                episodes = sample_episodes(
                    data_labels, ways=WAYS, shots=shots, queries=QUERIES,
                    n_episodes=args.episodes, seed=0,
                )  # fmt: skip
                result = evaluate_learner(make, data, data_labels, episodes, name="")
                cells.append(f"{result.accuracy:.1%} ± {result.ci95:.1%}")
        return cells

    rows = [["protonet (no meta-training)", "-", *scores(lambda: create_learner("protonet"))]]
    rows.append(["maml, prototype init", "-", *scores(lambda: MAML(checkpoint=None))])
    with tempfile.TemporaryDirectory() as tmp:
        for algorithm in ALGORITHMS:
            config = MetaTrainingConfig(
                episodes=args.meta_episodes,
                options=MAMLOptions(algorithm=algorithm, meta_sgd=False),
            )
            out = Path(tmp) / f"maml-{algorithm}.safetensors"
            started = time.perf_counter()
            trained = meta_train(
                features[train], labels[train], config, backbone=backbone.name, out=out
            ).checkpoint
            seconds = time.perf_counter() - started
            rows.append(
                [
                    f"maml, {algorithm} init",
                    f"{seconds:.0f}",
                    *scores(lambda trained=trained: MAML(checkpoint=trained)),
                ]
            )
    table(
        rows,
        ["learner", "meta-train s", "held-out 1-shot", "held-out 5-shot", "Tux 1-shot",
         "Tux 5-shot"],
    )  # fmt: skip
    print(f"\nload average: {', '.join(f'{x:.1f}' for x in os.getloadavg())}")


if __name__ == "__main__":
    main()
