"""Every learner on the same episodes: registered learners, the default against peers, MAML.

The registered learners calibrated as the app uses them, the default learner against published
few-shot methods, and the three ways to meta-learn MAML's initialisation.

``--parts registered``: each registered learner (with its shipped checkpoint, if it has one) on
the same fixed-seed 5-way episodes of Tux Paint photos, 1-shot and 5-shot, calibrated as the
app uses it: accuracy ± 95% CI, ECE, seconds per episode.

``--parts peers``: the default learner against published few-shot methods on the same
embeddings and episodes (Tux Paint photos, every category with >= 10 photos, and
Fashion-MNIST), with the pools a real project has. Each episode is 5-way: ``shots`` examples
per class and a pool of pictures still to sort. ``balanced``: 5 pictures per class;
``imbalanced``: 25 pictures whose class proportions are drawn from Dirichlet(2) (as far as a
class has pictures); ``distractors``: the balanced pool plus 5 pictures of each of 3 classes
outside the episode, which are in the pool but not scored. Every method sees the whole pool
(transductive ones learn from it) and is scored on the same pictures of the same episodes.
Peers come from easyfsl (``pip install --no-deps easyfsl``), a benchmark dependency only, and
from the papers (alpha-TIM, Ren et al.'s soft k-means, the simple baselines). Printed:
accuracy (%) per cell, the 95% half-width of the default's, and the default's margin over the
best peer. ``--candidate NAME`` puts another registered learner in the default's place, to
see whether it should become the default; its inductive self (fitted without the pool) and
protonet are printed beside it, not counted as peers. A second table checks the candidate on
the pools a real project has, against its inductive self on the same episodes: a pool of one
picture (each scored query alone), a pool of one class (each class's queries alone, as when a
folder of one kind is sorted), the whole folder of one class (every picture of the class
outside the support, 5 to 35 Tux Paint photos or 95-99 Fashion-MNIST images, beside the learner
without a pool on the same pictures), and a pool of every picture of the data set outside the
support (most of them of other classes; the learner and the app keep a seeded 500 of them),
scoring the episode's queries. Peers' per-episode accuracies are kept beside the embedding
cache (``peers/``, keyed by the method, the features and the episodes), so trying another
candidate reruns only our learners; their ms/episode column then reads 0. Peers built on this
project's learners (``PROJECT_CODE_PEERS``) always run.

``--parts meta``: MAML's initialisation meta-trained on Fashion-MNIST + digits (base classes;
never the photos) by second-order MAML, first-order MAML and Reptile with the same tasks, seed
and budget (fixed step sizes, since Reptile cannot learn them), then scored on held-out base
classes and on the Tux Paint photos: accuracy and meta-training time.

    python benchmarks/learners.py [--parts registered peers meta] [--episodes 300]
        [--peer-episodes 200] [--candidate linear] [--only TIM] [--meta-episodes 400]
        [--per-class 100] [--backbone tf_efficientnet_lite2]

``--backbone`` puts another image model under every learner and peer alike (the shipped
checkpoints of meta-learned learners are for the default one).
"""

from __future__ import annotations

import argparse
import hashlib
import os
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from fsl_app.backbones import DEFAULT_BACKBONE, load_backbone  # noqa: E402
from fsl_app.classifier import CalibratedClassifier  # noqa: E402
from fsl_app.datasets import load_dataset  # noqa: E402
from fsl_app.embeddings import Embedder, EmbeddingCache, default_cache_path  # noqa: E402
from fsl_app.evaluation.episodes import evaluate_learner, sample_episodes  # noqa: E402
from fsl_app.learners import (  # noqa: E402
    DEFAULT_LEARNER,
    MAML,
    available_learners,
    create_learner,
)
from fsl_app.learners.protonet import class_means  # noqa: E402
from fsl_app.training.config import MetaTrainingConfig  # noqa: E402
from fsl_app.training.loop import meta_train  # noqa: E402
from fsl_app.training.maml import ALGORITHMS, MAMLOptions  # noqa: E402

