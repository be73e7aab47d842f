"""Options and helpers shared by the subcommands: backbone, device, cache, progress.

Like every module the command line imports to build its parser, this one imports no torch,
timm, scikit-learn or scipy at the top: ``--help`` and a mistyped option answer at once, and
the heavy modules load inside the commands that run a model.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

from fsl_app.backbones import DEFAULT_BACKBONE
from fsl_app.embeddings import ProgressCallback, default_cache_path

if TYPE_CHECKING:
    from fsl_app.embeddings import Embedder


def add_embedding_options(parser: argparse.ArgumentParser) -> None:
    """--backbone, --device, --batch-size and the cache options."""
    parser.add_argument(
        "--backbone",
        default=DEFAULT_BACKBONE,
        metavar="NAME",
        help=f"timm feature extractor (default: {DEFAULT_BACKBONE}, works offline)",
    )
    parser.add_argument(
        "--device",
        default="auto",
        choices=["auto", "cpu", "cuda", "mps"],
        help="where the backbone runs (auto: GPU when there is one)",
    )
    parser.add_argument("--batch-size", type=int, default=32, metavar="N")
    cache = parser.add_mutually_exclusive_group()
    cache.add_argument(
        "--cache",
        metavar="FILE",
        help=f"embedding cache (default: {default_cache_path()}, or $FSL_APP_CACHE)",
    )
    cache.add_argument(
        "--no-cache", action="store_true", help="keep embeddings in memory for this run only"
    )


def add_options_when_parsed(
    parser: argparse.ArgumentParser, add_options: Callable[[argparse.ArgumentParser], None]
) -> None:
    """Call ``add_options(parser)`` only when this subcommand's arguments are parsed.

    For a command whose option defaults live in modules that import torch: ``--help`` and the
    other commands never build its options, so they never import those modules. The parent
    parser hands a subcommand its arguments through ``parse_known_args``; the first call adds
    the options and then parses as usual.
    """
    parse = parser.parse_known_args

    def parse_with_options(*args, **kwargs):
        del parser.parse_known_args  # the class's method again, for any later call
        add_options(parser)
        return parse(*args, **kwargs)

    parser.parse_known_args = parse_with_options


@contextmanager
def open_embedder(args: argparse.Namespace) -> Iterator[Embedder]:
    """The embedder the options describe; its cache is closed on the way out.

    The backbone's model is built only if an image is not in the cache.
    """
    from fsl_app.backbones import load_backbone
    from fsl_app.embeddings import Embedder, EmbeddingCache

    cache = EmbeddingCache(None if args.no_cache else (args.cache or default_cache_path()))
    try:
        yield Embedder(
            load_backbone(args.backbone),
            device=args.device,
            batch_size=args.batch_size,
            cache=cache,
        )
    finally:
        if cache.notice:  # a damaged cache was started afresh
            print(f"note: {cache.notice}", file=sys.stderr)
        cache.close()


def progress_bar(
    stage: str, *, description: str = "Embedding", leave: bool = False
) -> ProgressCallback:
    """A tqdm bar on stderr for one stage: images done, images/s and time left (silent when
    stderr is not a terminal)."""
    from tqdm import tqdm

    bar = tqdm(
        desc=f"{description} {stage}".strip(),
        unit="img",
        disable=None,
        file=sys.stderr,
        leave=leave,
        smoothing=0.1,
    )

    def update(done: int, total: int) -> None:
        bar.total = total
        bar.update(done - bar.n)
        if done >= total:
            bar.close()

    return update
