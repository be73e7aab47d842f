"""``predict``: learn classes from a folder of examples, or load a saved model, and classify."""

from __future__ import annotations

import argparse
import csv
import json
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING

from fsl_app.backbones import DEFAULT_BACKBONE
from fsl_app.commands.common import add_embedding_options, open_embedder, progress_bar
from fsl_app.learners import DEFAULT_LEARNER, available_learners
from fsl_app.trust.calibration import DEFAULT_STRICTNESS

if TYPE_CHECKING:
    from fsl_app.classify import Classification, QueryResult


def register(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser(
        "predict",
        help="classify images from a few examples per class",
        description=(
            "Learn classes from a folder of examples (one subfolder per class, named after "
            "the class), or load a model saved by the export command, and predict the class "
            "of each query image. Confidence is calibrated on the examples; an image unlike "
            "every class is marked unknown (none of these)."
        ),
    )
    examples = parser.add_mutually_exclusive_group(required=True)
    examples.add_argument(
        "--support",
        metavar="DIR",
        help="folder with one subfolder per class; images inside, at any depth",
    )
    examples.add_argument(
        "--bundle",
        metavar="FILE",
        help="a model saved by the export command (it fixes backbone, learner and strictness)",
    )
    parser.add_argument(
        "--query", required=True, metavar="PATH", help="one image, or a folder of images"
    )
    add_learner_options(parser)
    parser.add_argument("--format", default="table", choices=["table", "csv", "json"])
    add_embedding_options(parser)
    # None means "not given": --bundle refuses these, --support falls back to the defaults.
    parser.set_defaults(handler=run, learner=None, strictness=None, backbone=None)


def add_learner_options(parser: argparse.ArgumentParser) -> None:
    """--learner and --strictness."""
    parser.add_argument(
        "--learner", default=DEFAULT_LEARNER, choices=available_learners(), help="few-shot learner"
    )
    parser.add_argument(
        "--strictness",
        type=_strictness,
        default=DEFAULT_STRICTNESS,
        metavar="S",
        help=(
            "how readily an image unlike every class is called unknown (none of these): "
            f"{DEFAULT_STRICTNESS:g} is the default, higher (e.g. 1.1) flags more, lower "
            "(e.g. 0.9) fewer, 0 never"
        ),
    )


def run(args: argparse.Namespace) -> int:
    from fsl_app.classify import classify_files

    if args.bundle:
        result = _classify_with_bundle(args)
    else:
        args.backbone = args.backbone or DEFAULT_BACKBONE
        with open_embedder(args) as embedder:
            result = classify_files(
                embedder,
                args.support,
                args.query,
                learner=args.learner or DEFAULT_LEARNER,
                strictness=DEFAULT_STRICTNESS if args.strictness is None else args.strictness,
                progress=progress_bar,
            )
    report_examples(result.skipped_examples, result.notes)
    for query in result.results:
        if query.error:
            print(f"skipped query {query.name}: {query.error}", file=sys.stderr)
    {"table": _print_table, "csv": _print_csv, "json": _print_json}[args.format](result)
    return 0


def _classify_with_bundle(args: argparse.Namespace) -> Classification:
    from fsl_app.classify import UnusableInputError, classify_files_with
    from fsl_app.deploy.bundle import check_backbone, load_bundle

    given = [
        option
        for option, value in (
            ("--backbone", args.backbone),
            ("--learner", args.learner),
            ("--strictness", args.strictness),
        )
        if value is not None
    ]
    if given:
        raise UnusableInputError(
            f"The model file fixes the backbone, learner and strictness: leave out "
            f"{' and '.join(given)} when using --bundle."
        )
    bundle = load_bundle(args.bundle)
    args.backbone = bundle.backbone_name
    with open_embedder(args) as embedder:
        check_backbone(bundle, embedder.backbone)
        return classify_files_with(embedder, bundle.classifier, args.query, progress=progress_bar)


def report_examples(skipped: Sequence[tuple[str, str]], notes: Sequence[str]) -> None:
    """Skipped examples and notes on the examples, on stderr."""
    for name, reason in skipped:
        print(f"skipped example {name}: {reason}", file=sys.stderr)
    for note in notes:
        print(f"note: {note}", file=sys.stderr)


def _print_json(result: Classification) -> None:
    rows = []
    for query in result.results:
        if query.error:
            rows.append({"path": query.name, "error": query.error})
        else:
            rows.append(
                {
                    "path": query.name,
                    "prediction": query.prediction,
                    "confidence": query.confidence,
                    "unknown": query.unknown,
                    "probabilities": query.probabilities,
                }
            )
    json.dump(rows, sys.stdout, indent=2)
    sys.stdout.write("\n")


def _print_csv(result: Classification) -> None:
    writer = csv.writer(sys.stdout)
    writer.writerow(["path", "prediction", "confidence", "unknown", "error", *result.classes])
    for query in result.results:
        probabilities = query.probabilities or {}
        writer.writerow(
            [
                query.name,
                query.prediction or "",
                "" if query.confidence is None else f"{query.confidence:.4f}",
                "" if query.error else str(query.unknown).lower(),
                query.error or "",
                *(f"{probabilities[c]:.4f}" if c in probabilities else "" for c in result.classes),
            ]
        )


def _print_table(result: Classification) -> None:
    header = ["path", "prediction", "confidence", *result.classes]
    rows = [
        [
            query.name,
            _verdict(query),
            f"{query.confidence:.1%}",
            *(f"{query.probabilities[c]:.1%}" for c in result.classes),
        ]
        for query in result.results
        if not query.error
    ]
    print_table(header, rows)


def _verdict(query: QueryResult) -> str:
    return f"none of these (closest: {query.prediction})" if query.unknown else query.prediction


def _strictness(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not value >= 0:
        raise argparse.ArgumentTypeError(
            f"'{text}' is not a strictness: use 0 (never unknown) or a positive number such as 1"
        )
    return value


def print_table(header: list[str], rows: list[list]) -> None:
    """Left-aligned columns, two spaces apart."""
    widths = [max(len(str(cell)) for cell in column) for column in zip(header, *rows, strict=True)]
    for row in [header, *rows]:
        cells = (str(cell).ljust(width) for cell, width in zip(row, widths, strict=True))
        print("  ".join(cells).rstrip())