WAYS, QUERIES, DISTRACTOR_CLASSES = 5, 5, 3
PARTS = ("registered", "peers", "meta")
POOLS = ("balanced", "imbalanced", "distractors")
# (support, targets, pool) -> predicted class index of each pool picture
Method = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], np.ndarray]


def embed(
    embedder: Embedder, name: str, per_class: int | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Embeddings (n, dim) and labels (n,) of the offline data set ``name`` (e.g.
    ``"tuxpaint-photos"``: every Tux Paint stamp folder with at least 10 photos)."""
    data = load_dataset(name, per_class=per_class)
    embedded = embedder.embed(data.sources)
    return embedded.embeddings, np.asarray([data.labels[i] for i in embedded.indices])


def episodes(labels: np.ndarray, shots: int, pool: str, n: int, seed: int = 0) -> list[tuple]:
    """``n`` (support, support targets, pool, pool targets; -1 = not scored) index tuples."""
    rng = np.random.default_rng(seed)
    names = np.unique(labels)
    members = {c: np.flatnonzero(labels == c) for c in names}
    eligible = [c for c in names if len(members[c]) >= shots + QUERIES]
    out = []
    for _ in range(n):
        chosen = rng.choice(eligible, size=WAYS + DISTRACTOR_CLASSES, replace=False)
        counts = np.full(WAYS, QUERIES)
        if pool == "imbalanced":
            counts = rng.multinomial(WAYS * QUERIES, rng.dirichlet(np.full(WAYS, 2.0)))
        support, pool_rows, pool_targets = [], [], []
        for k, c in enumerate(chosen[:WAYS]):
            picks = rng.permutation(members[c])
            support.append(picks[:shots])
            rest = picks[shots:][: counts[k]]
            pool_rows.append(rest)
            pool_targets.append(np.full(len(rest), k))
        if pool == "distractors":
            for c in chosen[WAYS:]:
                rest = rng.choice(members[c], size=QUERIES, replace=False)
                pool_rows.append(rest)
                pool_targets.append(np.full(QUERIES, -1))
        support = np.concatenate(support)
        targets = np.repeat(np.arange(WAYS), shots)
        out.append((support, targets, np.concatenate(pool_rows), np.concatenate(pool_targets)))
    return out


def ours(name: str = DEFAULT_LEARNER, *, inductive: bool = False, **params) -> Method:
    """A registered learner fitted as the app fits it (the pool passed as pictures still to
    sort) or, ``inductive``, on the examples alone; it predicts every pool picture."""

    def run(support, targets, pool):
        unlabeled = None if inductive else pool
        learner = create_learner(name, **params).fit(support, targets.numpy(), unlabeled=unlabeled)
        return learner.predict_proba(pool).argmax(axis=1)

    return run


def easyfsl(cls_name: str, **params) -> Method:
    def run(support, targets, pool):
        import easyfsl.methods

        method = getattr(easyfsl.methods, cls_name)(backbone=torch.nn.Identity(), **params)
        method.process_support_set(support, targets)
        with torch.no_grad() if cls_name not in ("TIM", "PTMAP") else torch.enable_grad():
            scores = method(pool)
        return scores.detach().argmax(dim=1).numpy()

    return run


def soft_kmeans_ren(steps: int = 3, temperature: float = 0.1) -> Method:
    """Soft k-means as Ren et al. 2018 publish it (arXiv:1803.00676), without the guards of
    this project's ``soft_kmeans``: class means of the raw embeddings, then ``steps`` times
    every pool picture soft-assigned by cosine similarity over ``temperature`` and each class
    mean recomputed from its examples (weight 1) and the pool (its soft assignments)."""

    def run(support, targets, pool):
        one_hot = F.one_hot(targets, int(targets.max()) + 1).to(support.dtype)
        sums, counts = one_hot.T @ support, one_hot.sum(0)
        prototypes = sums / counts[:, None]  # the class means
        pool_directions = F.normalize(pool, dim=1)

        def scores():
            return pool_directions @ F.normalize(prototypes, dim=1).T / temperature

        for _ in range(steps):
            weights = scores().softmax(dim=1)
            prototypes = (sums + weights.T @ pool) / (counts + weights.sum(0))[:, None]
        return scores().argmax(dim=1).numpy()

    return run


def alpha_tim(iterations: int = 1000, lr: float = 1e-4, scale: float = 15.0) -> Method:
    """alpha-TIM (Veilleux et al., NeurIPS 2021, arXiv:2106.11834), the transductive method
    made for pools whose class proportions are not balanced, with the paper's settings: on
    unit-length embeddings, class weights start at the class means and take ``iterations``
    Adam steps (``lr``) on the examples' cross-entropy minus the pool's mutual information,
    whose two entropies (of the pool's label marginal and of each picture's label) are
    Tsallis alpha-entropies, alpha 2 at 1 shot, 7 from 5 shots on (5 between); logits are
    ``-scale / 2`` times the squared distance to each class weight. Measured (200 episodes a
    cell, 2 CPU cores): 77.7 mean over the 12 cells against the default's 78.3, the best of
    every method on Tux Paint 5-shot imbalanced pools (86.4 against 84.0); 0.7 s an episode."""

    def run(support, targets, pool):
        n_classes = int(targets.max()) + 1
        shots = len(targets) / n_classes
        alpha = 2.0 if shots <= 1 else 7.0 if shots >= 5 else 5.0
        support, pool = F.normalize(support, dim=1), F.normalize(pool, dim=1)
        weights = class_means(support, targets, n_classes).clone().requires_grad_()
        optimizer = torch.optim.Adam([weights], lr=lr)

        def logits(x: torch.Tensor) -> torch.Tensor:
            return -scale / 2 * torch.cdist(x, weights).square()

        def tsallis(probabilities: torch.Tensor) -> torch.Tensor:
            return (1 - (probabilities + 1e-12).pow(alpha).sum(-1)) / (alpha - 1)

        with torch.enable_grad():
            for _ in range(iterations):
                probabilities = logits(pool).softmax(dim=1)
                information = tsallis(probabilities.mean(0)) - tsallis(probabilities).mean()
                loss = F.cross_entropy(logits(support), targets) - information
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
        return logits(pool).argmax(dim=1).detach().numpy()

    return run


def own_methods(candidate: str = DEFAULT_LEARNER) -> dict[str, Method]:
    """This project's rows, never counted as peers: the candidate, its inductive self (and
    soft_kmeans without its claim check, and with its shares spread in proportion only), the
    app's default when the candidate is another, and protonet (the default it replaced)."""
    role = "default" if candidate == DEFAULT_LEARNER else "candidate"
    own = {
        f"{role} ({candidate})": ours(candidate),
        f"{candidate}, inductive (no pool)": ours(candidate, inductive=True),
    }
    if candidate == "soft_kmeans":
        # What the check for a claimed pool share costs where every class has pictures
        own[f"{candidate}, no claim check"] = ours(candidate, claims=False)
        # What filling half of each class's bound from its most confident pictures gains
        own[f"{candidate}, shares in proportion only"] = ours(candidate, confident_share=0.0)
    if candidate != DEFAULT_LEARNER:
        own[f"app default ({DEFAULT_LEARNER})"] = ours()
    if candidate != "protonet":
        own["protonet (examples alone)"] = ours("protonet")
    return own


