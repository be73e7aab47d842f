"""Batch prediction: a model bundle over a folder of any size, into a CSV or Parquet file.

The folder is walked lazily and read a chunk at a time, so memory does not grow with the number
of images. The output is the run's journal: every chunk's rows are appended and flushed to disk
before the next chunk starts, and a rerun skips the paths already in it. A run killed at any
point therefore finishes on rerun with every image in the output exactly once (a row cut in
half by the kill is dropped and redone).

The same :class:`BundlePredictor` does the work on one machine (``local``) and inside each actor
of a Ray Data job (``ray``, see :mod:`fsl_app.deploy.batch_ray`).
"""

from __future__ import annotations

import csv
import io
import os
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

import numpy as np

from fsl_app.backbones import load_backbone
from fsl_app.classifier import Prediction
from fsl_app.deploy.bundle import Bundle, check_backbone, load_bundle
from fsl_app.embedded_set import EmbeddedSet
from fsl_app.embeddings import EmbeddedImages, Embedder, NoCache
from fsl_app.errors import UnusableInputError
from fsl_app.files import (
    LeftOut,
    from_spreadsheet_safe,
    iter_image_files,
    spreadsheet_safe,
    utf8_text,
    write_atomically_with,
)
from fsl_app.stage_cache import StageEmbedder

COLUMNS = ("path", "prediction", "confidence", "unknown", "error")
OUTPUT_FORMATS = {".csv": "csv", ".parquet": "parquet"}
# Images per chunk: the embedder's pipeline runs within a chunk, rows are saved after each.
DEFAULT_CHUNK_BATCHES = 8

Row = dict[str, object]
T = TypeVar("T")


class BundlePredictor:
    """A bundle's classifier with its backbone: paths in, one output row per path out.

    For a model that adapts the image model's last stage (``classifier.needs_last_stage``) a
    picture's row is its embedding followed by its activations entering that stage, as when
    the model was made: each picture is read once and goes once through the image model up to
    that stage (:class:`~fsl_app.stage_cache.StageEmbedder`), and its embedding is those
    activations through the backbone's own last stage, the layers :meth:`Backbone.embed` ends
    with. Nothing is kept between chunks.
    """

    def __init__(self, bundle: Bundle | str | os.PathLike, *, device="auto", batch_size=32):
        self.bundle = bundle if isinstance(bundle, Bundle) else load_bundle(bundle)
        backbone = load_backbone(self.bundle.backbone_name)
        check_backbone(self.bundle, backbone)
        self.embedder = Embedder(backbone, device=device, batch_size=batch_size, cache=NoCache())
        if self.bundle.classifier.needs_last_stage:
            self.embedder = StageEmbedder(
                backbone, device=device, batch_size=batch_size, cache=NoCache()
            )

    def predict(self, paths: Sequence[str], names: Sequence[str] | None = None) -> list[Row]:
        """One row per path, in order; ``names`` (default: the paths) fill the path column."""
        names = [str(p) for p in paths] if names is None else names
        embedded = self.embedder.embed([Path(p) for p in paths])
        rows: list[Row] = [{}] * len(paths)
        for index, message in embedded.errors:
            rows[index] = error_row(names[index], message)
        staged = isinstance(self.embedder, StageEmbedder)
        pictures = EmbeddedSet(
            ids=embedded.ids,
            names=[names[i] for i in embedded.indices],
            labels=[None] * len(embedded.ids),
            embeddings=self._pooled(embedded) if staged else embedded.embeddings,
            classes=[],
            backbone=self.bundle.backbone_name,
            # float16, as the activation cache keeps them wherever the model was made
            stage=embedded.embeddings.astype(np.float16) if staged else None,
        )
        predictions = self.bundle.classifier.predict_pictures(
            pictures.inputs, ids=pictures.ids, names=pictures.names
        )
        for index, prediction in zip(embedded.indices, predictions, strict=True):
            rows[index] = prediction_row(prediction)
        return rows

    def _pooled(self, embedded: EmbeddedImages) -> np.ndarray:
        """The embeddings (n, dim) of pictures whose activations entering the last stage the
        stage embedder made: those activations through the backbone's last stage."""
        activations = self.embedder.activations(embedded)
        return self.embedder.stage.pooled_in_batches(
            activations, device=self.embedder.device, batch_size=self.embedder.batch_size
        ).numpy()


def prediction_row(prediction: Prediction) -> Row:
    """A picture's output row (:data:`COLUMNS`): the same columns here and in the app."""
    return {
        "path": prediction.name,
        "prediction": prediction.prediction,
        "confidence": prediction.confidence,
        "unknown": prediction.unknown,
        "error": "",
    }


def error_row(path: str, message: str) -> Row:
    """The output row of a picture that could not be read, with why."""
    return {
        "path": str(path),
        "prediction": "",
        "confidence": np.nan,
        "unknown": None,
        "error": utf8_text(message),  # it quotes the file's name
    }


