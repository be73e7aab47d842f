"""``evaluate``: every learner on the same fixed-seed episodes, with 95% confidence intervals."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable

import numpy as np

from fsl_app.commands.common import add_embedding_options, open_embedder, progress_bar
from fsl_app.commands.predict import print_table
from fsl_app.datasets import OFFLINE_DATASETS, LabeledImages, image_folder_dataset, load_dataset
from fsl_app.errors import UnusableInputError
from fsl_app.evaluation.episodes import (
    Classifier,
    EvaluationResult,
    evaluate_learner,
    sample_episodes,
)
from fsl_app.learners import available_learners, create_learner, needs_last_stage


def register(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser(
        "evaluate",
        help="measure learners on N-way K-shot episodes",
        description=(
            "Score learners on the same fixed-seed N-way K-shot episodes drawn from a labeled "
            "dataset: mean accuracy with its 95%% confidence interval, calibration error (ECE) "
            "and seconds per episode."
        ),
    )
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--data", metavar="DIR", help="a folder with one subfolder per class")
    source.add_argument("--dataset", choices=OFFLINE_DATASETS, help="a built-in offline dataset")
    parser.add_argument(
        "--per-class",
        type=int,
        default=None,
        metavar="N",
        help="use at most N images of each class (default: all for --data, 100 for --dataset)",
    )
    parser.add_argument("--ways", type=int, default=5, metavar="N", help="classes per episode")
    parser.add_argument(
        "--shots", type=int, nargs="+", default=[1, 5], metavar="K", help="examples per class"
    )
    parser.add_argument(
        "--queries", type=int, default=15, metavar="Q", help="query images per class"
    )
    parser.add_argument("--episodes", type=int, default=600, metavar="E")
    parser.add_argument(
        "--learner",
        nargs="+",
        default=available_learners(),
        choices=available_learners(),
        help="learners to compare (default: all)",
    )
    parser.add_argument(
        "--calibration",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="score confidences after the app's leave-one-out temperature (default: on)",
    )
    parser.add_argument(
        "--inductive",
        action="store_true",
        help="score each learner without the episode's queries as pictures still to sort "
        "(default: they are passed as the app passes its pool, so semi-supervised learners "
        "learn from them)",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--format", default="table", choices=["table", "json"])
    add_embedding_options(parser)
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:

    from fsl_app.embedded_set import EmbeddedSet, for_learner

    dataset = _load(args)
    with open_embedder(args) as embedder:
        embedded = embedder.embed(dataset.sources, progress=progress_bar(dataset.name))
        backbone = embedder.backbone.name
        sources = [dataset.sources[i] for i in embedded.indices]
        pictures = EmbeddedSet(
            ids=embedded.ids,
            names=[str(source) for source in sources],
            labels=[None] * len(sources),
            embeddings=embedded.embeddings,
            classes=[],
            backbone=backbone,
        )
        # Each learner gets the rows it takes: a learner that adapts the image model's last
        # stage also the activations entering it, computed once for all such learners.
        adapting = [name for name in args.learner if needs_last_stage(name, backbone)]
        wide = (
            for_learner(
                pictures,
                embedder,
                adapting[0],
                None,
                sources.__getitem__,
                progress=progress_bar("last stage"),
            ).inputs
            if adapting
            else None
        )
    rows = {name: wide if name in adapting else embedded.embeddings for name in args.learner}
    if embedded.errors:
        print(f"skipped {len(embedded.errors)} unreadable image(s)", file=sys.stderr)
    labels = np.asarray(dataset.labels)[embedded.indices]
    results = []
    for shots in args.shots:
        try:
            episodes = sample_episodes(
                labels,
                ways=args.ways,
                shots=shots,
                queries=args.queries,
                n_episodes=args.episodes,
                seed=args.seed,
            )
        except ValueError as err:
            raise UnusableInputError(str(err)) from None
        for name in args.learner:
            print(f"{name}: {args.ways}-way {shots}-shot ...", file=sys.stderr)
            results.append(
                evaluate_learner(
                    _learner_factory(name, args.calibration, backbone, embedded.embeddings),
                    rows[name],
                    labels,
                    episodes,
                    name=name,
                    transductive=not args.inductive,
                )
            )
    if args.format == "json":
        json.dump([r.as_dict() for r in results], sys.stdout, indent=2)
        sys.stdout.write("\n")
    else:
        _print_results(results, dataset, labels)
    return 0


def _learner_factory(
    name: str, calibrated: bool, backbone: str, embeddings: np.ndarray
) -> Callable[[], Classifier]:
    """Fresh learners as the app uses them (calibrated, with "none of these" off for scoring),
    on ``backbone``, whose ``embeddings`` begin each row."""
    if calibrated:
        from fsl_app.classifier import CalibratedClassifier

        return lambda: CalibratedClassifier(
            name, strictness=0, embedding_dim=embeddings.shape[1], backbone=backbone
        )
    return lambda: create_learner(name, backbone=backbone)


def _load(args: argparse.Namespace) -> LabeledImages:

    if args.data:
        try:
            return image_folder_dataset(args.data).subset(args.per_class, args.seed)
        except FileNotFoundError:
            raise UnusableInputError(f"The folder '{args.data}' does not exist.") from None
    try:
        return load_dataset(args.dataset, per_class=args.per_class or 100, seed=args.seed)
    except FileNotFoundError as err:
        raise UnusableInputError(str(err)) from None


def _print_results(
    results: list[EvaluationResult], dataset: LabeledImages, labels: np.ndarray
) -> None:
    print(
        f"{dataset.name}: {len(labels)} images, {len(set(labels.tolist()))} classes, "
        f"{results[0].episodes} episodes per row"
    )
    print_table(
        ["learner", "ways", "shots", "accuracy", "95% CI", "ECE", "s/episode"],
        [
            [
                r.learner,
                r.ways,
                r.shots,
                f"{r.accuracy:.1%}",
                f"± {r.ci95:.1%}",
                f"{r.ece:.3f}",
                f"{r.seconds_per_episode:.4f}",
            ]
            for r in results
        ],
    )
