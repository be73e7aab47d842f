"""Which unlabeled image to label next, and why.

:func:`rank` orders a pool of unlabeled embeddings given the labeled ones, by
one of the strategies in :data:`STRATEGIES`, and gives every suggestion a
reason computed from the data (class names, probabilities, group sizes,
distances). Strategies fall in two families, and which one wins depends on the
budget (Hacohen, Dekel & Weinshall, "Active Learning on a Budget", ICML 2022,
arXiv:2202.02794):

* **representative** picks, best while each class has only a few examples:
  ``typiclust`` (the most typical image of the largest group that has no
  label yet, from the same paper) and ``coreset`` (k-center greedy: the image
  farthest from everything labeled; Sener & Savarese, ICLR 2018,
  arXiv:1708.00489);
* **uncertain** picks, best once the model is roughly right: ``entropy``,
  ``margin``, ``least-confidence`` and ``bald`` (see :mod:`fsl_app.trust.uncertainty`).

``auto`` (the default) starts representative and turns uncertain as labels
accumulate, one pick per group; see :func:`_auto` for its rule and
``benchmarks/active.py`` for the measurement behind it.

Distances are taken between embeddings centred on the mean of all images and
scaled to unit length (SimpleShot's ``cl2``, one of
:class:`~fsl_app.learners.ProtoNet`'s options): pooled CNN features are
non-negative and share a large offset that would otherwise dominate every
distance. ``normalize="none"`` keeps them raw.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import cached_property
from typing import TYPE_CHECKING

import numpy as np
from numpy.typing import ArrayLike

from fsl_app.learners import create_learner
from fsl_app.plural import counted
from fsl_app.trust import uncertainty

if TYPE_CHECKING:
    from fsl_app.classifier import CalibratedClassifier
    from fsl_app.embedded_set import EmbeddedSet
    from fsl_app.learners import FewShotLearner
    from fsl_app.learners.protonet import Normalization

# torch, scikit-learn and the protonet module are imported where they are used: the command
# line reads the strategy table (STRATEGIES) to build its parser.

DEFAULT_STRATEGY = "auto"
# Neighbours behind "typical" (TypiClust's K) and cluster count above which
# k-means runs in mini-batches; both as in Hacohen et al.'s code.
TYPICALITY_NEIGHBORS = 20
MINIBATCH_ABOVE_CLUSTERS = 50
# Groups smaller than this (and than the median group) are outliers more than
# groups: TypiClust visits them last.
MIN_GROUP_SIZE = 5
MAX_CLUSTERS = 500
# ``auto`` moves from typical to uncertain picks as the labeled examples per
# class grow from 1 to this many (measured in benchmarks/active.py: 5 beat 3 and 8).
AUTO_FULLY_UNCERTAIN_AT = 5.0
# A best guess this probable is a clear call, whatever the strategy's score.
SURE = 0.9
# Two classes are a close call, worth saying "between", when the second is at least this
# fraction as likely as the first (80% vs 17% is a clear lead, 50% vs 40% a close call).
CLOSE_CALL = 0.5


@dataclass(frozen=True)
class Suggestion:
    """One pool image to label: why, and what the model currently thinks it is.

    ``score`` is on the strategy's own scale, in [0, 1], higher meaning
    "label sooner" (``auto`` scores a typical pick by its group's share of the
    pool and an uncertain one by 1 - margin); the order of the list returned
    by :func:`rank` is the recommendation. ``prediction`` is None while fewer
    than two classes have examples.
    """

    index: int  # position in the pool
    score: float
    strategy: str
    reason: str
    prediction: str | None


@dataclass(frozen=True)
class Strategy:
    name: str
    meaning: str  # one line for the person choosing a strategy
    needs_model: bool  # needs two labeled classes to work
    select: Callable[[_Problem], list[Suggestion]]


STRATEGIES: dict[str, Strategy] = {}


def _strategy(name: str, meaning: str, *, needs_model: bool):
    def register(select: Callable[[_Problem], list[Suggestion]]):
        STRATEGIES[name] = Strategy(name, meaning, needs_model, select)
        return select

    return register


def available_strategies() -> list[str]:
    return list(STRATEGIES)


def rank(
    strategy: str = DEFAULT_STRATEGY,
    *,
    support: ArrayLike,
    labels: Sequence,
    pool: ArrayLike,
    k: int,
    learner_factory: Callable[[], FewShotLearner] = create_learner,
    model: FewShotLearner | CalibratedClassifier | None = None,
    seed: int = 0,
    n_members: int = 10,
    augmented_pools: Sequence[ArrayLike] = (),
    normalize: Normalization = "cl2",
    embedding_dim: int | None = None,
) -> list[Suggestion]:
    """The ``k`` pool images most worth labeling next, best first, each with its reason.

    ``support`` (n_labeled, dim) and ``labels`` are the labeled embeddings (may
    be empty: the representative strategies then pick a first set to label);
    ``pool`` (n_pool, dim) the unlabeled ones. Rows may be wider than the embedding (what a
    learner that adapts the last stage takes, :attr:`fsl_app.embedded_set.EmbeddedSet.inputs`):
    ``embedding_dim`` then says where the embedding ends, and the grouping reads only it.
    ``learner_factory`` makes the fresh learner whose probabilities the uncertain strategies
    read, unless ``model`` (fitted on exactly this support, e.g. the classifier whose
    predictions the user sees) is given; ``bald`` fits ``n_members`` more on bootstrap
    resamples of the support, plus one prediction per array of ``augmented_pools`` (augmented
    views of the pool, see :func:`fsl_app.trust.uncertainty.ensemble_probabilities`). ``seed``
    fixes every random choice. Indices are distinct; ``k`` beyond the pool size returns the
    whole pool, an empty pool returns [].
    """
    try:
        chosen = STRATEGIES[strategy]
    except KeyError:
        raise ValueError(
            f"Unknown strategy '{strategy}'. Choose one of: {', '.join(available_strategies())}."
        ) from None
    if k < 1:
        raise ValueError(f"k is the number of suggestions and must be at least 1; got {k}.")
    from fsl_app.learners.protonet import check_normalization

    check_normalization(normalize)
    if np.size(pool) == 0:
        return []
    problem = _Problem(
        support,
        labels,
        pool,
        k=k,
        learner_factory=learner_factory,
        model=model,
        seed=seed,
        n_members=n_members,
        augmented_pools=augmented_pools,
        normalize=normalize,
        embedding_dim=embedding_dim,
    )
    if chosen.needs_model and problem.model is None:
        raise ValueError(
            f"The '{strategy}' strategy asks the model, which needs labeled examples of at "
            f"least two classes; there are {len(problem.classes)}. Use 'typiclust', 'coreset' "
            "or 'auto' until then."
        )
    return chosen.select(problem)


def typicality(points: ArrayLike, n_neighbors: int = TYPICALITY_NEIGHBORS) -> np.ndarray:
    """Hacohen et al.'s typicality of each of ``points`` (n, dim), of shape (n,).

    The inverse of the mean distance to its ``n_neighbors`` nearest other
    points: high in dense regions, low for outliers.
    """
    from sklearn.neighbors import NearestNeighbors

    points = np.asarray(points, dtype=float)
    if len(points) < 2:
        return np.ones(len(points))
    neighbours = NearestNeighbors(n_neighbors=min(n_neighbors, len(points) - 1)).fit(points)
    distances, _ = neighbours.kneighbors()  # without X: each point's neighbours exclude itself
    return 1.0 / (distances.mean(axis=1) + 1e-12)


def cluster(points: ArrayLike, n_clusters: int, seed: int = 0) -> np.ndarray:
    """K-means cluster ids of ``points`` (n, dim), of shape (n,).

    Mini-batch k-means above :data:`MINIBATCH_ABOVE_CLUSTERS` clusters keeps a
    large pool quick; ``n_clusters`` beyond the number of points gives each
    point its own cluster.
    """
    from sklearn.cluster import KMeans, MiniBatchKMeans

    points = np.asarray(points, dtype=np.float64)
    if n_clusters >= len(points):
        return np.arange(len(points))
    if n_clusters <= MINIBATCH_ABOVE_CLUSTERS:
        model = KMeans(n_clusters, n_init=3, random_state=seed)
    else:
        model = MiniBatchKMeans(n_clusters, n_init=3, batch_size=1024, random_state=seed)
    return model.fit_predict(points)


class _Problem:
    """One ranking request: the inputs and whatever a strategy derives from them, made once."""

    def __init__(
        self,
        support: ArrayLike,
        labels: Sequence,
        pool: ArrayLike,
        *,
        k: int,
        learner_factory: Callable[[], FewShotLearner],
        model: FewShotLearner | CalibratedClassifier | None,
        seed: int,
        n_members: int,
        augmented_pools: Sequence[ArrayLike],
        normalize: Normalization,
        embedding_dim: int | None = None,
    ):
        self.pool = np.asarray(pool, dtype=np.float32)
        self.labels = np.asarray(labels)
        support = np.asarray(support, dtype=np.float32)
        dim = self.pool.shape[1] if self.pool.ndim == 2 else -1
        self.support = support.reshape(0, max(dim, 0)) if support.size == 0 else support
        if self.pool.ndim != 2 or self.support.ndim != 2 or self.support.shape[1] != dim:
            raise ValueError(
                "support and pool must be 2-D arrays of embeddings (n_images, dim) of the same "
                f"dim; got shapes {np.shape(support)} and {self.pool.shape}."
            )
        if len(self.labels) != len(self.support):
            raise ValueError(
                f"Got {len(self.support)} labeled embeddings but {len(self.labels)} labels."
            )
        self.n_labeled, self.n_pool = len(self.support), len(self.pool)
        self.k = min(k, self.n_pool)
        self.seed = seed
        self.learner_factory = learner_factory
        self.fitted = model
        self.n_members = n_members
        self.augmented_pools = augmented_pools
        self.normalize = normalize
        self.embedding_dim = embedding_dim

    # -- the model's view -------------------------------------------------

    @cached_property
    def classes(self) -> list[str]:
        return [str(c) for c in np.unique(self.labels)]

    @cached_property
    def model(self) -> FewShotLearner | CalibratedClassifier | None:
        if len(self.classes) < 2:
            return None
        if self.fitted is not None:
            return self.fitted
        return self.learner_factory().fit(self.support, self.labels)

    @cached_property
    def proba(self) -> np.ndarray:
        """Probabilities of the pool, of shape (n_pool, n_classes)."""
        return self.model.predict_proba(self.pool)

    @cached_property
    def members(self) -> np.ndarray:
        """Ensemble predictions of the pool, of shape (n_members, n_pool, n_classes)."""
        return uncertainty.ensemble_probabilities(
            self.learner_factory,
            self.support,
            self.labels,
            self.pool,
            n_members=self.n_members,
            seed=self.seed,
            augmented_pools=self.augmented_pools,
        )

    def prediction(self, index: int) -> str | None:
        if self.model is None:
            return None
        return self.classes[int(self.proba[index].argmax())]

    def suggestion(self, index: int, score: float, strategy: str, reason: str) -> Suggestion:
        return Suggestion(int(index), float(score), strategy, reason, self.prediction(index))

    # -- the geometry -----------------------------------------------------

    @cached_property
    def points(self) -> np.ndarray:
        """Labeled then pool embeddings, normalised, of shape (n_labeled + n_pool, dim)."""
        import torch

        from fsl_app.learners.protonet import simpleshot_normalize

        rows = np.concatenate([self.support, self.pool])[:, : self.embedding_dim]
        features = torch.as_tensor(rows)
        return simpleshot_normalize(features, self.normalize, features.mean(dim=0)).numpy()

    @property
    def pool_points(self) -> np.ndarray:
        return self.points[self.n_labeled :]

    @cached_property
    def clusters(self) -> np.ndarray:
        """Cluster of each labeled then pool point: |labeled| + k clusters, as in TypiClust."""
        n_clusters = min(self.n_labeled + self.k, MAX_CLUSTERS)
        return cluster(self.points, n_clusters, self.seed)

    @cached_property
    def density(self) -> np.ndarray:
        """Typicality of each pool image among all images, scaled so the densest is 1."""
        typical = typicality(self.points)[self.n_labeled :]
        return typical / typical.max()

    @cached_property
    def spacing(self) -> float:
        """Median distance from a pool image to its nearest other pool image."""
        from sklearn.neighbors import NearestNeighbors

        if self.n_pool < 2:
            return 0.0
        distances, _ = NearestNeighbors(n_neighbors=1).fit(self.pool_points).kneighbors()
        return float(np.median(distances))

    def distances_to(self, points: np.ndarray) -> np.ndarray:
        """Distance of each pool image to ``points`` (m, dim), of shape (n_pool, m)."""
        pool = self.pool_points
        squared = (pool**2).sum(1)[:, None] - 2 * pool @ points.T + (points**2).sum(1)[None, :]
        return np.sqrt(np.maximum(squared, 0.0))

    # -- picking in groups ------------------------------------------------

    def typical_picks(self, n: int) -> list[tuple[int, int, int]]:
        """TypiClust: ``n`` picks as (pool index, unlabeled images in its group, labeled there).

        Each pick comes from the group with the fewest labeled (or already
        picked) images, the largest first, groups smaller than both
        :data:`MIN_GROUP_SIZE` and the median group last; it is the most
        typical image of that group (among the group's members, labeled or not).
        """
        clusters = self.clusters
        n_clusters = int(clusters.max()) + 1
        covered = np.bincount(clusters[: self.n_labeled], minlength=n_clusters)
        sizes = np.bincount(clusters, minlength=n_clusters)
        small = sizes < min(MIN_GROUP_SIZE, np.median(sizes))
        pool_clusters = clusters[self.n_labeled :]
        free = np.ones(self.n_pool, dtype=bool)
        typical_in: dict[int, np.ndarray] = {}
        picks = []
        while len(picks) < n and free.any():
            unlabeled = np.bincount(pool_clusters[free], minlength=n_clusters)
            candidates = np.flatnonzero(unlabeled > 0)
            group = min(candidates, key=lambda c: (small[c], covered[c], -unlabeled[c], c))
            if group not in typical_in:
                members = np.flatnonzero(clusters == group)
                typical_in[group] = typicality(self.points[members])[members >= self.n_labeled]
            in_group = np.flatnonzero(pool_clusters == group)
            best = in_group[np.argmax(np.where(free[in_group], typical_in[group], -np.inf))]
            picks.append((int(best), int(unlabeled[group]), int(covered[group])))
            covered[group] += 1
            free[best] = False
        return picks


def _percent(p: float) -> str:
    return f"{p:.0%}"


def _between(row: np.ndarray, classes: list[str]) -> str:
    """The two likeliest classes: "between" only when the call is close (the second at least
    :data:`CLOSE_CALL` times as likely as the first); a clear lead is named as a lead."""
    first, second = np.argsort(-row, kind="stable")[:2]
    if row[second] >= CLOSE_CALL * row[first]:
        return (
            f"between '{classes[first]}' and '{classes[second]}' "
            f"({_percent(row[first])} vs {_percent(row[second])})"
        )
    return (
        f"most likely '{classes[first]}' ({_percent(row[first])}), but not sure: "
        f"'{classes[second]}' comes next ({_percent(row[second])})"
    )


def _already_sure(row: np.ndarray, classes: list[str]) -> str | None:
    """The reason to give when even the most uncertain image left is a clear call."""
    best = int(row.argmax())
    if row[best] < SURE:
        return None
    return (
        f"nothing less clear is left: the model is sure it is '{classes[best]}' "
        f"({_percent(row[best])})"
    )


def _typical_reason(group_size: int, labeled_there: int) -> str:
    if group_size == 1:  # a group of one is no group: say what it is
        near = "no label" if labeled_there == 0 else f"only {labeled_there} labeled or suggested"
        return f"unlike any other picture to sort, with {near} near it"
    if labeled_there == 0:
        return f"typical of a group of {group_size} similar pictures to sort, none labeled yet"
    return (
        f"typical of a group of {group_size} similar pictures to sort "
        f"with only {labeled_there} labeled or suggested"
    )


def _top(problem: _Problem, name: str, scores: np.ndarray, describe) -> list[Suggestion]:
    order = np.argsort(-scores, kind="stable")[: problem.k]
    return [problem.suggestion(i, scores[i], name, describe(i)) for i in order]


@_strategy(
    "random",
    "Any image, by chance: the baseline the other strategies must beat.",
    needs_model=False,
)
def _random(problem: _Problem) -> list[Suggestion]:
    draws = np.random.default_rng(problem.seed).random(problem.n_pool)
    reason = (
        f"picked at random among {counted(problem.n_pool, 'picture to sort', 'pictures to sort')}"
    )
    return _top(problem, "random", draws, lambda i: reason)


@_strategy(
    "entropy",
    "Images whose class the model finds hardest to call, all classes considered.",
    needs_model=True,
)
def _entropy(problem: _Problem) -> list[Suggestion]:
    def describe(i: int) -> str:
        row = problem.proba[i]
        if sure := _already_sure(row, problem.classes):
            return sure
        order = np.argsort(-row, kind="stable")
        shown = [c for n, c in enumerate(order) if n < 2 or (n < 4 and row[c] >= 0.1)]
        spread = ", ".join(f"'{problem.classes[c]}' {_percent(row[c])}" for c in shown)
        return f"the model is torn between {spread}"

    return _top(problem, "entropy", uncertainty.entropy(problem.proba), describe)


@_strategy(
    "margin",
    "Images the model places right between its two likeliest classes.",
    needs_model=True,
)
def _margin(problem: _Problem) -> list[Suggestion]:
    def describe(i: int) -> str:
        row = problem.proba[i]
        return _already_sure(row, problem.classes) or _between(row, problem.classes)

    return _top(problem, "margin", 1.0 - uncertainty.margin(problem.proba), describe)


@_strategy(
    "least-confidence",
    "Images whose best guess the model trusts least.",
    needs_model=True,
)
def _least_confidence(problem: _Problem) -> list[Suggestion]:
    def describe(i: int) -> str:
        if sure := _already_sure(problem.proba[i], problem.classes):
            return sure
        best = int(problem.proba[i].argmax())
        return (
            f"the model's best guess, '{problem.classes[best]}', "
            f"has only {_percent(problem.proba[i, best])}"
        )

    scores = uncertainty.least_confidence(problem.proba)
    return _top(problem, "least-confidence", scores, describe)


@_strategy(
    "bald",
    "Images on which versions of the model that saw different examples disagree.",
    needs_model=True,
)
def _bald(problem: _Problem) -> list[Suggestion]:
    members = problem.members
    votes = members.argmax(axis=2)  # (n_members, n_pool)
    who = "versions of the model" + (
        " and altered copies of the image" if len(problem.augmented_pools) else ""
    )

    def describe(i: int) -> str:
        counts = np.bincount(votes[:, i], minlength=len(problem.classes))
        order = np.flatnonzero(counts)[np.argsort(-counts[counts > 0], kind="stable")]
        if len(order) > 1:
            said = ", ".join(f"{counts[c]} say '{problem.classes[c]}'" for c in order)
            return f"{len(members)} {who} disagree: {said}"
        only = order[0]
        low, high = _percent(members[:, i, only].min()), _percent(members[:, i, only].max())
        said = low if low == high else f"{low} to {high}"
        return f"all {len(members)} {who} agree on '{problem.classes[only]}' ({said})"

    # Ties (e.g. no disagreement possible at one example per class) go to the most uncertain.
    scores = uncertainty.bald(members)
    order = np.lexsort((-uncertainty.entropy(members.mean(axis=0)), -scores))[: problem.k]
    return [problem.suggestion(i, scores[i], "bald", describe(i)) for i in order]


@_strategy(
    "coreset",
    "Images unlike anything labeled so far, spread over the whole collection.",
    needs_model=False,
)
def _coreset(problem: _Problem) -> list[Suggestion]:
    pool = problem.pool_points
    picks: list[Suggestion] = []
    if problem.n_labeled:
        distances = problem.distances_to(problem.points[: problem.n_labeled])
        nearest = distances.min(axis=1)
        # The class of each image's nearest labeled image; None once a suggestion is nearer.
        nearest_class = problem.labels[distances.argmin(axis=1)].astype(str).astype(object)
    else:
        # Nothing labeled: start at the most typical image, then spread out from it.
        first = int(np.argmax(problem.density))
        reason = (
            f"the most central of {counted(problem.n_pool, 'picture to sort', 'pictures to sort')} "
            "(nothing is labeled yet)"
        )
        picks.append(problem.suggestion(first, 1.0, "coreset", reason))
        nearest = problem.distances_to(pool[[first]])[:, 0]
        nearest_class = np.full(problem.n_pool, None, dtype=object)
    taken = np.zeros(problem.n_pool, dtype=bool)
    taken[[p.index for p in picks]] = True
    scale = max(float(nearest.max()), 1e-12)
    while len(picks) < problem.k:
        i = int(np.argmax(np.where(taken, -np.inf, nearest)))
        if nearest_class[i] is None:
            what = "the nearest labeled or earlier suggested image"
        else:
            what = f"the nearest labeled image ('{nearest_class[i]}')"
        times = nearest[i] / max(problem.spacing, 1e-12)
        reason = (
            f"unlike anything labeled so far: {what} is {times:.1f}x farther away "
            "than pool images usually are from their nearest neighbour"
        )
        picks.append(problem.suggestion(i, nearest[i] / scale, "coreset", reason))
        taken[i] = True
        closer = problem.distances_to(pool[[i]])[:, 0]
        nearest_class[closer < nearest] = None
        nearest = np.minimum(nearest, closer)
    return picks


@_strategy(
    "typiclust",
    "The most typical image of each large group that has no label yet; best with few labels.",
    needs_model=False,
)
def _typiclust(problem: _Problem) -> list[Suggestion]:
    return [
        problem.suggestion(i, size / problem.n_pool, "typiclust", _typical_reason(size, covered))
        for i, size, covered in problem.typical_picks(problem.k)
    ]


@_strategy(
    "auto",
    "Typical images while classes have few examples, then the ones the model is least sure "
    "of, never near-duplicates.",
    needs_model=False,
)
def _auto(problem: _Problem) -> list[Suggestion]:
    """Typical picks while labels are scarce, then uncertain picks, one per group.

    With ``m`` labeled examples per class on average, a share
    ``(m - 1) / (AUTO_FULLY_UNCERTAIN_AT - 1)`` of the ``k`` picks (clipped to
    [0, 1], and 0 before two classes exist) is uncertain, the rest typical:
    Hacohen et al. show typical points win at tiny budgets and uncertain ones
    later. Typical picks are TypiClust's, which covers the groups that have no
    label. Uncertain picks are the smallest margins, at most one per group of
    the TypiClust clustering (and none in a group a typical pick of this batch
    came from), so ``k`` suggestions are never ``k`` near-duplicates; only when
    every group is used do they fall back to margin alone.

    Measured in ``benchmarks/active.py``, on seeds other than the reported
    ones (mean accuracy over all budgets, 10 seeds): turning fully uncertain
    at 5 examples per class beat 3 and 8. Weighting the uncertainty by
    density (typicality, as in Settles & Craven 2008's information density;
    raw, square-rooted or only below the median) cost 0.7 to 1.0 point on
    Fashion-MNIST and gained at most 0.25 on Tux Paint, so it is left out:
    the one-per-group rule already keeps a batch from piling into one spot.
    """
    if problem.model is None:
        share = 0.0
    else:
        per_class = problem.n_labeled / len(problem.classes)
        share = float(np.clip((per_class - 1) / (AUTO_FULLY_UNCERTAIN_AT - 1), 0.0, 1.0))
    n_uncertain = int(np.floor(share * problem.k + 0.5))
    picks = [
        problem.suggestion(i, size / problem.n_pool, "auto", _typical_reason(size, covered))
        for i, size, covered in problem.typical_picks(problem.k - n_uncertain)
    ]
    if n_uncertain == 0:
        return picks
    pool_clusters = problem.clusters[problem.n_labeled :]
    group_sizes = np.bincount(pool_clusters)
    scores = 1.0 - uncertainty.margin(problem.proba)
    order = np.argsort(-scores, kind="stable")
    used = {int(pool_clusters[p.index]) for p in picks}
    taken = {p.index for p in picks}
    for one_per_group in (True, False):
        for i in order:
            if len(picks) == problem.k:
                return picks
            group = int(pool_clusters[i])
            if int(i) in taken or (one_per_group and group in used):
                continue
            row = problem.proba[i]
            reason = _already_sure(row, problem.classes) or _between(row, problem.classes)
            size = int(group_sizes[group])
            reason += (
                f", one of a group of {size} similar pictures to sort"
                if size > 1
                else ", unlike any other picture to sort"
            )
            picks.append(problem.suggestion(i, scores[i], "auto", reason))
            used.add(group)
            taken.add(int(i))
    return picks


def suggest(
    embedded: EmbeddedSet,
    classifier: CalibratedClassifier | None,
    *,
    k: int = 3,
    strategy: str = DEFAULT_STRATEGY,
    skipped: Sequence[str] = (),
    seed: int = 0,
) -> list[tuple[int, Suggestion]]:
    """The unlabeled pictures of the set most worth labeling next, as (row, suggestion).

    ``classifier`` is the one fitted on the set's examples (None while it cannot be fitted):
    the probabilities a reason quotes are its calibrated ones, the numbers the user sees
    beside every prediction. Pictures in ``skipped`` (ids the user passed over, or said are
    none of the classes) and pictures with the bytes of an example are left out of the pool.
    Without a classifier a strategy that needs one gives way to ``auto``.
    """
    _, labels, example_ids = embedded.examples()
    inputs = embedded.inputs  # what the classifier takes: the embeddings, or wider
    left_out = {*skipped, *example_ids}
    pool_rows = [
        i
        for i, (image_id, label) in enumerate(zip(embedded.ids, embedded.labels, strict=True))
        if label is None and image_id not in left_out
    ]
    if not pool_rows:
        return []
    chosen = strategy if classifier is not None or not STRATEGIES[strategy].needs_model else "auto"
    suggestions = rank(
        chosen,
        support=inputs[embedded.labeled],
        labels=labels,
        pool=inputs[pool_rows],
        k=k,
        learner_factory=classifier.refit_factory if classifier is not None else create_learner,
        model=classifier,
        seed=seed,
        embedding_dim=embedded.embedding_dim,
    )
    return [(pool_rows[s.index], s) for s in suggestions]
