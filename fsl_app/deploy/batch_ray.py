"""Batch prediction on Ray Data: the ``local`` engine's job, spread over a pool of actors.

Each actor loads the bundle once (one model per actor, on a GPU when the cluster has them) and
runs the same :class:`~fsl_app.deploy.batch.BundlePredictor` as the local engine over the batches of
paths it is given, so both engines write the same rows. The driver streams the results back and
appends them to the same journal as :func:`fsl_app.deploy.batch.run_local`, so a run is resumable
with either engine and a rerun predicts only what is not yet in the output.

The bundle is read on the driver and its bytes shipped to the actors: workers on other machines
need not see the driver's file. The images are read by the workers themselves, by path, so on
a cluster the input folder must be on storage every node mounts at the same path (NFS, a
shared volume), and every node needs fsl_app and its requirements installed.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from fsl_app.deploy.batch import (
    DEFAULT_CHUNK_BATCHES,
    BatchReport,
    BundlePredictor,
    arrow_schema,
    start_run,
    walk,
)
from fsl_app.deploy.bundle import load_bundle


# Rows as the local engine makes them: confidence NaN and unknown null on an error row.
def run_ray(
    bundle_path: str | os.PathLike,
    input_dir: str | os.PathLike,
    output: str | os.PathLike,
    *,
    batch_size: int = 32,
    address: str | None = None,
    actors: int | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> BatchReport:
    """Predict every image under ``input_dir`` not yet in ``output`` with a Ray Data job.

    Ray is the one already initialised in this process if there is one, else the cluster at
    ``address`` (e.g. ``ray://head:10001`` or ``auto``) or ``$RAY_ADDRESS``, else a local Ray
    on this machine's cores, shut down again at the end. ``actors`` model copies run at once
    (default: one per GPU on a cluster with GPUs, else one per 2 CPUs), each taking batches of
    ``batch_size`` paths. ``progress(done, todo)`` follows the images of this run.
    """
    load_bundle(bundle_path)  # a missing or bad model file fails here, as with `local`
    data = Path(bundle_path).read_bytes()
    journal, done, report = start_run(input_dir, output)
    # The pending paths are listed on the driver and handed to Ray whole: a few hundred bytes
    # an image (about 0.3 GB a million, on the driver and again in Ray's object store), fine
    # for millions of images. The images themselves are only ever opened by the actors.
    # A path travels as bytes: a file name that is not UTF-8 is no Arrow string.
    pending = [
        {"name": name, "file": os.fsencode(path)}
        for name, path in walk(input_dir)
        if name not in done
    ]
    if pending:
        with _ray_session(address):
            for rows in _predicted_batches(data, pending, batch_size=batch_size, actors=actors):
                journal.append(rows)
                report.add(rows)
                if progress is not None:
                    progress(report.predicted, report.todo)
    journal.finish()
    return report


class _BundleActor:
    """One model per actor: ``__call__`` maps a batch of images (``file``, the path to read,
    and ``name``, the path column) to the output columns."""

    def __init__(self, bundle, batch_size: int):
        import ray

        if isinstance(bundle, ray.ObjectRef):
            bundle = ray.get(bundle)
        self.predictor = BundlePredictor(load_bundle(bundle), device="auto", batch_size=batch_size)

    def __call__(self, batch: dict):
        rows = self.predictor.predict(
            [os.fsdecode(path) for path in batch["file"]], [str(name) for name in batch["name"]]
        )
        return _table(rows)


def _predicted_batches(
    data: bytes, pending: list[dict], *, batch_size: int, actors: int | None
) -> Iterator[list[dict]]:
    """Rows of ``pending``, in order, a batch at a time as the actors finish them."""
    import ray
    import ray.data

    resources = ray.cluster_resources()
    gpus = int(resources.get("GPU", 0))
    cpus = int(resources.get("CPU", 1))
    if actors is None:
        actors = gpus if gpus else max(1, cpus // 2)
    if gpus:
        cpus_per_actor = 1.0  # the GPU does the model; one core decodes for it
    else:
        # Each actor's torch uses as many threads as it has CPUs (Ray sets OMP_NUM_THREADS).
        cpus_per_actor = float(max(1, cpus // actors)) if actors <= cpus else cpus / actors
    # Blocks of one local chunk (fewer rows if that keeps every actor busy): each block's rows
    # reach the journal together, so a killed run loses at most a chunk per actor.
    chunk = max(batch_size, min(batch_size * DEFAULT_CHUNK_BATCHES, -(-len(pending) // actors)))
    dataset = ray.data.from_items(pending, override_num_blocks=-(-len(pending) // chunk))
    # Rows come back in the order of the folder, as with the local engine; our own progress
    # bar replaces Ray Data's.
    dataset.context.execution_options.preserve_order = True
    dataset.context.enable_progress_bars = False
    dataset.context.print_on_execution_start = False
    predicted = dataset.map_batches(
        _BundleActor,
        fn_constructor_kwargs={"bundle": ray.put(data), "batch_size": batch_size},
        batch_size=batch_size,
        compute=ray.data.ActorPoolStrategy(size=actors),
        num_cpus=cpus_per_actor,
        num_gpus=1 if gpus else 0,
        batch_format="numpy",
    )
    # Streamed: each block is written to the journal as it arrives, never all held at once.
    with _quiet_ray_data_logs():
        for table in predicted.iter_batches(batch_size=None, batch_format="pyarrow"):
            yield table.to_pylist()


@contextmanager
def _quiet_ray_data_logs() -> Iterator[None]:
    """Ray Data's warnings and errors only, while the job runs: no timings, and no warning
    that its progress bars are off (ours is on)."""
    levels = {"ray.data": logging.WARNING, "ray.data._internal.progress": logging.ERROR}
    loggers = {logging.getLogger(name): level for name, level in levels.items()}
    before = {logger: logger.level for logger in loggers}
    for logger, level in loggers.items():
        logger.setLevel(max(level, logger.getEffectiveLevel()))
    try:
        yield
    finally:
        for logger, level in before.items():
            logger.setLevel(level)


@contextmanager
def _ray_session(address: str | None) -> Iterator[None]:
    """The caller's Ray if one is running, else one joined or started here and shut down."""
    import ray

    if ray.is_initialized():
        yield
        return
    address = address or os.environ.get("RAY_ADDRESS")
    if address:
        ray.init(address=address, logging_level=logging.WARNING)
    else:
        ray.init(
            num_cpus=max(2, os.cpu_count() or 1),
            include_dashboard=False,
            logging_level=logging.WARNING,
        )
    try:
        yield
    finally:
        ray.shutdown()


def _table(rows: list[dict]):
    import pyarrow as pa

    return pa.Table.from_pylist(rows, schema=arrow_schema())
