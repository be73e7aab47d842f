"""Time per refit: what labeling one picture costs the model, at 500 and 10,000 pictures to sort.

One refit is what the app does after a label: fit the calibrated classifier on the examples
with the pool as unlabeled pictures (the learner, the temperature's refits, "none of these"),
then predict and explain 500 pictures. Embeddings are real (Tux Paint photos and
Fashion-MNIST, from the embedding cache); a pool larger than the pictures embedded repeats
them with a little noise, which changes nothing for the timing (a fit keeps a seeded
MAX_UNLABELED of them either way). Torch runs on 2 threads, as on a 2-core machine.
Target: well under a second at either size.

The app runs fits and predictions on embeddings on one torch thread (``fsl_app/threads.py``);
each row is timed that way and, side by side, with torch's threads
(``FSL_APP_ONE_THREAD=0``). ``--busy N`` keeps N other processes spinning meanwhile, as a
user's other programs would.

    python benchmarks/refit.py [--rounds 5] [--pools 500 10000] [--learners protonet soft_kmeans]
        [--busy 1]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.learners import embed  # noqa: E402
from fsl_app import threads  # noqa: E402
from fsl_app.backbones import load_backbone  # noqa: E402
from fsl_app.classifier import CalibratedClassifier  # noqa: E402
from fsl_app.embeddings import Embedder, EmbeddingCache, default_cache_path  # noqa: E402

CLASSES, EXAMPLES_PER_CLASS, SHOWN = 5, 5, 500
TARGET_SECONDS = 1.0


def pool_of(features: np.ndarray, size: int, rng: np.random.Generator) -> np.ndarray:
    """``size`` rows drawn from ``features``; repeats get noise of 1% of the features' spread."""
    rows = features[rng.choice(len(features), size, replace=size > len(features))]
    if size > len(features):
        rows = rows + rng.normal(0, 0.01 * features.std(), rows.shape).astype(np.float32)
    return rows.astype(np.float32)


def refit_seconds(
    learner: str, support, labels, pool, rounds: int, *, one_thread: bool = True
) -> tuple[float, ...]:
    """Median seconds of (fit with calibration, predict + explain ``SHOWN`` pictures, CPU
    seconds of both: on a shared machine the wall clock also counts other people's work);
    ``one_thread=False`` times them on torch's threads."""
    os.environ[threads.ENV] = "1" if one_thread else "0"
    fits, predictions, cpu = [], [], []
    ids = [str(i) for i in range(SHOWN)]
    for _ in range(rounds):
        started, cpu_started = time.perf_counter(), time.process_time()
        model = CalibratedClassifier(learner).fit(support, labels, unlabeled=pool)
        fitted = time.perf_counter()
        model.predict_pictures(pool[:SHOWN], ids=ids, names=ids)
        fits.append(fitted - started)
        predictions.append(time.perf_counter() - fitted)
        cpu.append(time.process_time() - cpu_started)
    return statistics.median(fits), statistics.median(predictions), statistics.median(cpu)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--pools", type=int, nargs="+", default=[500, 10_000])
    parser.add_argument("--learners", nargs="+", default=["protonet", "soft_kmeans"])
    parser.add_argument("--threads", type=int, default=2, help="torch threads (cores)")
    parser.add_argument("--busy", type=int, default=0, help="other processes kept spinning")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    spinning = [
        subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(args.busy)
    ]
    try:
        table(args)
    finally:
        for process in spinning:
            process.kill()


def table(args: argparse.Namespace) -> None:
    embedder = Embedder(load_backbone(), cache=EmbeddingCache(default_cache_path()))
    rng = np.random.default_rng(0)
    print(
        f"{CLASSES} classes x {EXAMPLES_PER_CLASS} examples; median of {args.rounds} refits (s); "
        f"{args.busy} other processes spinning"
    )
    print(
        "| data set | learner | pool | fit + calibrate | predict + explain 500 | total | "
        "CPU s | target | total on torch's threads |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for name, (features, names) in (
        ("Tux", embed(embedder, "tuxpaint-photos")),
        ("F-MNIST", embed(embedder, "fashion-mnist-test", 100)),
    ):
        classes = rng.choice(np.unique(names), CLASSES, replace=False)
        support = np.concatenate(
            [features[names == c][:EXAMPLES_PER_CLASS] for c in classes]
        ).astype(np.float32)
        labels = np.repeat(classes, EXAMPLES_PER_CLASS)
        for size in args.pools:
            pool = pool_of(features, size, rng)
            for learner in args.learners:
                fit, predict, cpu = refit_seconds(learner, support, labels, pool, args.rounds)
                verdict = "PASS" if fit + predict < TARGET_SECONDS else "MISS"
                fit_all, predict_all, _ = refit_seconds(
                    learner, support, labels, pool, args.rounds, one_thread=False
                )
                print(
                    f"| {name} | {learner} | {size} | {fit:.3f} | {predict:.3f} | "
                    f"{fit + predict:.3f} | {cpu:.3f} | {verdict} | {fit_all + predict_all:.3f} |"
                )
    print(f"\nload average: {', '.join(f'{x:.1f}' for x in os.getloadavg())}")


if __name__ == "__main__":
    main()
