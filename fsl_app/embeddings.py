"""Images to embeddings, once per (backbone, image): the currency of the whole app.

Extraction runs in batches on the best device (CUDA with mixed precision, then
Apple's MPS, then the CPU) under ``torch.inference_mode``. Every embedding is
kept in an SQLite cache keyed by (backbone id, sha256 of the image bytes), so a
rerun, a restart or a new label never embeds a known image again: a cache hit
costs a file read and a hash, not a decode and a forward pass.

While the model runs on one batch, worker threads (one per core) read, hash,
decode and preprocess the next, image by image (hashlib, Pillow and the file
system release the GIL), so the pipeline keeps close to the speed of the bare
forward pass. On a CPU the decoding still shares the cores with the model: large
camera JPEGs, whose decoding costs about a quarter of a forward pass even at
1/8 scale, keep it near 0.8x of that speed on two cores.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sqlite3
import threading
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from fsl_app.images import ImageLoadError, decode_image_bytes, image_sha256, read_image_bytes

if TYPE_CHECKING:  # imported where a tensor is made: the cache and its path need no torch
    import torch

    from fsl_app.backbones import Backbone

# Bump when decoding or preprocessing changes what an image embeds to.
PIPELINE_VERSION = 1
CACHE_PATH_ENV = "FSL_APP_CACHE"
# Decoding scales with cores until the disk or the model becomes the bottleneck.
_MAX_IMAGE_WORKERS = 8

ImageSource = bytes | str | os.PathLike
ProgressCallback = Callable[[int, int], None]  # (images done, images in all)


def resolve_device(preference: str = "auto") -> torch.device:
    """``auto`` picks CUDA, then MPS, then the CPU; any other value is used as given."""
    import torch

    if preference != "auto":
        device = torch.device(preference)
        if device.type == "cuda" and not torch.cuda.is_available():
            raise RuntimeError("A GPU (cuda) was asked for, but none is available here.")
        return device
    if torch.cuda.is_available():
        return torch.device("cuda")
    if torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


DEVICE_NAMES = {"auto": "Best available", "cpu": "CPU", "cuda": "GPU", "mps": "Apple GPU"}


def available_devices() -> list[str]:
    """The device choices this machine offers: ``auto``, ``cpu`` and any GPU present."""
    import torch

    devices = ["auto", "cpu"]
    if torch.cuda.is_available():
        devices.append("cuda")
    if torch.backends.mps.is_available():
        devices.append("mps")
    return devices


def describe_device(preference: str = "auto") -> str:
    """Where ``preference`` runs, in words: "CPU", "GPU (NVIDIA H200)", "Apple GPU"."""
    import torch

    device = resolve_device(preference)
    if device.type == "cuda":
        return f"GPU ({torch.cuda.get_device_name(device)})"
    return DEVICE_NAMES.get(device.type, device.type)


def autocast_for(device: torch.device):
    """Mixed precision on a GPU (float16 autocast), nothing on other devices: the one rule for
    every forward pass (embedding, the cached last stage, fine-tuning)."""
    import torch

    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.float16)
    return nullcontext()


def default_cache_path() -> Path:
    """``$FSL_APP_CACHE``, else ``$XDG_CACHE_HOME/fsl_app/embeddings.sqlite``."""
    if os.environ.get(CACHE_PATH_ENV):
        return Path(os.environ[CACHE_PATH_ENV])
    cache_home = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return cache_home / "fsl_app" / "embeddings.sqlite"


class EmbeddingCache:
    """Embeddings persisted in SQLite, keyed by (backbone key, image sha256).

    Safe to share between threads and between processes (WAL journal, one
    short transaction per write). ``path=None`` keeps the cache in memory.

    The cache only saves work: a file that turns out not to be a database, or a damaged one,
    is moved aside (``<name>.corrupt``) and started afresh, and ``notice`` says so in a
    sentence (also logged); the embeddings are simply made again.

    Vectors are stored as ``dtype``; a subclass may store a smaller one (the last-stage
    activations of :mod:`fsl_app.stage_cache` are float16).
    """

    dtype: type = np.float32

    def __init__(self, path: str | os.PathLike | None = None):
        self.path = None if path is None else Path(path)
        self.notice: str | None = None
        self._lock = threading.Lock()
        try:
            self._db = self._open()
        except sqlite3.DatabaseError as err:
            self._db = self._start_afresh(err)

    def get_many(self, backbone: str, hashes: Sequence[str]) -> dict[str, np.ndarray]:
        found: dict[str, np.ndarray] = {}
        unique = list(dict.fromkeys(hashes))
        with self._lock:
            for start in range(0, len(unique), 500):  # SQLite caps bound parameters
                part = unique[start : start + 500]
                try:
                    rows = self._db.execute(
                        "SELECT image_sha256, vector FROM embeddings WHERE backbone = ? "
                        f"AND image_sha256 IN ({','.join('?' * len(part))})",
                        (backbone, *part),
                    ).fetchall()
                except sqlite3.DatabaseError as err:  # damaged pages: nothing to trust
                    self._db = self._start_afresh(err)
                    return {}
                found.update((h, np.frombuffer(blob, dtype=self.dtype)) for h, blob in rows)
        return found

    def put_many(self, backbone: str, vectors: dict[str, np.ndarray]) -> None:
        rows = [
            (backbone, h, np.ascontiguousarray(v, dtype=self.dtype).tobytes())
            for h, v in vectors.items()
        ]
        with self._lock:
            try:
                with self._db:
                    self._db.executemany("INSERT OR REPLACE INTO embeddings VALUES (?, ?, ?)", rows)
            except sqlite3.DatabaseError as err:
                self._db = self._start_afresh(err)
                with self._db:
                    self._db.executemany("INSERT OR REPLACE INTO embeddings VALUES (?, ?, ?)", rows)

    def _open(self) -> sqlite3.Connection:
        if self.path is not None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        db = sqlite3.connect(
            ":memory:" if self.path is None else str(self.path),
            check_same_thread=False,
            timeout=30,
        )
        try:
            if self.path is not None:
                db.execute("PRAGMA journal_mode=WAL")
            db.execute(
                "CREATE TABLE IF NOT EXISTS embeddings ("
                " backbone TEXT NOT NULL, image_sha256 TEXT NOT NULL, vector BLOB NOT NULL,"
                " PRIMARY KEY (backbone, image_sha256)) WITHOUT ROWID"
            )
            db.commit()
        except sqlite3.DatabaseError:
            db.close()
            raise
        return db

    def _start_afresh(self, err: sqlite3.DatabaseError) -> sqlite3.Connection:
        """Move a damaged cache file aside and open an empty one in its place."""
        if self.path is None:
            raise err  # an in-memory database does not get damaged on disk
        with contextlib.suppress(Exception):
            self._db.close()
        aside = self.path.with_name(self.path.name + ".corrupt")
        os.replace(self.path, aside)
        for suffix in ("-wal", "-shm"):
            Path(f"{self.path}{suffix}").unlink(missing_ok=True)
        self.notice = (
            f"The embedding cache '{self.path}' was damaged ({err}); it was moved to "
            f"'{aside.name}' and started afresh, so pictures are read again once."
        )
        logging.getLogger(__name__).warning(self.notice)
        return self._open()

    def count(self, backbone: str | None = None) -> int:
        with self._lock:
            if backbone is None:
                return self._db.execute("SELECT COUNT(*) FROM embeddings").fetchone()[0]
            return self._db.execute(
                "SELECT COUNT(*) FROM embeddings WHERE backbone = ?", (backbone,)
            ).fetchone()[0]

    def close(self) -> None:
        with self._lock:
            self._db.close()


class NoCache:
    """A cache that keeps nothing: for one pass over more images than memory or disk should
    hold (batch prediction), where every image is seen once."""

    def get_many(self, backbone: str, hashes: Sequence[str]) -> dict[str, np.ndarray]:
        return {}

    def put_many(self, backbone: str, vectors: dict[str, np.ndarray]) -> None:
        pass

    def count(self, backbone: str | None = None) -> int:
        return 0

    def close(self) -> None:
        pass


@dataclass
class EmbeddedImages:
    """What :meth:`Embedder.embed` made of a list of sources.

    ``embeddings[i]`` belongs to ``sources[indices[i]]``, the picture ``ids[i]`` (the SHA-256
    of its bytes, the id a picture has everywhere in fsl_app); sources that could not be read
    are in ``errors`` as (index, message for a person) instead.
    """

    embeddings: np.ndarray  # (n_embedded, embedding_dim) float32
    indices: list[int]
    ids: list[str]
    errors: list[tuple[int, str]] = field(default_factory=list)


@dataclass
class _Batch:
    """One slice of the sources, read, hashed and (for cache misses) decoded."""

    start: int
    hashes: dict[int, str]  # position in sources -> sha256, for readable ones
    errors: list[tuple[int, str]]
    cached: dict[str, np.ndarray]
    to_embed: list[str]  # hashes to run through the model, in the order of ``pixels``
    pixels: torch.Tensor | None


class Embedder:
    """Runs a backbone over images, with the cache in front of it.

    ``images_forwarded`` counts the images that went through the model, so a
    caller (or a test) can see that a cache hit did no work.
    """

    def __init__(
        self,
        backbone: Backbone,
        *,
        device: str | torch.device = "auto",
        batch_size: int = 32,
        cache: EmbeddingCache | NoCache | None = None,
    ):
        import torch

        self.backbone = backbone
        self.device = device if isinstance(device, torch.device) else resolve_device(device)
        self.batch_size = batch_size
        self.cache = cache if cache is not None else EmbeddingCache(None)
        self.cache_key = f"{backbone.id}/v{PIPELINE_VERSION}"
        self.images_forwarded = 0
        self._image_workers = _image_workers()
        backbone.to(self.device)

    def embed(
        self,
        sources: Sequence[ImageSource],
        *,
        names: Sequence[str] | None = None,
        progress: ProgressCallback | None = None,
    ) -> EmbeddedImages:
        """Embed files or raw bytes; unreadable ones are reported, not raised.

        ``names`` label raw-bytes sources in error messages (file paths name
        themselves).
        """
        total = len(sources)
        vectors: dict[str, np.ndarray] = {}
        hashes: dict[int, str] = {}
        errors: list[tuple[int, str]] = []
        done = 0
        for batch in self._prepared_batches(sources, names):
            vectors.update(batch.cached)
            if batch.pixels is not None:
                fresh = dict(zip(batch.to_embed, self._forward(batch.pixels), strict=True))
                self.cache.put_many(self.cache_key, fresh)
                vectors.update(fresh)
            hashes.update(batch.hashes)
            errors.extend(batch.errors)
            done += len(batch.hashes) + len(batch.errors)
            if progress is not None:
                progress(done, total)
        indices = sorted(hashes)
        ordered_ids = [hashes[i] for i in indices]
        matrix = (
            np.stack([vectors[h] for h in ordered_ids]).astype(np.float32, copy=False)
            if indices  # the model's width is asked only when there is no row to show it
            else np.zeros((0, self.backbone.embedding_dim), dtype=np.float32)
        )
        return EmbeddedImages(matrix, indices, ordered_ids, sorted(errors))

    def _prepared_batches(
        self, sources: Sequence[ImageSource], names: Sequence[str] | None
    ) -> Iterator[_Batch]:
        """Batches in order, each prepared on worker threads while the previous one runs."""
        starts = range(0, len(sources), self.batch_size)
        with (
            ThreadPoolExecutor(max_workers=1, thread_name_prefix="fsl-prepare") as ahead,
            ThreadPoolExecutor(
                max_workers=self._image_workers, thread_name_prefix="fsl-decode"
            ) as workers,
        ):
            pending = None
            for start in starts:
                future = ahead.submit(self._prepare, sources, names, start, workers)
                if pending is not None:
                    yield pending.result()
                pending = future
            if pending is not None:
                yield pending.result()

    def _prepare(
        self,
        sources: Sequence[ImageSource],
        names: Sequence[str] | None,
        start: int,
        workers: ThreadPoolExecutor,
    ) -> _Batch:
        """Read and hash one batch, look it up in the cache, decode and preprocess the misses.

        Each image is a separate task for ``workers``: hashing, decoding and resizing release
        the GIL, so they run in parallel.
        """
        import torch

        indices = range(start, min(start + self.batch_size, len(sources)))
        hashes: dict[int, str] = {}
        raw: dict[int, bytes] = {}
        errors: list[tuple[int, str]] = []
        reads = workers.map(self._read, [sources[i] for i in indices])
        for index, read in zip(indices, reads, strict=True):
            if isinstance(read, ImageLoadError):
                errors.append((index, str(read)))
            else:
                raw[index], hashes[index] = read
        cached = self.cache.get_many(self.cache_key, list(hashes.values()))
        first_of: dict[str, int] = {}  # each new picture is decoded once, for its first source
        for index, digest in hashes.items():
            if digest not in cached:
                first_of.setdefault(digest, index)
        outcomes = workers.map(
            self._pixels,
            [raw[i] for i in first_of.values()],
            [_source_name(sources[i], names, i) for i in first_of.values()],
        )
        decoded = dict(zip(first_of, outcomes, strict=True))
        for index, digest in list(hashes.items()):
            failure = decoded.get(digest)
            if isinstance(failure, ImageLoadError):
                # The same bytes fail the same way: report it for every source that held them.
                name = _source_name(sources[index], names, index)
                errors.append((index, str(ImageLoadError(name, failure.reason))))
                del hashes[index]
        pixels = {d: t for d, t in decoded.items() if isinstance(t, torch.Tensor)}
        return _Batch(
            start,
            hashes,
            errors,
            cached,
            list(pixels),
            torch.stack(list(pixels.values())) if pixels else None,
        )

    @staticmethod
    def _read(source: ImageSource) -> tuple[bytes, str] | ImageLoadError:
        try:
            data = source if isinstance(source, bytes) else read_image_bytes(source)
        except ImageLoadError as err:
            return err
        return data, image_sha256(data)

    def _pixels(self, data: bytes, name: str) -> torch.Tensor | ImageLoadError:
        try:
            image, _ = decode_image_bytes(data, name, self.backbone.resize_side)
        except ImageLoadError as err:
            return err
        return self.backbone.transform(image)

    def _autocast(self):
        return autocast_for(self.device)

    def _forward(self, pixels: torch.Tensor) -> np.ndarray:
        import torch

        with torch.inference_mode(), self._autocast():
            features = self.backbone.embed(pixels.to(self.device, non_blocking=True))
        self.images_forwarded += len(pixels)
        return features.float().cpu().numpy()


def _image_workers() -> int:
    """Threads that read, hash and decode images: one per CPU core this process may use."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # macOS and Windows have no affinity call
        cores = os.cpu_count() or 1
    return max(1, min(cores, _MAX_IMAGE_WORKERS))


def _source_name(source: ImageSource, names: Sequence[str] | None, index: int) -> str:
    if names is not None:
        return names[index]
    if isinstance(source, bytes):
        return f"image {index + 1}"
    return Path(source).name