# Peers that run this project's learners: never read from the cache, which holds only code
# that does not change with this project (clear ``peers/`` after editing a peer here).
PROJECT_CODE_PEERS = ("centred-L2 nearest mean", "L2 logistic regression", "Proto-MAML head")


def peer_methods() -> dict[str, Method]:
    return {
        "ProtoNet (easyfsl)": easyfsl("PrototypicalNetworks"),
        "SimpleShot (easyfsl)": easyfsl("SimpleShot", feature_normalization=2),
        "BD-CSPN (easyfsl)": easyfsl("BDCSPN"),
        "LaplacianShot (easyfsl)": easyfsl("LaplacianShot"),
        "TIM (easyfsl)": easyfsl("TIM"),
        "alpha-TIM": alpha_tim(),
        "PT-MAP (easyfsl, L2)": easyfsl("PTMAP", feature_normalization=2),
        "centred-L2 nearest mean": ours("protonet", normalize="cl2"),
        "L2 logistic regression": ours("linear"),
        # Triantafillou et al. 2020: a classifier initialised from the prototypes, fine-tuned
        # on the examples by gradient steps (this project's maml on embeddings, no checkpoint).
        "Proto-MAML head": ours("maml", checkpoint=None, last_stage=False),
        "soft k-means (3 steps)": soft_kmeans_ren(steps=3),
    }


