"""`batch-predict --engine ray`: a local Ray gives the local engine's rows, resumably."""

from __future__ import annotations

import csv
import logging
import os
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import ray
from conftest import make_folders

from fsl_app.cli import main
from fsl_app.deploy.batch import BundlePredictor, open_journal, run_local
from fsl_app.deploy.batch_ray import run_ray
from fsl_app.deploy.bundle import BundleError

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def job(tmp_path_factory, photos) -> tuple[Path, Path]:
    """A bundle of 3 classes × 5 real photos, and a folder of 15 other photos and a cut PNG."""
    root = tmp_path_factory.mktemp("ray")
    folders = make_folders(root, photos, ["bird", "flower", "fruit"], shots=5, queries=5)
    bundle = root / "model.fslbundle"
    export = ["export", "--support", str(folders.support), "--out", str(bundle), "--no-cache"]
    assert main(export) == 0
    data = photos["fish"][0].read_bytes()
    (folders.query / "cut.png").write_bytes(data[: len(data) // 3])
    return bundle, folders.query


@pytest.fixture(scope="module")
def local_rows(job, tmp_path_factory) -> list[dict[str, str]]:
    bundle, input_dir = job
    output = tmp_path_factory.mktemp("local") / "out.csv"
    report = run_local(BundlePredictor(bundle, batch_size=8), input_dir, output)
    assert (report.total, report.predicted, report.errors) == (16, 16, 1)
    return read_csv(output)


@pytest.fixture(scope="module")
def local_ray():
    """One local Ray of 2 CPUs for the module; run_ray uses it and leaves it running."""
    started = not ray.is_initialized()
    if started:
        ray.init(num_cpus=2, include_dashboard=False, logging_level=logging.WARNING)
    yield
    if started:
        ray.shutdown()


def read_csv(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as file:
        return list(csv.DictReader(file))


def assert_same_rows(rows: list[dict[str, str]], expected: list[dict[str, str]]) -> None:
    assert [r["path"] for r in rows] == [r["path"] for r in expected]
    for row, want in zip(rows, expected, strict=True):
        for column in ("prediction", "unknown", "error"):
            assert row[column] == want[column], (column, row, want)
        if want["error"]:
            assert row["confidence"] == want["confidence"] == ""
        else:
            # Other batch sizes and thread counts round differently in the backbone (~1e-8).
            assert float(row["confidence"]) == pytest.approx(float(want["confidence"]), abs=1e-6)


def test_the_cli_starts_a_local_ray_and_shuts_it_down(job, local_rows, tmp_path, capsys):
    bundle, input_dir = job
    was_running = ray.is_initialized()
    output = tmp_path / "out.csv"
    args = ["batch-predict", "--engine", "ray", "--actors", "1", "--batch-size", "8"]
    paths = ["--bundle", str(bundle), "--input", str(input_dir), "--output", str(output)]
    assert main(args + paths) == 0
    assert "16 images predicted (1 unreadable)" in capsys.readouterr().err
    assert_same_rows(read_csv(output), local_rows)
    assert ray.is_initialized() == was_running  # a Ray it started is gone again


def test_ray_gives_the_local_rows_and_a_rerun_adds_none(job, local_rows, tmp_path, local_ray):
    bundle, input_dir = job
    output = tmp_path / "out.csv"
    seen = []
    report = run_ray(
        bundle, input_dir, output, batch_size=3, actors=2, progress=lambda *a: seen.append(a)
    )
    assert (report.total, report.skipped, report.predicted, report.errors) == (16, 0, 16, 1)
    rows = read_csv(output)
    assert_same_rows(rows, local_rows)
    cut = next(r for r in rows if r["path"].endswith("cut.png"))
    assert cut["prediction"] == "" and "cut short" in cut["error"]
    assert seen[-1] == (16, 16) and len(seen) > 1  # rows saved batch by batch
    again = run_ray(bundle, input_dir, output, actors=2)
    assert (again.skipped, again.predicted) == (16, 0)
    assert read_csv(output) == rows
    assert ray.is_initialized()  # the caller's Ray is left running


def test_ray_finishes_a_run_the_local_engine_began(job, local_rows, tmp_path, local_ray):
    """Same journal, either engine: the Parquet output ends with every image once."""
    bundle, input_dir = job
    output = tmp_path / "out.parquet"
    first = [dict(r, confidence=float(r["confidence"] or "nan")) for r in local_rows[:6]]
    for row in first:
        row["unknown"] = {"True": True, "False": False}.get(row["unknown"])
    open_journal(output).append(first)  # as a local run killed after 6 images leaves it
    report = run_ray(bundle, input_dir, output, batch_size=4, actors=1)
    assert (report.skipped, report.predicted) == (6, 10)
    saved = [
        {key: "" if value is None else str(value) for key, value in row.items()}
        for row in pq.read_table(output).to_pylist()
    ]
    assert_same_rows(saved, local_rows)
    assert not Path(f"{output}.partial.csv").exists()


def test_a_bad_model_file_fails_before_ray_starts(job, tmp_path):
    _, input_dir = job
    not_a_model = tmp_path / "notes.fslbundle"
    not_a_model.write_text("not a model")
    was_running = ray.is_initialized()
    with pytest.raises(BundleError, match="not a model file"):
        run_ray(not_a_model, input_dir, tmp_path / "out.csv")
    assert ray.is_initialized() == was_running and not (tmp_path / "out.csv").exists()


def test_ray_reads_file_names_that_are_not_utf8(job, photos, tmp_path, local_ray):
    bundle, _ = job
    root = tmp_path / "card"
    root.mkdir()
    data = photos["bird"][0].read_bytes()
    for name, content in [(b"caf\xe9.png", data), (b"\xc9t\xe9.png", data[:300])]:
        with open(os.fsencode(root) + b"/" + name, "wb") as file:
            file.write(content)
    output = tmp_path / "out.parquet"
    report = run_ray(bundle, root, output, batch_size=2, actors=1)
    assert (report.predicted, report.errors) == (2, 1)
    rows = pq.read_table(output).to_pylist()
    assert [r["path"] for r in rows] == ["caf\\xe9.png", "\\xc9t\\xe9.png"]
    assert rows[0]["prediction"] and "is not a readable image" in rows[1]["error"]
    assert run_ray(bundle, root, output, actors=1).skipped == 2
