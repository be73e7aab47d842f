"""Command line: ``python -m fsl_app COMMAND``; each command lives in :mod:`fsl_app.commands`.

Problems with single files go to stderr and the run goes on; input that cannot
be used at all exits with status 2 and one clear sentence, never a traceback.

Building the parser imports only light modules (no torch, timm, scikit-learn or scipy):
each command imports what it needs when it runs, so ``--help`` answers at once.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

from fsl_app import __version__
from fsl_app.allocator import tune_allocator
from fsl_app.commands import (
    batch_predict,
    check_labels,
    evaluate,
    export,
    meta_train,
    predict,
    suggest,
)

COMMANDS = (predict, batch_predict, export, evaluate, meta_train, suggest, check_labels)
EXIT_UNUSABLE_INPUT = 2


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m fsl_app",
        description="Teach a computer new image classes from a handful of examples.",
    )
    parser.add_argument("--version", action="version", version=f"fsl_app {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for command in COMMANDS:
        command.register(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    tune_allocator()
    args = build_parser().parse_args(argv)
    try:
        return args.handler(args)
    except _unusable_input_errors() as err:
        print(f"error: {err}", file=sys.stderr)
        return EXIT_UNUSABLE_INPUT
    except BrokenPipeError:
        # The reader went away (e.g. `| head`): stop quietly, as Unix tools do.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


def _unusable_input_errors() -> tuple[type[Exception], ...]:
    """The errors that mean "this input cannot be used" (exit status 2, no traceback).

    Called only when a command raised (Python evaluates an ``except`` clause's types then), so
    their modules, which import torch, stay unloaded for ``--help``.
    """
    from fsl_app.backbones import BackboneError
    from fsl_app.deploy.bundle import BundleError
    from fsl_app.errors import UnusableInputError

    return UnusableInputError, BackboneError, BundleError