def peer_cache_path(name: str, features: np.ndarray, batch: list[tuple]) -> Path:
    """Where a peer's per-episode accuracies on exactly these features and episodes are kept:
    peers do not change with this project's code, so a rerun reads them back."""
    digest = hashlib.sha1(name.encode())
    digest.update(np.ascontiguousarray(features).tobytes())
    for episode in batch:
        for part in episode:
            digest.update(np.ascontiguousarray(part).tobytes())
    return default_cache_path().parent / "peers" / f"{digest.hexdigest()}.npy"


def accuracy(method: Method, features: np.ndarray, batch: list[tuple]) -> np.ndarray:
    scores = []
    for support, targets, pool, pool_targets in batch:
        predicted = method(
            torch.as_tensor(features[support]),
            torch.as_tensor(targets),
            torch.as_tensor(features[pool]),
        )
        scored = pool_targets >= 0
        scores.append(float((predicted[scored] == pool_targets[scored]).mean()))
    return np.asarray(scores)


def pool_sizes(
    candidate: str, features: np.ndarray, labels: np.ndarray, batch: list[tuple]
) -> dict[str, np.ndarray]:
    """Accuracy per episode of ``candidate`` with no pool, a pool of one, a pool of one class
    (each class's queries in turn: a folder of one kind of picture to sort), a whole folder of
    one class (every picture of the class outside the support, scored; beside it the learner
    without a pool on the same pictures) and a large pool."""
    per_episode = [episode_pool_sizes(candidate, features, labels, *episode) for episode in batch]
    return {name: np.asarray([e[name] for e in per_episode]) for name in per_episode[0]}


def episode_pool_sizes(
    candidate: str,
    features: np.ndarray,
    labels: np.ndarray,
    support: np.ndarray,
    targets: np.ndarray,
    pool: np.ndarray,
    pool_targets: np.ndarray,
) -> dict[str, float]:
    """One episode's accuracies for :func:`pool_sizes`."""
    scored = pool[pool_targets >= 0]
    truth = pool_targets[pool_targets >= 0]

    def fit(unlabeled: np.ndarray | None = None):
        # A new learner each time: fit returns the learner itself, refitted in place.
        return create_learner(candidate).fit(features[support], targets, unlabeled=unlabeled)

    def share_right(folders: list[tuple[int, np.ndarray]], *, with_pool: bool = True) -> float:
        """Share right when each class ``k``'s ``rows`` are the whole pool, sorted alone (or
        by the learner without a pool)."""
        right = [
            (fit(features[rows]) if with_pool else inductive).predict(features[rows]) == k
            for k, rows in folders
        ]
        return float(np.concatenate(right).mean())

    inductive = fit()
    single = [fit(features[[row]]).predict(features[[row]])[0] for row in scored]
    folders = [
        (k, np.setdiff1d(np.flatnonzero(labels == labels[support[targets == k][0]]), support))
        for k in range(int(targets.max()) + 1)
    ]
    large = fit(features[np.setdiff1d(np.arange(len(features)), support)])
    return {
        "no pool": float((inductive.predict(features[scored]) == truth).mean()),
        "pool of 1": float((np.asarray(single) == truth).mean()),
        "pool of one class": share_right([(k, scored[truth == k]) for k in np.unique(truth)]),
        "whole class": share_right(folders),
        "whole class, no pool": share_right(folders, with_pool=False),
        "large pool": float((large.predict(features[scored]) == truth).mean()),
    }


