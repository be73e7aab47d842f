"""``predict``: learn classes from a folder of examples, or load a saved model, and classify."""

from __future__ import annotations

import argparse
import csv
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from fsl_app.backbones import DEFAULT_BACKBONE
from fsl_app.commands.common import add_embedding_options, open_embedder, progress_bar
from fsl_app.errors import UnusableInputError
from fsl_app.files import spreadsheet_safe, utf8_text
from fsl_app.learners import DEFAULT_LEARNER, available_learners
from fsl_app.trust.open_set import DEFAULT_STRICTNESS

if TYPE_CHECKING:
    from fsl_app.classifier import CalibratedClassifier, Prediction
    from fsl_app.embedded_set import EmbeddedSet, Unreadable
    from fsl_app.embeddings import Embedder

    Result = Prediction | Unreadable


def register(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser(
        "predict",
        help="classify images from a few examples per class",
        description=(
            "Learn classes from a folder of examples (one subfolder per class, named after "
            "the class), or load a model saved by the export command, and predict the class "
            "of each image. Confidence is calibrated on the examples; an image unlike "
            "every class is marked unknown (none of these)."
        ),
    )
    examples = parser.add_mutually_exclusive_group(required=True)
    add_examples_option(examples, required=False)
    examples.add_argument(
        "--bundle",
        metavar="FILE",
        help="a model saved by the export command (it fixes backbone, learner and strictness)",
    )
    add_images_option(parser, "--query", help="one image, or a folder of images to classify")
    add_learner_options(parser)
    add_fine_tuning_options(parser)
    parser.add_argument("--format", default="table", choices=["table", "csv", "json"])
    add_embedding_options(parser)
    # None means "not given": --bundle refuses these, --examples falls back to the defaults.
    parser.set_defaults(handler=run, learner=None, strictness=None, backbone=None)


def add_examples_option(parser, *, required: bool = True) -> None:
    """--examples DIR (old name --support): one subfolder per class."""
    parser.add_argument(
        "--examples",
        "--support",
        dest="examples",
        required=required,
        metavar="DIR",
        help="folder of examples: one subfolder per class, images inside at any depth "
        "(--support is the old name)",
    )


def add_images_option(
    parser: argparse.ArgumentParser, old_name: str, *, help: str, required: bool = True
) -> None:
    """--images PATH (with the command's old name as an alias): the pictures to work on."""
    parser.add_argument(
        "--images",
        old_name,
        dest="images",
        required=required,
        metavar="PATH",
        help=f"{help} ({old_name} is the old name)",
    )


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


# The fine-tuning choices; fsl_app.training.finetune.FINE_TUNING describes them (it imports torch).
FINE_TUNING_CHOICES = ("none", "last-stage-maml", "pmf")


def add_fine_tuning_options(parser: argparse.ArgumentParser) -> None:
    """--fine-tune and --force-fine-tune."""
    parser.add_argument(
        "--fine-tune",
        default="none",
        choices=FINE_TUNING_CHOICES,
        help="adapt the image model to the examples first: last-stage-maml (a few steps on its "
        "last stage from a start meta-learned on clip art; seconds on a CPU) or pmf (P>M>F: 50 "
        "steps on augmented copies; a GPU job). The time it will take is printed first; a "
        "run of many minutes is refused unless --force-fine-tune",
    )
    parser.add_argument(
        "--force-fine-tune",
        action="store_true",
        help="fine-tune even when it would take many minutes on this device",
    )


def fine_tuned_embedder(args: argparse.Namespace, embedder):
    """The embedder over the image model fine-tuned on ``args.examples`` by ``args.fine_tune``
    (the same embedder for "none"), after saying on stderr how long it takes."""
    if args.fine_tune == "none":
        return embedder
    from fsl_app.embedded_set import list_input_files, scan_examples_folder
    from fsl_app.embeddings import Embedder, describe_device
    from fsl_app.training.finetune import (
        describe_seconds,
        estimate_seconds,
        fine_tune_examples,
        refusal,
    )

    folder = scan_examples_folder(args.examples)
    n_images = len(list_input_files(args.images)) if getattr(args, "images", None) else 0
    device = embedder.device
    seconds = estimate_seconds(
        args.fine_tune, embedder.backbone, len(folder.paths), n_images, device
    )
    sentence = refusal(args.fine_tune, seconds, device)
    if sentence and not args.force_fine_tune:
        raise UnusableInputError(sentence)
    print(
        f"note: fine-tuning ({args.fine_tune}) on {len(folder.paths)} examples takes about "
        f"{describe_seconds(seconds)} on {describe_device(str(device))}.",
        file=sys.stderr,
    )
    tuned = fine_tune_examples(
        args.fine_tune, embedder.backbone, folder.paths, folder.labels, device=device
    )
    return Embedder(tuned, device=device, batch_size=embedder.batch_size, cache=embedder.cache)


def run(args: argparse.Namespace) -> int:
    from fsl_app.classifier import fit_classifier, predict_set
    from fsl_app.embedded_set import embed_folders

    if args.bundle and args.fine_tune != "none":
        raise UnusableInputError(
            "A saved model keeps the image model it was made with: leave out --fine-tune when "
            "using --bundle."
        )
    if args.bundle:
        classifier, embedded = _bundle_and_images(args)
        report_examples([], [embedded.left_out.note()])
    else:
        args.backbone = args.backbone or DEFAULT_BACKBONE
        learner = args.learner or DEFAULT_LEARNER
        with open_embedder(args) as embedder:
            embedder = fine_tuned_embedder(args, embedder)
            embedded = embed_folders(embedder, args.examples, args.images, progress=progress_bar)
            embedded = read_for_learner(embedded, embedder, learner)
        report_examples(embedded.unreadable, [embedded.left_out.note()])
        classifier = fit_classifier(
            embedded,
            learner=learner,
            strictness=DEFAULT_STRICTNESS if args.strictness is None else args.strictness,
        )
    predictions = predict_set(classifier, embedded)
    unreadable = [u for u in embedded.unreadable if not u.labeled]
    report_examples([], classifier.notes)
    if not predictions:
        raise UnusableInputError(
            f"None of the {len(unreadable)} image(s) is readable, so there is nothing to predict."
        )
    for skipped in unreadable:
        print(f"skipped image {skipped.name}: {skipped.reason}", file=sys.stderr)
    results = sorted([*predictions, *unreadable], key=lambda r: Path(r.name))
    classes = [str(c) for c in classifier.classes_]
    {"table": _print_table, "csv": _print_csv, "json": _print_json}[args.format](results, classes)
    return 0


def _bundle_and_images(args: argparse.Namespace) -> tuple[CalibratedClassifier, EmbeddedSet]:
    from fsl_app.deploy.bundle import check_backbone, load_bundle
    from fsl_app.embedded_set import embed_folders

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
        embedded = embed_folders(embedder, None, args.images, progress=progress_bar)
        return bundle.classifier, read_for_classifier(embedded, embedder, bundle.classifier)


def read_for_learner(
    embedded: EmbeddedSet, embedder: Embedder, learner: str, params: dict | None = None
) -> EmbeddedSet:
    """``embedded`` as ``learner`` takes it (:func:`fsl_app.embedded_set.for_learner`): with
    each picture's activations entering the image model's last stage when the learner adapts
    that stage (from the cache beside the embeddings, else read again from its file)."""
    from fsl_app.embedded_set import for_learner

    return for_learner(
        embedded,
        embedder,
        learner,
        params,
        _file_of(embedded),
        progress=progress_bar("for the last stage", description="Reading"),
    )


def read_for_classifier(
    embedded: EmbeddedSet, embedder: Embedder, classifier: CalibratedClassifier
) -> EmbeddedSet:
    """``embedded`` as a fitted (e.g. saved) ``classifier`` takes it: with the activations
    entering the last stage exactly when its rows carry them."""
    from fsl_app.embedded_set import for_classifier

    return for_classifier(
        embedded,
        embedder,
        classifier,
        _file_of(embedded),
        progress=progress_bar("for the last stage", description="Reading"),
    )


def _file_of(embedded: EmbeddedSet):
    """Where to read row i of a set made from folders again: its file (its name is its path)."""
    return lambda row: Path(embedded.names[row])


def report_examples(unreadable: Sequence[Unreadable], notes: Sequence[str]) -> None:
    """Examples left out and notes on the examples, on stderr."""
    for skipped in unreadable:
        if skipped.labeled:
            print(f"skipped example {skipped.name}: {skipped.reason}", file=sys.stderr)
    for note in notes:
        if note:
            print(f"note: {note}", file=sys.stderr)


def _print_json(results: Sequence[Result], classes: list[str]) -> None:
    rows = []
    for result in results:
        if _unreadable(result):
            rows.append({"path": utf8_text(result.name), "error": utf8_text(result.reason)})
        else:
            rows.append(
                {
                    "path": utf8_text(result.name),
                    "prediction": result.prediction,
                    "confidence": result.confidence,
                    "unknown": result.unknown,
                    "probabilities": result.probabilities,
                }
            )
    json.dump(rows, sys.stdout, indent=2)
    sys.stdout.write("\n")


def _print_csv(results: Sequence[Result], classes: list[str]) -> None:
    """One row per image, the classes' probabilities as columns; safe to open in a spreadsheet
    (a file or class name that would run as a formula gets a leading apostrophe)."""
    rows = [["path", "prediction", "confidence", "unknown", "error", *classes]]
    for result in results:
        if _unreadable(result):
            rows.append(
                [utf8_text(result.name), "", "", "", utf8_text(result.reason), *[""] * len(classes)]
            )
        else:
            rows.append(
                [
                    utf8_text(result.name),
                    result.prediction,
                    f"{result.confidence:.4f}",
                    str(result.unknown).lower(),
                    "",
                    *(f"{result.probabilities[c]:.4f}" for c in classes),
                ]
            )
    csv.writer(sys.stdout).writerows([spreadsheet_safe(cell) for cell in row] for row in rows)


def _print_table(results: Sequence[Result], classes: list[str]) -> None:
    header = ["path", "prediction", "confidence", *classes]
    rows = [
        [
            utf8_text(result.name),
            result.verdict,
            f"{result.confidence:.1%}",
            *(f"{result.probabilities[c]:.1%}" for c in classes),
        ]
        for result in results
        if not _unreadable(result)
    ]
    print_table(header, rows)


def _unreadable(result: Result) -> bool:
    """An :class:`~fsl_app.embedded_set.Unreadable` (it has a reason), not a prediction."""
    return hasattr(result, "reason")


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
