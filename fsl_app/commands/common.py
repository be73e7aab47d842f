"""Options and helpers shared by the subcommands: backbone, device, cache, progress."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterator
from contextlib import contextmanager

from fsl_app.backbones import DEFAULT_BACKBONE, load_backbone
from fsl_app.embeddings import Embedder, EmbeddingCache, ProgressCallback, default_cache_path


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


@contextmanager
def open_embedder(args: argparse.Namespace) -> Iterator[Embedder]:
    """The embedder the options describe; its cache is closed on the way out."""
    cache = EmbeddingCache(None if args.no_cache else (args.cache or default_cache_path()))
    try:
        yield Embedder(
            load_backbone(args.backbone),
            device=args.device,
            batch_size=args.batch_size,
            cache=cache,
        )
    finally:
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
