"""``suggest``: which unlabeled images to label next, and why."""

from __future__ import annotations

import argparse
import json
import sys
import textwrap

from fsl_app.active import DEFAULT_STRATEGY, STRATEGIES, Suggestion, available_strategies, rank
from fsl_app.commands.common import add_embedding_options, open_embedder, progress_bar
from fsl_app.commands.predict import print_table
from fsl_app.learners import DEFAULT_LEARNER, available_learners, create_learner


def register(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser(
        "suggest",
        help="which unlabeled images to label next",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description=textwrap.fill(
            "Rank a folder of unlabeled images by how much labeling each would teach, given the "
            "examples labeled so far (one subfolder per class), with a reason for each.",
            width=79,
        ),
        epilog="strategies:\n"
        + "\n".join(f"  {s.name:<17} {s.meaning}" for s in STRATEGIES.values()),
    )
    parser.add_argument(
        "--support",
        required=True,
        metavar="DIR",
        help="the labeled examples: one subfolder per class, images inside (may be empty)",
    )
    parser.add_argument(
        "--pool", required=True, metavar="DIR", help="a folder of unlabeled images, at any depth"
    )
    parser.add_argument(
        "--k",
        type=_positive,
        default=5,
        metavar="N",
        help="how many images to suggest (default: 5)",
    )
    parser.add_argument(
        "--strategy",
        default=DEFAULT_STRATEGY,
        choices=available_strategies(),
        help=f"how to choose (default: {DEFAULT_STRATEGY}; see the list below)",
    )
    parser.add_argument(
        "--learner", default=DEFAULT_LEARNER, choices=available_learners(), help="few-shot learner"
    )
    parser.add_argument("--seed", type=int, default=0, help="fixes every random choice")
    parser.add_argument("--format", default="table", choices=["table", "json"])
    add_embedding_options(parser)
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from fsl_app.classify import UnusableInputError, list_input_files, scan_examples_folder

    support = scan_examples_folder(args.support, min_classes=0)
    pool_files = list_input_files(args.pool, what="pool")
    with open_embedder(args) as embedder:
        examples = embedder.embed(support.paths, progress=progress_bar("examples"))
        pool = embedder.embed(pool_files, progress=progress_bar("pool"))
    for path in support.loose_files:
        print(f"skipped example {path}: it is not inside a class folder", file=sys.stderr)
    for index, reason in examples.errors:
        print(f"skipped example {support.paths[index]}: {reason}", file=sys.stderr)
    for index, reason in pool.errors:
        print(f"skipped pool image {pool_files[index]}: {reason}", file=sys.stderr)
    if not pool.indices:
        raise UnusableInputError(
            f"None of the {len(pool_files)} file(s) in the pool '{args.pool}' is a readable "
            "image, so there is nothing to suggest."
        )
    labels = [support.labels[i] for i in examples.indices]
    # An image that is already labeled (same bytes) is no suggestion.
    labeled = dict(zip(examples.hashes, labels, strict=True))
    unlabeled = [n for n, digest in enumerate(pool.hashes) if digest not in labeled]
    for n, digest in enumerate(pool.hashes):
        if digest in labeled:
            path = pool_files[pool.indices[n]]
            print(
                f"skipped pool image {path}: it is already labeled '{labeled[digest]}'",
                file=sys.stderr,
            )
    if not unlabeled:
        raise UnusableInputError("Every image in the pool is already labeled.")
    empty = [c for c in support.classes if c not in set(labels)]
    if empty:
        print(f"no readable example yet for: {', '.join(empty)}", file=sys.stderr)
    if STRATEGIES[args.strategy].needs_model and len(set(labels)) < 2:
        raise UnusableInputError(
            f"The '{args.strategy}' strategy needs labeled examples of at least two classes; "
            f"found {len(set(labels))}. Use --strategy auto, typiclust or coreset until then."
        )
    suggestions = rank(
        args.strategy,
        support=examples.embeddings,
        labels=labels,
        pool=pool.embeddings[unlabeled],
        k=args.k,
        learner_factory=lambda: create_learner(args.learner),
        seed=args.seed,
    )
    paths = [str(pool_files[pool.indices[n]]) for n in unlabeled]
    if args.format == "json":
        _print_json(suggestions, paths)
    else:
        print_table(
            ["rank", "path", "score", "prediction", "reason"],
            [
                [n, paths[s.index], f"{s.score:.2f}", s.prediction or "", s.reason]
                for n, s in enumerate(suggestions, 1)
            ],
        )
    return 0


def _print_json(suggestions: list[Suggestion], paths: list[str]) -> None:
    rows = [
        {
            "path": paths[s.index],
            "score": round(s.score, 4),
            "strategy": s.strategy,
            "reason": s.reason,
            "prediction": s.prediction,
        }
        for s in suggestions
    ]
    json.dump(rows, sys.stdout, indent=2)
    sys.stdout.write("\n")


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a whole number of at least 1, not '{text}'")
    return value
