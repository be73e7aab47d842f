"""Command line: ``python -m fsl_app predict --support DIR --query PATH``.

Parsing and printing only; the work is in :mod:`fsl_app.classify`. Problems
with single files go to stderr and the run goes on; input that cannot be used
at all exits with status 2 and one clear sentence, never a traceback.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import sys
from collections.abc import Sequence

from fsl_app import __version__
from fsl_app.backbones import DEFAULT_BACKBONE, BackboneError, load_backbone
from fsl_app.classify import Classification, UnusableInputError, classify_files
from fsl_app.embeddings import Embedder, EmbeddingCache, ProgressCallback, default_cache_path
from fsl_app.learners import DEFAULT_LEARNER, available_learners

EXIT_UNUSABLE_INPUT = 2


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m fsl_app",
        description="Teach a computer new image classes from a handful of examples.",
    )
    parser.add_argument("--version", action="version", version=f"fsl_app {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    predict = commands.add_parser(
        "predict",
        help="classify images from a few examples per class",
        description=(
            "Learn classes from a folder of examples (one subfolder per class, named after "
            "the class) and predict the class of each query image."
        ),
    )
    predict.add_argument(
        "--support",
        required=True,
        metavar="DIR",
        help="folder with one subfolder per class; images inside, at any depth",
    )
    predict.add_argument(
        "--query", required=True, metavar="PATH", help="one image, or a folder of images"
    )
    predict.add_argument(
        "--backbone",
        default=DEFAULT_BACKBONE,
        metavar="NAME",
        help=f"timm feature extractor (default: {DEFAULT_BACKBONE}, works offline)",
    )
    predict.add_argument(
        "--learner", default=DEFAULT_LEARNER, choices=available_learners(), help="few-shot learner"
    )
    predict.add_argument("--format", default="table", choices=["table", "csv", "json"])
    predict.add_argument(
        "--device",
        default="auto",
        choices=["auto", "cpu", "cuda", "mps"],
        help="where the backbone runs (auto: GPU when there is one)",
    )
    predict.add_argument("--batch-size", type=int, default=32, metavar="N")
    cache = predict.add_mutually_exclusive_group()
    cache.add_argument(
        "--cache",
        metavar="FILE",
        help=f"embedding cache (default: {default_cache_path()}, or $FSL_APP_CACHE)",
    )
    cache.add_argument(
        "--no-cache", action="store_true", help="keep embeddings in memory for this run only"
    )
    predict.set_defaults(handler=_predict)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.handler(args)
    except (UnusableInputError, BackboneError) as err:
        print(f"error: {err}", file=sys.stderr)
        return EXIT_UNUSABLE_INPUT
    except BrokenPipeError:
        # The reader went away (e.g. `| head`): stop quietly, as Unix tools do.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


def _predict(args: argparse.Namespace) -> int:
    cache = EmbeddingCache(None if args.no_cache else (args.cache or default_cache_path()))
    try:
        embedder = Embedder(
            load_backbone(args.backbone),
            device=args.device,
            batch_size=args.batch_size,
            cache=cache,
        )
        result = classify_files(
            embedder, args.support, args.query, learner=args.learner, progress=_progress_bar
        )
    finally:
        cache.close()
    for path, reason in result.skipped_examples:
        print(f"skipped example {path}: {reason}", file=sys.stderr)
    for query in result.results:
        if query.error:
            print(f"skipped query {query.name}: {query.error}", file=sys.stderr)
    {"table": _print_table, "csv": _print_csv, "json": _print_json}[args.format](result)
    return 0


def _progress_bar(stage: str) -> ProgressCallback:
    """A tqdm bar on stderr (silent when stderr is not a terminal)."""
    from tqdm import tqdm

    bar = tqdm(desc=f"Embedding {stage}", unit="img", disable=None, file=sys.stderr, leave=False)

    def update(done: int, total: int) -> None:
        bar.total = total
        bar.update(done - bar.n)
        if done >= total:
            bar.close()

    return update


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
                    "probabilities": query.probabilities,
                }
            )
    json.dump(rows, sys.stdout, indent=2)
    sys.stdout.write("\n")


def _print_csv(result: Classification) -> None:
    writer = csv.writer(sys.stdout)
    writer.writerow(["path", "prediction", "confidence", "error", *result.classes])
    for query in result.results:
        probabilities = query.probabilities or {}
        writer.writerow(
            [
                query.name,
                query.prediction or "",
                "" if query.confidence is None else f"{query.confidence:.4f}",
                query.error or "",
                *(f"{probabilities[c]:.4f}" if c in probabilities else "" for c in result.classes),
            ]
        )


def _print_table(result: Classification) -> None:
    header = ["path", "prediction", "confidence", *result.classes]
    rows = [
        [
            query.name,
            query.prediction,
            f"{query.confidence:.1%}",
            *(f"{query.probabilities[c]:.1%}" for c in result.classes),
        ]
        for query in result.results
        if not query.error
    ]
    widths = [max(len(str(cell)) for cell in column) for column in zip(header, *rows, strict=True)]
    for row in [header, *rows]:
        print(
            "  ".join(
                str(cell).ljust(width) for cell, width in zip(row, widths, strict=True)
            ).rstrip()
        )