def arrow_schema():
    """The output columns as Arrow types: what Parquet holds and what Ray actors return."""
    import pyarrow as pa

    return pa.schema(
        [
            ("path", pa.string()),
            ("prediction", pa.string()),
            ("confidence", pa.float64()),
            ("unknown", pa.bool_()),
            ("error", pa.string()),
        ]
    )


def output_format(path: str | os.PathLike) -> str:
    suffix = Path(path).suffix.lower()
    if suffix not in OUTPUT_FORMATS:
        raise ValueError(f"The output must end in .csv or .parquet; '{Path(path).name}' does not.")
    return OUTPUT_FORMATS[suffix]


class CsvJournal:
    """The CSV output, appended chunk by chunk and flushed to disk after each.

    Its text is safe to open in a spreadsheet: a file or class name that would run as a formula
    gets a leading apostrophe (:func:`~fsl_app.files.spreadsheet_safe`), taken off again when a
    rerun reads which images are done. ``spreadsheet=False`` writes the text raw (the journal
    of a Parquet output: Parquet is no spreadsheet format).
    """

    def __init__(self, path: str | os.PathLike, *, spreadsheet: bool = True):
        self.path = Path(path)
        self.cell = spreadsheet_safe if spreadsheet else _as_is
        self.text = from_spreadsheet_safe if spreadsheet else _as_is

    def done(self) -> set[str]:
        """Paths already in the output; a last line cut short by a kill is removed first.

        Raises UnusableInputError, before anything is changed, when the file is not an output
        of this command (another program's CSV, say).
        """
        if not self.path.exists():
            return set()
        self._check_header()
        _drop_partial_last_line(self.path)
        with self.path.open(newline="", encoding="utf-8") as file:
            return {self.text(row["path"]) for row in csv.DictReader(file)}

    def append(self, rows: Iterable[Row]) -> None:
        new = not self.path.exists() or self.path.stat().st_size == 0
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=COLUMNS, lineterminator="\n")
        if new:
            writer.writeheader()
        for row in rows:
            cells = {key: self.cell(value) for key, value in row.items()}
            writer.writerow({**cells, "confidence": _csv_number(row["confidence"])})
        with self.path.open("a", newline="", encoding="utf-8") as file:
            file.write(buffer.getvalue())
            file.flush()
            os.fsync(file.fileno())

    def finish(self) -> None:
        pass

    def _check_header(self) -> None:
        header = ",".join(COLUMNS).encode() + b"\n"
        with self.path.open("rb") as file:
            first = file.readline(len(header) + 1)
        # An empty file, or a header cut short by a kill (it has no newline yet), is ours.
        if first == header or (not first.endswith(b"\n") and header.startswith(first)):
            return
        try:
            found = _other_columns(next(csv.reader([first.decode("utf-8")]), []))
        except UnicodeDecodeError:
            found = "it is not a UTF-8 text file"
        raise _not_a_results_file(self.path, found)


class ParquetJournal:
    """Parquet output: rows go to a CSV journal beside it while the run lasts, and into the
    Parquet file (rewritten in place, atomically) when it ends. A finished file that a later
    run adds to is turned back into a journal first, so no row is lost or written twice."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self.journal = CsvJournal(
            self.path.with_name(self.path.name + ".partial.csv"), spreadsheet=False
        )

    def done(self) -> set[str]:
        """As :meth:`CsvJournal.done`; also refuses a Parquet file with other columns."""
        if self.path.exists():
            self._check_schema()
            if not self.journal.path.exists():
                self._parquet_to_journal()
        return self.journal.done()

    def append(self, rows: Iterable[Row]) -> None:
        self.journal.append(rows)

    def finish(self) -> None:
        import pyarrow.csv as pa_csv
        import pyarrow.parquet as pq

        if not self.journal.path.exists():
            return
        schema = arrow_schema()
        convert = pa_csv.ConvertOptions(
            column_types=schema, strings_can_be_null=False, quoted_strings_can_be_null=False
        )

        def write(temporary: Path) -> None:
            with (
                pa_csv.open_csv(self.journal.path, convert_options=convert) as reader,
                pq.ParquetWriter(temporary, schema) as writer,
            ):
                for chunk in reader:  # streamed: memory stays flat however long the journal
                    writer.write_batch(chunk)

        write_atomically_with(self.path, write)
        self.journal.path.unlink()

    def _check_schema(self) -> None:
        import pyarrow as pa
        import pyarrow.parquet as pq

        try:
            schema = pq.read_schema(self.path)
        except (pa.ArrowException, OSError):
            found = "it is not a Parquet file"
        else:
            if schema.equals(arrow_schema(), check_metadata=False):
                return
            found = _other_columns(schema.names)
        raise _not_a_results_file(self.path, found)

    def _parquet_to_journal(self) -> None:
        import pyarrow.parquet as pq

        opened = pq.ParquetFile(self.path)
        for batch in opened.iter_batches():
            self.journal.append(batch.to_pylist())


def open_journal(path: str | os.PathLike) -> CsvJournal | ParquetJournal:
    return CsvJournal(path) if output_format(path) == "csv" else ParquetJournal(path)


@dataclass
class BatchReport:
    total: int  # images under the input
    skipped: int  # already in the output from an earlier run
    predicted: int
    errors: int
    left_out: LeftOut = field(default_factory=LeftOut)  # files under the input that are not images

    @property
    def todo(self) -> int:
        return self.total - self.skipped

    def add(self, rows: Sequence[Row]) -> None:
        self.predicted += len(rows)
        self.errors += sum(1 for row in rows if row["error"])


def relative_path(path: Path, root: Path) -> str:
    """The path column: where the image is under the input folder, ``/`` between folders.

    So the same folder given another way (relative or absolute, ``./``, a trailing slash)
    names every image the same and a rerun finds it done. When the input is one file, its name.
    A name that is not UTF-8 is written losslessly as UTF-8 text (:func:`utf8_text`).
    """
    return utf8_text(path.name if path == root else path.relative_to(root).as_posix())


def walk(
    input_dir: str | os.PathLike, left_out: LeftOut | None = None
) -> Iterator[tuple[str, Path]]:
    """Each image under ``input_dir`` as (its path column, its path), in the folder's order."""
    root = Path(input_dir)
    for path in iter_image_files(root, left_out):
        yield relative_path(path, root), path


