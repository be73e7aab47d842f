"""``export``: learn classes from a folder of examples and save the model as one file."""

from __future__ import annotations

import argparse

from fsl_app.commands.common import add_embedding_options, open_embedder, progress_bar
from fsl_app.commands.predict import (
    add_examples_option,
    add_images_option,
    add_learner_options,
    read_for_learner,
    report_examples,
)


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
    add_examples_option(parser)
    add_images_option(
        parser,
        "--pool",
        required=False,
        help="optional: a folder of pictures still to sort, which a semi-supervised learner "
        "learns from; the model file keeps up to 500 of them",
    )
    parser.add_argument("--out", required=True, metavar="FILE", help="where to save the model")
    parser.add_argument(
        "--onnx",
        metavar="FILE",
        help=(
            "also write the model, backbone and head, as one ONNX graph to FILE (needs onnx, "
            "onnxscript and onnxruntime). Input 'pixels' (batch, 3, H, W) float32, preprocessed "
            "as the backbone does (its resize, crop, mean and std are in the file's metadata); "
            "outputs 'probabilities', 'distance' and 'unknown'; checked with onnxruntime "
            "against torch before it is written"
        ),
    )
    add_learner_options(parser)
    add_embedding_options(parser)
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from fsl_app.classifier import fit_classifier
    from fsl_app.deploy.bundle import load_bundle, save_bundle
    from fsl_app.deploy.onnx import check_onnx_export, export_onnx
    from fsl_app.embedded_set import embed_folders

    if args.onnx:
        check_onnx_export(args.learner)  # before any work: a missing package says so at once
    with open_embedder(args) as embedder:
        embedded = embed_folders(embedder, args.examples, args.images, progress=progress_bar)
        report_examples(embedded.unreadable, [embedded.left_out.note()])
        embedded = read_for_learner(embedded, embedder, args.learner)
        classifier = fit_classifier(embedded, learner=args.learner, strictness=args.strictness)
        path = save_bundle(args.out, classifier, backbone=embedder.backbone)
        if args.onnx:
            # From the saved file, so the graph is what the bundle holds.
            onnx_path = export_onnx(load_bundle(path), embedder.backbone, args.onnx)
    report_examples([], classifier.notes)
    classes = ", ".join(str(c) for c in classifier.classes_)
    print(
        f"Saved a {args.learner} model of {len(classifier.labels_)} examples ({classes}) "
        f"on {embedder.backbone.name} to {path}"
    )
    if args.onnx:
        print(f"Saved it as ONNX (backbone and head in one graph) to {onnx_path}")
    return 0
