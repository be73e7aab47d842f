"""Batch prediction over a folder with a model bundle: rows, errors, resuming after a kill."""

from __future__ import annotations

import csv
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from fsl_app.cli import main
from fsl_app.deploy.batch import BundlePredictor, run_local
from fsl_app.errors import UnusableInputError
from fsl_app.files import iter_image_files

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def bundle(folders, tmp_path) -> Path:
    path = tmp_path / "model.fslbundle"
    assert main(["export", "--support", str(folders.support), "--out", str(path)]) == 0
    return path


@pytest.fixture
def input_dir(tmp_path, photos) -> Path:
    """30 real photos in nested folders, a truncated PNG and a text file."""
    root = tmp_path / "input"
    for i, name in enumerate(("bird", "flower", "fruit")):
        folder = root / f"part{i}" / "deeper"
        folder.mkdir(parents=True)
        for photo in photos[name][-10:]:
            shutil.copy(photo, folder / photo.name)
    data = photos["fish"][0].read_bytes()
    (root / "cut.png").write_bytes(data[: len(data) // 3])
    (root / "notes.txt").write_text("not an image")
    return root


def relative_names(input_dir: Path) -> list[str]:
    """The path column of every image under ``input_dir``: relative to it, ``/`` between."""
    return [path.relative_to(input_dir).as_posix() for path in iter_image_files(input_dir)]


def read_csv(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as file:
        return list(csv.DictReader(file))


def test_every_image_gets_one_row_and_unreadable_ones_an_error(bundle, input_dir, tmp_path):
    output = tmp_path / "out.csv"
    report = run_local(BundlePredictor(bundle), input_dir, output)
    rows = read_csv(output)
    assert report.total == len(rows) == 31 and report.errors == 1
    assert report.left_out.note() == "left out 1 file that is not an image (e.g. notes.txt)"
    assert [r["path"] for r in rows] == relative_names(input_dir)  # in the folder's order
    cut = next(r for r in rows if r["path"] == "cut.png")
    assert cut["prediction"] == "" and "cut short" in cut["error"]
    good = [r for r in rows if not r["error"]]
    folder_class = {"part0": "bird", "part1": "flower", "part2": "fruit"}
    right = sum(folder_class[r["path"].split("/")[0]] == r["prediction"] for r in good)
    assert right >= 24  # of 30 real photos, 3 classes
    assert all(0 < float(r["confidence"]) <= 1 and r["unknown"] in ("True", "False") for r in good)


def test_rows_match_the_bundle_used_directly(bundle, input_dir, tmp_path):
    predictor = BundlePredictor(bundle)
    paths = [str(p) for p in iter_image_files(input_dir)][:5]
    output = tmp_path / "out.parquet"
    run_local(predictor, input_dir, output)
    table = pq.read_table(output).to_pylist()
    by_path = {str(input_dir / row["path"]): row for row in table}
    direct = predictor.predict(paths)
    for row in direct:
        saved = by_path[row["path"]]
        assert saved["prediction"] == row["prediction"] and saved["unknown"] == row["unknown"]
        if row["error"]:
            assert saved["confidence"] is None
        else:
            # Batches of other sizes round differently in the backbone (~1e-8).
            assert saved["confidence"] == pytest.approx(row["confidence"], abs=1e-6)


def test_a_rerun_only_predicts_what_is_missing(bundle, input_dir, tmp_path):
    output = tmp_path / "out.parquet"
    predictor = BundlePredictor(bundle, batch_size=4)
    first = run_local(predictor, input_dir, output, chunk_size=8, stop_after=8)
    assert first.predicted == 8 and not output.exists()  # interrupted: still a journal
    second = run_local(predictor, input_dir, output, chunk_size=8)
    assert second.skipped == 8 and second.predicted == 31 - 8
    paths = [row["path"] for row in pq.read_table(output).to_pylist()]
    assert len(paths) == len(set(paths)) == 31
    # New images added later are predicted on the next run, the old rows kept.
    extra = input_dir / "later"
    extra.mkdir()
    shutil.copy(next(iter_image_files(input_dir / "part0")), extra / "copy.png")
    third = run_local(predictor, input_dir, output)
    assert (third.skipped, third.predicted) == (31, 1)
    assert len(pq.read_table(output)) == 32


def test_a_killed_run_finishes_on_rerun_with_every_image_exactly_once(bundle, input_dir, tmp_path):
    output = tmp_path / "out.csv"
    command = [
        sys.executable, "-m", "fsl_app", "batch-predict", "--bundle", str(bundle),
        "--input", str(input_dir), "--output", str(output), "--batch-size", "2",
    ]  # fmt: skip
    run = subprocess.Popen(command, cwd=ROOT, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and run.poll() is None:
        if output.exists() and len(output.read_bytes().splitlines()) > 1:
            break
        time.sleep(0.05)
    os.killpg(run.pid, signal.SIGKILL)
    run.wait()
    written = len(read_csv(output))
    assert 0 < written < 31, "the kill came after the run had finished; nothing was resumed"
    with output.open("a") as file:  # as if the kill had come in the middle of a row
        file.write("part9/half-a-row.png,bir")

    assert main(command[3:]) == 0
    rows = read_csv(output)
    paths = [r["path"] for r in rows]
    assert sorted(paths) == sorted(relative_names(input_dir))  # each exactly once
    assert not any("half-a-row" in p for p in paths)
    assert np.isfinite([float(r["confidence"]) for r in rows if not r["error"]]).all()


def test_the_output_must_be_csv_or_parquet(bundle, input_dir, tmp_path, capsys):
    code = main(
        ["batch-predict", "--bundle", str(bundle), "--input", str(input_dir), "--output",
         str(tmp_path / "out.xlsx")]
    )  # fmt: skip
    assert code == 2
    assert "must end in .csv or .parquet" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("name", "content", "found"),
    [
        ("theirs.csv", b"name,score\nkeep me,1\nand me,2", "its columns are name, score"),
        ("latin1.csv", b"caf\xe9;prix\n", "it is not a UTF-8 text file"),
        ("notes.parquet", b"my notes, not a table", "it is not a Parquet file"),
    ],
)
def test_another_programs_file_as_output_is_refused_and_left_as_it_is(
    bundle, input_dir, tmp_path, capsys, name, content, found
):
    output = tmp_path / name
    output.write_bytes(content)  # the CSV's last line has no newline: it is theirs, not cut short
    args = ["batch-predict", "--bundle", str(bundle), "--input", str(input_dir)]
    assert main([*args, "--output", str(output)]) == 2
    err = capsys.readouterr().err
    assert f"is not a results file of batch-predict ({found}" in err and "Traceback" not in err
    assert "Give --output a new file name" in err
    assert output.read_bytes() == content
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(name)) == [name]


def test_a_parquet_file_with_other_columns_is_refused_and_left_as_it_is(
    bundle, input_dir, tmp_path
):
    output = tmp_path / "theirs.parquet"
    pq.write_table(pa.table({"path": ["a.png"], "score": [0.5]}), output)
    before = output.read_bytes()
    with pytest.raises(UnusableInputError, match="its columns are path, score, not path, pred"):
        run_local(BundlePredictor(bundle), input_dir, output)
    assert output.read_bytes() == before and not Path(f"{output}.partial.csv").exists()


def test_a_rerun_with_the_folder_written_another_way_adds_no_row(
    bundle, input_dir, tmp_path, monkeypatch
):
    output = tmp_path / "out.csv"
    predictor = BundlePredictor(bundle, batch_size=4)
    monkeypatch.chdir(tmp_path)
    first = run_local(predictor, "input", output, chunk_size=8, stop_after=8)
    second = run_local(predictor, "./input/", output, chunk_size=8)
    assert (first.predicted, second.skipped, second.predicted) == (8, 8, 31 - 8)
    for spelling in (str(input_dir), f"{input_dir}/", "input/../input", "input/."):
        again = run_local(predictor, spelling, output)
        assert (again.skipped, again.predicted) == (31, 0), spelling
    assert sorted(r["path"] for r in read_csv(output)) == sorted(relative_names(input_dir))


@pytest.mark.parametrize("given", ["absolute", "relative"])
def test_an_output_of_the_old_version_is_resumed(bundle, input_dir, tmp_path, monkeypatch, given):
    """Older versions wrote the path as walked: absolute, or relative to where they ran."""
    monkeypatch.chdir(tmp_path)
    old_root = input_dir if given == "absolute" else Path("input")
    output = tmp_path / "out.csv"
    names = relative_names(input_dir)
    with output.open("w", newline="") as file:
        writer = csv.writer(file, lineterminator="\n")
        writer.writerow(["path", "prediction", "confidence", "unknown", "error"])
        writer.writerows([str(old_root / name), "bird", 0.9, False, ""] for name in names[:8])
    report = run_local(BundlePredictor(bundle, batch_size=4), "./input", output)
    assert (report.skipped, report.predicted) == (8, 31 - 8)
    assert [r["path"] for r in read_csv(output)][8:] == names[8:]


@pytest.mark.parametrize("suffix", [".csv", ".parquet"])
def test_file_names_that_are_not_utf8_get_a_row_and_are_done_on_rerun(
    bundle, photos, tmp_path, suffix
):
    """Latin-1 names from an old camera card: bytes that are no UTF-8, as Linux allows."""
    root = tmp_path / "card"
    (root / "trip").mkdir(parents=True)
    folder = os.fsencode(root)
    data = photos["bird"][0].read_bytes()
    for name, content in [(b"caf\xe9.png", data), (b"trip/\xc9t\xe9.png", data[:300])]:
        with open(folder + b"/" + name, "wb") as file:
            file.write(content)
    shutil.copy(photos["bird"][1], root / "plain.png")
    output = tmp_path / f"out{suffix}"
    predictor = BundlePredictor(bundle)
    report = run_local(predictor, root, output)
    assert (report.total, report.predicted, report.errors) == (3, 3, 1)
    csv_file = suffix == ".csv"
    if csv_file:
        output.read_bytes().decode("utf-8")  # strict: the whole file is valid UTF-8
    rows = read_csv(output) if csv_file else pq.read_table(output).to_pylist()
    assert [r["path"] for r in rows] == ["caf\\xe9.png", "plain.png", "trip/\\xc9t\\xe9.png"]
    assert rows[0]["prediction"] and not rows[0]["error"]
    assert "'\\xc9t\\xe9.png' is not a readable image" in rows[2]["error"]
    again = run_local(predictor, root, output)
    assert (again.skipped, again.predicted) == (3, 0)


def test_formula_names_are_text_in_the_csv_raw_in_parquet_and_done_on_rerun(
    folders, photos, tmp_path
):
    (folders.support / "bird").rename(folders.support / "=HYPERLINK(1)")
    model = tmp_path / "model.fslbundle"
    assert main(["export", "--support", str(folders.support), "--out", str(model)]) == 0
    root = tmp_path / "input"
    root.mkdir()
    names = ["'quoted.png", "+1.png", "=cmd.png", "@SUM(1).png"]
    for name, photo in zip(names, photos["bird"][-4:], strict=True):
        shutil.copy(photo, root / name)
    predictor = BundlePredictor(model)
    for suffix in (".csv", ".parquet"):
        output = tmp_path / f"out{suffix}"
        run_local(predictor, root, output)
        if suffix == ".csv":
            rows = read_csv(output)
            assert [r["path"] for r in rows] == ["'" + name for name in names]
            assert "'=HYPERLINK(1)" in {r["prediction"] for r in rows}
        else:  # not a spreadsheet format: the text as it is
            rows = pq.read_table(output).to_pylist()
            assert [r["path"] for r in rows] == names
            assert "=HYPERLINK(1)" in {r["prediction"] for r in rows}
        again = run_local(predictor, root, output)
        assert (again.skipped, again.predicted) == (4, 0)