def table(rows: list[list[str]], header: list[str]) -> None:
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for row in rows:
        print("| " + " | ".join(row) + " |")


def registered_part(photos: np.ndarray, photo_labels: np.ndarray, args: argparse.Namespace) -> None:
    print(f"Every learner, Tux Paint photos, {WAYS}-way, {args.episodes} episodes per row")
    rows = []
    for shots in (1, 5):
        batch = sample_episodes(
            photo_labels, ways=WAYS, shots=shots, queries=QUERIES, n_episodes=args.episodes, seed=0
        )
        for learner in available_learners():
            result = evaluate_learner(
                lambda learner=learner: CalibratedClassifier(learner),
                photos,
                photo_labels,
                batch,
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


def peers_part(embedder: Embedder, args: argparse.Namespace) -> None:
    data = {
        "Tux": embed(embedder, "tuxpaint-photos"),
        "F-MNIST": embed(embedder, "fashion-mnist-test", args.per_class),
    }
    own_rows = own_methods(args.candidate)
    everything = {**own_rows, **peer_methods()}
    own = list(own_rows)
    chosen = {
        name: method
        for name, method in everything.items()
        if not args.only or name in own or any(o in name for o in args.only)
    }
    cells = [(d, s, p) for d in data for s in (1, 5) for p in POOLS]
    batches = {(d, s, p): episodes(data[d][1], s, p, args.peer_episodes) for d, s, p in cells}
    results: dict[str, list[np.ndarray]] = {name: [] for name in chosen}
    seconds = dict.fromkeys(chosen, 0.0)
    for dataset, shots, pool in cells:
        features = data[dataset][0]
        batch = batches[dataset, shots, pool]
        for name, method in chosen.items():
            uncached = name in own or name in PROJECT_CODE_PEERS
            cached = None if uncached else peer_cache_path(name, features, batch)
            if cached is not None and cached.exists():
                results[name].append(np.load(cached))
                continue
            started = time.perf_counter()
            results[name].append(accuracy(method, features, batch))
            seconds[name] += time.perf_counter() - started
            if cached is not None:
                cached.parent.mkdir(parents=True, exist_ok=True)
                np.save(cached, results[name][-1])
    header = [f"{d} {s}-shot {p}" for d, s, p in cells]
    print(
        f"\nThe default against peers: {WAYS}-way, {args.peer_episodes} episodes per cell, "
        "same episodes in a column; accuracy %"
    )
    print("| method | " + " | ".join(header) + " | mean | ms/episode |")
    print("|---" * (len(header) + 3) + "|")
    per_episode = 1000 / (args.peer_episodes * len(cells))
    for name, accs in results.items():
        row = [f"{100 * a.mean():.1f}" for a in accs]
        mean = 100 * np.mean([a.mean() for a in accs])
        print(
            f"| {name} | "
            + " | ".join(row)
            + f" | {mean:.1f} | {seconds[name] * per_episode:.0f} |"
        )
    default = next(iter(results))
    margins, half_widths = [], []
    peers = [accs for name, accs in results.items() if name not in own]
    for k in range(len(cells)):
        if peers:
            best_peer = max(accs[k].mean() for accs in peers)
            margins.append(100 * (results[default][k].mean() - best_peer))
        half_widths.append(100 * 1.96 * results[default][k].std() / np.sqrt(args.peer_episodes))
    if peers:
        print("| default - best peer | " + " | ".join(f"{m:+.1f}" for m in margins)
              + f" | {np.mean(margins):+.1f} | |")  # fmt: skip
    print("| default's 95% ± | " + " | ".join(f"{h:.1f}" for h in half_widths) + " | | |")
    if args.skip_pool_sizes:
        return
    print(f"\n{args.candidate} against its inductive self, balanced episodes; accuracy %")
    print(
        "| data set | shots | no pool | pool of 1 | pool of one class | whole class "
        "| whole class, no pool | large pool (pictures) |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for dataset, (features, labels) in data.items():
        for shots in (1, 5):
            batch = batches[dataset, shots, "balanced"]
            sizes = pool_sizes(args.candidate, features, labels, batch)
            row = " | ".join(f"{100 * v.mean():.1f}" for v in sizes.values())
            print(f"| {dataset} | {shots} | {row} ({len(features) - WAYS * shots}) |")


def meta_part(
    embedder: Embedder, photos: np.ndarray, photo_labels: np.ndarray, args: argparse.Namespace
) -> None:
    base = []  # labels named by their data set: Fashion-MNIST and digits side by side
    for name in ("fashion-mnist", "digits"):
        features, labels = embed(embedder, name, args.per_class)
        base.append((features, np.asarray([f"{name}:{label}" for label in labels])))
    features = np.concatenate([f for f, _ in base])
    labels = np.concatenate([lab for _, lab in base])
    rng = np.random.default_rng(0)
    held_out = [c for _, lab in base for c in rng.permutation(np.unique(lab))[:3]]
    train = ~np.isin(labels, held_out)
    test_features, test_labels = features[~train], labels[~train]
    print(
        f"\nMAML's initialisation meta-trained {args.meta_episodes} tasks on "
        f"{len(np.unique(labels[train]))} base classes; held out: {', '.join(held_out)}"
    )

    def scores(make) -> list[str]:
        cells = []
        for data, data_labels in ((test_features, test_labels), (photos, photo_labels)):
            for shots in (1, 5):
                batch = sample_episodes(
                    data_labels, ways=WAYS, shots=shots, queries=QUERIES,
                    n_episodes=args.episodes, seed=0,
                )  # fmt: skip
                result = evaluate_learner(make, data, data_labels, batch, name="")
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
                features[train], labels[train], config, backbone=embedder.backbone.name, out=out
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--parts", nargs="+", choices=PARTS, default=list(PARTS))
    parser.add_argument(
        "--episodes", type=int, default=300, help="episodes per row (registered, meta)"
    )
    parser.add_argument("--peer-episodes", type=int, default=200, help="episodes per peer cell")
    parser.add_argument(
        "--per-class", type=int, default=100, help="Fashion-MNIST and digits images per class"
    )
    parser.add_argument("--only", nargs="*", help="peer names to run (substring match)")
    parser.add_argument(
        "--candidate",
        default=DEFAULT_LEARNER,
        help="the registered learner measured against the peers (default: the app's default)",
    )
    parser.add_argument(
        "--skip-pool-sizes", action="store_true", help="peers: the first table only"
    )
    parser.add_argument("--meta-episodes", type=int, default=400, help="tasks per meta-training")
    parser.add_argument(
        "--backbone",
        default=DEFAULT_BACKBONE,
        help="image model whose embeddings every learner and peer shares (default: the app's)",
    )
    args = parser.parse_args()
    embedder = Embedder(load_backbone(args.backbone), cache=EmbeddingCache(default_cache_path()))
    if {"registered", "meta"} & set(args.parts):
        photos = embed(embedder, "tuxpaint")  # the five classes the tests measure on
    if "registered" in args.parts:
        registered_part(*photos, args)
    if "peers" in args.parts:
        peers_part(embedder, args)
    if "meta" in args.parts:
        meta_part(embedder, *photos, args)
    print(f"\nload average: {', '.join(f'{x:.1f}' for x in os.getloadavg())}")


if __name__ == "__main__":
    main()