def start_run(
    input_dir: str | os.PathLike, output: str | os.PathLike
) -> tuple[CsvJournal | ParquetJournal, set[str], BatchReport]:
    """The output's journal, the images already in it, and the report so far (one walk that
    counts the images: the progress bar's total; the folder is never listed whole)."""
    journal = open_journal(output)
    done = _as_relative_paths(journal.done(), Path(input_dir))
    report = BatchReport(total=0, skipped=0, predicted=0, errors=0)
    for name, _ in walk(input_dir, report.left_out):
        report.total += 1
        report.skipped += name in done
    return journal, done, report


def run_local(
    predictor: BundlePredictor,
    input_dir: str | os.PathLike,
    output: str | os.PathLike,
    *,
    chunk_size: int | None = None,
    progress: Callable[[int, int], None] | None = None,
    stop_after: int | None = None,
) -> BatchReport:
    """Predict every image under ``input_dir`` not yet in ``output``; resumable.

    ``progress(done, todo)`` follows the images of this run. ``stop_after`` (tests and demos)
    ends the run after that many images, as an interruption would.
    """
    journal, done, report = start_run(input_dir, output)
    chunk_size = chunk_size or predictor.embedder.batch_size * DEFAULT_CHUNK_BATCHES
    pending = ((name, path) for name, path in walk(input_dir) if name not in done)
    for chunk in _chunks(pending, chunk_size):
        rows = predictor.predict([str(path) for _, path in chunk], [name for name, _ in chunk])
        journal.append(rows)
        report.add(rows)
        if progress is not None:
            progress(report.predicted, report.todo)
        if stop_after is not None and report.predicted >= stop_after:
            return report
    journal.finish()
    return report


def _as_relative_paths(done: set[str], root: Path) -> set[str]:
    """``done`` with the rows of earlier versions, which held the path as walked (absolute, or
    relative to the folder the command ran in), as paths relative to ``root``.

    A relative row is taken for an old one only when it names a file under ``root`` from this
    folder and none from ``root``: a wrong guess predicts an image again, never skips one.
    """
    root = Path(os.path.abspath(root))
    relative = set()
    for path in done:
        absolute = Path(os.path.abspath(path))
        if absolute.is_relative_to(root) and (
            os.path.isabs(path) or not os.path.lexists(root / path)
        ):
            path = relative_path(absolute, root)
        relative.add(path)
    return relative


def _chunks(items: Iterable[T], size: int) -> Iterator[list[T]]:
    chunk: list[T] = []
    for item in items:
        chunk.append(item)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def _as_is(value: T) -> T:
    return value


def _csv_number(value: object) -> object:
    return "" if isinstance(value, float) and np.isnan(value) else value


def _other_columns(columns: Sequence[str]) -> str:
    shown = ", ".join(columns[:8]) + (", ..." if len(columns) > 8 else "")
    return f"its columns are {shown or 'none'}, not {', '.join(COLUMNS)}"


def _not_a_results_file(path: Path, found: str) -> UnusableInputError:
    """The refusal of an output file that holds something else: it is left untouched."""
    return UnusableInputError(
        f"'{path}' is not a results file of batch-predict ({found}), so it was left as it is. "
        "Give --output a new file name, or move that file away."
    )


def _drop_partial_last_line(path: Path) -> None:
    """Cut the file after its last newline: a row half-written when a run was killed."""
    with path.open("rb+") as file:
        file.seek(0, os.SEEK_END)
        size = file.tell()
        if size == 0:
            return
        step = min(size, 1 << 16)
        file.seek(size - step)
        tail = file.read(step)
        if tail.endswith(b"\n"):
            return
        cut = tail.rfind(b"\n")
        file.truncate(size - step + cut + 1 if cut >= 0 else 0)
