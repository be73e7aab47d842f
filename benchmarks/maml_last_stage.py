"""MAML for real: every learner on the same episodes of held-out clip art and Tux Paint photos,
``maml`` as it is by default (adapting the image model's last stage) and with its head only,
and the time last-stage MAML takes to adapt on this CPU.

Data: ``openclipart-held-out`` (``--held-out-per-class`` images of each of its 32 folders, whose
subjects overlap the photos; never meta-trained on) and ``tuxpaint-photos`` (all 439 photos of
24 categories; never meta-trained on). Features are the pooled embeddings the last stage makes
from the cached activations entering it (:mod:`fsl_app.stage_cache`; they equal the full
forward pass's to 1e-4), so every learner sees the same numbers; ``maml`` gets each picture's
embedding followed by those activations, as in the app.

Part "heads": every registered learner (``maml`` by default adapts the last stage) and maml
with ``last_stage=False``, uncalibrated (the ranking is what accuracy reads). Part "stage": on
the first ``--stage-episodes`` episodes, last-stage MAML with flipped views of the support
added, with flipped queries averaged, and protonet with the same views, beside protonet.

    python benchmarks/maml_last_stage.py [--episodes 200] [--stage-episodes 30] [--part all]
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from fsl_app import pretrained  # noqa: E402
from fsl_app.backbones import load_backbone  # noqa: E402
from fsl_app.datasets import load_dataset  # noqa: E402
from fsl_app.evaluation.episodes import evaluate_learner, sample_episodes  # noqa: E402
from fsl_app.learners import (  # noqa: E402
    MAML,
    available_learners,
    create_learner,
    needs_last_stage,
)
from fsl_app.learners.maml import LastStageMAML  # noqa: E402
from fsl_app.stage_cache import (  # noqa: E402
    StageEmbedder,
    find_stage_initialisation,
    open_activation_cache,
)
from fsl_app.threads import single_threaded  # noqa: E402
from fsl_app.training.loop import episode_targets  # noqa: E402

WAYS, QUERIES = 5, 5


def load(embedder: dict[str, StageEmbedder], name: str, per_class: int | None):
    """Activations per view (n, C, H, W), pooled features (n, dim) and labels of a data set."""
    data = load_dataset(name, per_class=per_class)
    views = {}
    for view, stage_embedder in embedder.items():
        embedded = stage_embedder.embed(data.sources)
        views[view] = stage_embedder.activations(embedded)
        indices = embedded.indices
    stage = embedder["original"].stage
    with torch.no_grad():
        original = views["original"]
        pooled = torch.cat(
            [stage.pooled(original[i : i + 128]) for i in range(0, len(original), 128)]
        )
    return views, pooled.numpy(), np.asarray([data.labels[i] for i in indices])


def accuracy_cell(result) -> str:
    return f"{result.accuracy:.1%} ± {result.ci95:.1%}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--episodes", type=int, default=200, help="episodes per cell")
    parser.add_argument("--stage-episodes", type=int, default=30, help="for last-stage maml")
    parser.add_argument("--held-out-per-class", type=int, default=10)
    parser.add_argument("--old-maml", help="the Fashion-MNIST + digits maml checkpoint")
    parser.add_argument("--photos-only", action="store_true", help="skip the held-out clip art")
    parser.add_argument("--clip-art-only", action="store_true", help="skip the Tux Paint photos")
    parser.add_argument("--new-maml", help="a maml checkpoint to score beside the shipped one")
    parser.add_argument("--part", choices=["all", "heads", "stage"], default="all")
    parser.add_argument(
        "--rows", nargs="+", metavar="START", help="only the heads rows whose names start so"
    )
    args = parser.parse_args()

    backbone = load_backbone()
    cache = open_activation_cache()
    views = ("original",) if args.part == "heads" else ("original", "flip")
    embedders = {v: StageEmbedder(backbone, view=v, cache=cache) for v in views}
    datasets = (
        {} if args.clip_art_only else {"Tux Paint photos": load(embedders, "tuxpaint-photos", None)}
    )
    if not args.photos_only:
        datasets = {
            "held-out clip art": load(embedders, "openclipart-held-out", args.held_out_per_class),
            **datasets,
        }
    stage_checkpoint = find_stage_initialisation(backbone)
    # Every registered learner, maml as it is by default (its rows are the embedding followed by
    # the activations entering the last stage) and with its head only.
    heads = {name: (lambda n=name: create_learner(n)) for name in available_learners()}
    heads["maml (head only, last_stage=False)"] = lambda: create_learner("maml", last_stage=False)
    if args.new_maml:
        new = pretrained.load(args.new_maml, "maml")
        heads["maml (other checkpoint)"] = lambda: MAML(checkpoint=new)
    if args.old_maml:
        old = pretrained.load(args.old_maml, "maml")
        heads["maml (old Fashion-MNIST + digits checkpoint)"] = lambda: MAML(checkpoint=old)
    print(f"{WAYS}-way, {QUERIES} queries per class, episodes with seed 0; "
          f"load average {os.getloadavg()[0]:.1f}")  # fmt: skip
    print("| data | shots | learner | episodes | accuracy ± 95% CI | s per episode |")
    print("|---|---|---|---|---|---|")
    with single_threaded():
        for data_name, (views, features, labels) in datasets.items():
            for shots in (1, 5):
                episodes = sample_episodes(
                    labels, ways=WAYS, shots=shots, queries=QUERIES,
                    n_episodes=args.episodes, seed=0,
                )  # fmt: skip
                if args.part in ("all", "heads"):
                    for name, make in heads.items():
                        if args.rows and not any(name.startswith(r) for r in args.rows):
                            continue
                        rows = features
                        if name in available_learners() and needs_last_stage(name):
                            activations = views["original"].flatten(1).numpy()
                            rows = np.concatenate([features, activations], axis=1)
                        result = evaluate_learner(make, rows, labels, episodes, name=name)
                        print(f"| {data_name} | {shots} | {name} | {len(episodes)} | "
                              f"{accuracy_cell(result)} | {result.seconds_per_episode:.3f} |",
                              flush=True)  # fmt: skip
                if args.part in ("all", "stage"):
                    first = episodes[: args.stage_episodes]
                    result = evaluate_learner(heads["protonet"], features, labels, first, name="")
                    print(f"| {data_name} | {shots} | protonet (same episodes as below) | "
                          f"{len(first)} | {accuracy_cell(result)} | "
                          f"{result.seconds_per_episode:.3f} |", flush=True)  # fmt: skip
                    rows = {
                        "last-stage maml (+ flipped views)": [],
                        "last-stage maml (+ flipped views, flipped queries averaged)": [],
                        "protonet (+ flipped views, flipped queries averaged)": [],
                    }
                    seconds = []
                    stage = embedders["original"].stage
                    for episode in first:
                        support = torch.cat([views[v][episode.support] for v in views])
                        targets = episode_targets(labels[episode.support], episode.classes)
                        truth = episode_targets(labels[episode.query], episode.classes)
                        started = time.perf_counter()
                        learner = LastStageMAML(stage, stage_checkpoint)
                        learner.fit(support, targets.repeat(len(views)))
                        seconds.append(time.perf_counter() - started)
                        per_view = [learner.predict_proba(views[v][episode.query]) for v in views]
                        scored = {
                            "last-stage maml (+ flipped views)": per_view[0],
                            "last-stage maml (+ flipped views, flipped queries averaged)": sum(
                                per_view
                            ),
                        }
                        with torch.no_grad():
                            pooled = {v: stage.pooled(views[v][episode.support]) for v in views}
                            queries = {v: stage.pooled(views[v][episode.query]) for v in views}
                        proto = create_learner("protonet").fit(
                            torch.cat(list(pooled.values())).numpy(),
                            targets.repeat(len(views)).numpy(),
                        )
                        scored["protonet (+ flipped views, flipped queries averaged)"] = sum(
                            torch.as_tensor(proto.predict_proba(q.numpy()))
                            for q in queries.values()
                        )
                        for row, proba in scored.items():
                            rows[row].append((proba.argmax(1) == truth).float().mean().item())
                    for row, correct in rows.items():
                        ci = 1.96 * np.std(correct) / np.sqrt(len(correct))
                        print(f"| {data_name} | {shots} | {row} | "
                              f"{len(first)} | {np.mean(correct):.1%} ± {ci:.1%} | "
                              f"{np.mean(seconds):.2f} (fit) |", flush=True)  # fmt: skip
    print(f"\nload average at the end: {', '.join(f'{x:.1f}' for x in os.getloadavg())}")


if __name__ == "__main__":
    main()
