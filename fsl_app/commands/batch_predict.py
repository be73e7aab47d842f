"""``batch-predict``: a model bundle over a folder of any size, on this machine or on Ray."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from fsl_app.commands.common import progress_bar
from fsl_app.commands.predict import add_images_option
from fsl_app.errors import UnusableInputError

ENGINES = ("local", "ray")


def register(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser(
        "batch-predict",
        help="classify a whole folder with a saved model, resumably",
        description=(
            "Classify every image under a folder (at any depth) with a model file made by "
            "`export` or the app's Export page, into a CSV or Parquet file with the columns "
            "path, prediction, confidence, unknown, error; path is where the image is under "
            "the input folder (e.g. trip/IMG_0001.jpg; the file's name when the input is one "
            "file). Images already in the output are skipped, so an interrupted run is "
            "finished by running the same command again, with the folder written any way. "
            "Unreadable files get a row with their error and the run goes on."
        ),
    )
    parser.add_argument("--bundle", required=True, metavar="FILE", help="model file")
    add_images_option(parser, "--input", help="folder of images to classify, at any depth")
    parser.add_argument(
        "--output", required=True, metavar="FILE", help="results: FILE.csv or FILE.parquet"
    )
    parser.add_argument(
        "--engine",
        default="local",
        choices=ENGINES,
        help="local: this machine; ray: a Ray Data job (a local Ray, or the cluster at "
        "--address / $RAY_ADDRESS)",
    )
    parser.add_argument("--batch-size", type=int, default=32, metavar="N")
    parser.add_argument(
        "--device", default="auto", choices=["auto", "cpu", "cuda", "mps"], help="local engine"
    )
    parser.add_argument(
        "--address",
        metavar="ADDR",
        help="Ray cluster to join (e.g. ray://head:10001 or auto); default $RAY_ADDRESS, "
        "else a local Ray",
    )
    parser.add_argument(
        "--actors",
        type=int,
        metavar="N",
        help="ray: model copies running at once (default: "
        "one per GPU on a GPU cluster, else one per 2 CPUs)",
    )
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from fsl_app.deploy.batch import BundlePredictor, output_format, run_local

    try:
        output_format(args.output)
    except ValueError as err:
        raise UnusableInputError(str(err)) from None
    if args.batch_size < 1:
        raise UnusableInputError("--batch-size must be at least 1.")
    if not Path(args.images).exists():
        raise UnusableInputError(f"The input folder '{args.images}' does not exist.")
    if args.engine == "ray":
        from fsl_app.deploy.batch_ray import run_ray

        report = run_ray(
            args.bundle,
            args.images,
            args.output,
            batch_size=args.batch_size,
            address=args.address,
            actors=args.actors,
            progress=progress_bar("", description="Predicting", leave=True),
        )
    else:
        predictor = BundlePredictor(args.bundle, device=args.device, batch_size=args.batch_size)
        report = run_local(
            predictor,
            args.images,
            args.output,
            progress=progress_bar("", description="Predicting", leave=True),
        )
    if report.left_out.count:
        print(f"note: {report.left_out.note()}", file=sys.stderr)
    print(
        f"{report.predicted} images predicted ({report.errors} unreadable), "
        f"{report.skipped} already in {args.output}; {report.total} under {args.images}.",
        file=sys.stderr,
    )
    return 0
