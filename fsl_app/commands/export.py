"""``export``: learn classes from a folder of examples and save the model as one file."""

from __future__ import annotations

import argparse

from fsl_app.classify import fit_folder, scan_examples_folder
from fsl_app.commands.common import add_embedding_options, open_embedder, progress_bar
from fsl_app.commands.predict import add_learner_options, report_examples
from fsl_app.export import save_bundle


def register(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser(
        "export",
        help="save a model learned from a few examples per class to one file",
        description=(
            "Learn classes from a folder of examples (one subfolder per class, named after "
            "the class) and save the calibrated model to one file (safetensors). "
            "`predict --bundle FILE` classifies with it, here or on another computer with "
            "the same backbone weights."
        ),
    )
    parser.add_argument(
        "--support",
        required=True,
        metavar="DIR",
        help="folder with one subfolder per class; images inside, at any depth",
    )
    parser.add_argument("--out", required=True, metavar="FILE", help="where to save the model")
    add_learner_options(parser)
    add_embedding_options(parser)
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    support = scan_examples_folder(args.support)
    with open_embedder(args) as embedder:
        fitted = fit_folder(
            embedder,
            support,
            learner=args.learner,
            strictness=args.strictness,
            progress=progress_bar,
        )
        path = save_bundle(
            args.out,
            fitted.model,
            backbone=embedder.backbone,
            support=fitted.support,
            labels=fitted.labels,
        )
    report_examples(fitted.skipped, fitted.model.notes)
    classes = ", ".join(str(c) for c in fitted.model.classes_)
    print(
        f"Saved a {args.learner} model of {len(fitted.labels)} examples ({classes}) "
        f"on {embedder.backbone.name} to {path}"
    )
    return 0
