"""``predict``: learn classes from a folder of examples and classify new images."""

from __future__ import annotations

import argparse
import csv
import json
import sys

from fsl_app.calibration import DEFAULT_STRICTNESS
from fsl_app.classify import Classification, QueryResult, classify_files
from fsl_app.commands.common import add_embedding_options, open_embedder, progress_bar
from fsl_app.learners import DEFAULT_LEARNER, available_learners


def register(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser(
        "predict",
        help="classify images from a few examples per class",
        description=(
            "Learn classes from a folder of examples (one subfolder per class, named after "
            "the class) and predict the class of each query image. Confidence is calibrated "
            "on the examples; an image unlike every class is marked unknown (none of these)."
        ),
    )
    parser.add_argument(
        "--support",
        required=True,
        metavar="DIR",
        help="folder with one subfolder per class; images inside, at any depth",
    )
    parser.add_argument(
        "--query", required=True, metavar="PATH", help="one image, or a folder of images"
    )
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
    parser.add_argument("--format", default="table", choices=["table", "csv", "json"])
    add_embedding_options(parser)
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    with open_embedder(args) as embedder:
        result = classify_files(
            embedder,
            args.support,
            args.query,
            learner=args.learner,
            strictness=args.strictness,
            progress=progress_bar,
        )
    for name, reason in result.skipped_examples:
        print(f"skipped example {name}: {reason}", file=sys.stderr)
    for note in result.notes:
        print(f"note: {note}", file=sys.stderr)
    for query in result.results:
        if query.error:
            print(f"skipped query {query.name}: {query.error}", file=sys.stderr)
    {"table": _print_table, "csv": _print_csv, "json": _print_json}[args.format](result)
    return 0


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
