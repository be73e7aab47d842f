"""``suggest``: which unlabeled images to label next, and why."""

from __future__ import annotations

import argparse
import json
import sys
import textwrap
from typing import TYPE_CHECKING

from fsl_app.active import DEFAULT_STRATEGY, STRATEGIES, available_strategies
from fsl_app.commands.common import add_embedding_options, open_embedder, progress_bar
from fsl_app.commands.predict import (
    add_examples_option,
    add_images_option,
    print_table,
    read_for_learner,
    report_examples,
)
from fsl_app.errors import UnusableInputError
from fsl_app.files import utf8_text
from fsl_app.learners import DEFAULT_LEARNER, available_learners

if TYPE_CHECKING:
    from fsl_app.active import Suggestion


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
    add_examples_option(parser)
    add_images_option(parser, "--pool", help="a folder of unlabeled images, at any depth")
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
    from fsl_app.active import suggest
    from fsl_app.classifier import fit_classifier
    from fsl_app.embedded_set import embed_folders

    with open_embedder(args) as embedder:
        embedded = embed_folders(
            embedder, args.examples, args.images, min_classes=0, progress=progress_bar
        )
        # The rows the learner takes: the suggestions' numbers are its calibrated answers.
        embedded = read_for_learner(embedded, embedder, args.learner)
    report_examples(embedded.unreadable, [embedded.left_out.note()])
    for skipped in embedded.unreadable:
        if not skipped.labeled:
            print(f"skipped image {skipped.name}: {skipped.reason}", file=sys.stderr)
    unlabeled = [row for row, label in enumerate(embedded.labels) if label is None]
    if not unlabeled:
        raise UnusableInputError(
            f"None of the files in '{args.images}' is a readable image, so there is nothing "
            "to suggest."
        )
    _, labels, example_ids = embedded.examples()
    labeled = dict(zip(example_ids, labels, strict=True))
    for row in unlabeled:
        if embedded.ids[row] in labeled:
            print(
                f"skipped image {embedded.names[row]}: it is already labeled "
                f"'{labeled[embedded.ids[row]]}'",
                file=sys.stderr,
            )
    if all(embedded.ids[row] in labeled for row in unlabeled):
        raise UnusableInputError("Every image in the pool is already labeled.")
    counts = embedded.class_counts()
    empty = [name for name, count in counts.items() if count == 0]
    if empty:
        print(f"no readable example yet for: {', '.join(empty)}", file=sys.stderr)
    with_examples = len(counts) - len(empty)
    if STRATEGIES[args.strategy].needs_model and with_examples < 2:
        raise UnusableInputError(
            f"The '{args.strategy}' strategy needs labeled examples of at least two classes; "
            f"found {with_examples}. Use --strategy auto, typiclust or coreset until then."
        )
    # The classifier whose calibrated probabilities the reasons quote, fitted on the classes
    # that have examples (a class still empty has nothing to be compared with).
    classifier = None
    if with_examples >= 2:
        classifier = fit_classifier(embedded, learner=args.learner)
    suggestions = suggest(embedded, classifier, k=args.k, strategy=args.strategy, seed=args.seed)
    paths = [utf8_text(embedded.names[row]) for row, _ in suggestions]
    ranked = [s for _, s in suggestions]
    if args.format == "json":
        _print_json(ranked, paths)
    else:
        print_table(
            ["rank", "path", "score", "prediction", "reason"],
            [
                [n, path, f"{s.score:.2f}", s.prediction or "", s.reason]
                for n, (path, s) in enumerate(zip(paths, ranked, strict=True), 1)
            ],
        )
    return 0


def _print_json(suggestions: list[Suggestion], paths: list[str]) -> None:
    rows = [
        {
            "path": path,
            "score": round(s.score, 4),
            "strategy": s.strategy,
            "reason": s.reason,
            "prediction": s.prediction,
        }
        for path, s in zip(paths, suggestions, strict=True)
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
