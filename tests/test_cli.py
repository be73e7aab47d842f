"""`python -m fsl_app predict`: real photos in, right classes out; bad input never crashes."""

from __future__ import annotations

import csv
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from skimage import data as skimage_data
from sklearn.datasets import load_digits

from fsl_app.cli import main

pytestmark = pytest.mark.slow


def run_cli(capsys, *args) -> tuple[int, str, str]:
    code = main(["predict", *map(str, args)])
    out, err = capsys.readouterr()
    return code, out, err


def test_predicts_the_right_classes_of_real_photos(folders, capsys):
    code, out, _ = run_cli(
        capsys, "--support", folders.support, "--query", folders.query, "--format", "json"
    )
    assert code == 0
    rows = json.loads(out)
    assert len(rows) == 15
    correct = sum(row["prediction"] == folders.true_class(row["path"]) for row in rows)
    assert correct >= 13, rows
    assert sum(row["unknown"] for row in rows) <= 5, "most photos of the classes are known"
    for row in rows:
        assert set(row) == {"path", "prediction", "confidence", "unknown", "probabilities"}
        assert isinstance(row["unknown"], bool)
        assert set(row["probabilities"]) == {"bird", "flower", "fruit"}
        assert sum(row["probabilities"].values()) == pytest.approx(1.0)
        assert row["confidence"] == max(row["probabilities"].values())


def save_foreign_images(folder: Path) -> list[Path]:
    """A photo of a cameraman and a handwritten digit: like none of birds, flowers or fruit."""
    images = {
        "cameraman.png": skimage_data.camera(),
        "digit.png": (load_digits().images[5] * (255 / 16)).round().astype(np.uint8),
    }
    for name, pixels in images.items():
        Image.fromarray(pixels).save(folder / name)
    return [folder / name for name in images]


def test_an_image_unlike_every_class_is_unknown(folders, capsys):
    foreign = save_foreign_images(folders.query)
    code, out, _ = run_cli(
        capsys, "--support", folders.support, "--query", folders.query, "--format", "json"
    )
    assert code == 0
    rows = {row["path"]: row for row in json.loads(out)}
    assert all(rows[str(path)]["unknown"] for path in foreign)
    photos = [row for path, row in rows.items() if Path(path) not in foreign]
    assert sum(row["unknown"] for row in photos) <= 5
    assert all(rows[str(path)]["prediction"] in folders.classes for path in foreign)

    one = ["--support", folders.support, "--query", foreign[0]]
    code, out, _ = run_cli(capsys, *one)
    assert "none of these (closest: " in out
    code, out, _ = run_cli(capsys, *one, "--strictness", "0", "--format", "json")
    assert json.loads(out)[0]["unknown"] is False


def test_corrupt_files_are_reported_and_skipped(folders, capsys):
    good = next(folders.query.rglob("*.png"))
    (folders.query / "bird" / "cut.png").write_bytes(good.read_bytes()[:300])
    (folders.query / "notes.txt").write_text("not a picture")
    (folders.support / "fruit" / "empty.jpg").write_bytes(b"")
    code, out, err = run_cli(
        capsys, "--support", folders.support, "--query", folders.query, "--format", "json"
    )
    assert code == 0
    rows = {Path(row["path"]).name: row for row in json.loads(out)}
    assert len(rows) == 16, "a file that is not an image gets no row, as in batch-predict"
    assert "cut short" in rows["cut.png"]["error"] and "prediction" not in rows["cut.png"]
    assert "notes.txt" not in rows
    assert "left out 1 file that is not an image (e.g. notes.txt)" in err
    assert "cut.png" in err and "empty.jpg" in err
    assert "Traceback" not in err


def test_one_query_image_as_a_table(folders, capsys):
    query = next((folders.query / "flower").iterdir())
    code, out, _ = run_cli(capsys, "--support", folders.support, "--query", query)
    assert code == 0
    header, row = out.strip().splitlines()
    assert header.split() == ["path", "prediction", "confidence", "bird", "flower", "fruit"]
    assert row.split()[:2] == [str(query), "flower"]


def test_csv_has_one_row_per_query_with_probabilities(folders, capsys):
    code, out, _ = run_cli(
        capsys, "--support", folders.support, "--query", folders.query, "--format", "csv"
    )
    assert code == 0
    rows = list(csv.DictReader(io.StringIO(out)))
    assert len(rows) == 15
    assert all(row["prediction"] in folders.classes and not row["error"] for row in rows)
    assert all(row["unknown"] in ("true", "false") for row in rows)
    assert all(float(row["confidence"]) == float(row[row["prediction"]]) for row in rows)


def test_csv_names_that_look_like_formulas_are_not_run_by_a_spreadsheet(
    folders, capsys, monkeypatch
):
    """A class and a picture named like spreadsheet formulas are written as text."""
    (folders.support / "bird").rename(folders.support / "=HYPERLINK(1)")
    photo = next((folders.query / "flower").iterdir())
    photo.rename(folders.query / "@SUM(1).png")
    monkeypatch.chdir(folders.query)  # the path column holds the name as given
    code, out, _ = run_cli(
        capsys, "--support", folders.support, "--query", "@SUM(1).png", "--format", "csv"
    )
    assert code == 0
    header, row = csv.reader(io.StringIO(out))
    assert header == [
        "path",
        "prediction",
        "confidence",
        "unknown",
        "error",
        "'=HYPERLINK(1)",
        "flower",
        "fruit",
    ]
    assert row[0] == "'@SUM(1).png" and row[1] in ("'=HYPERLINK(1)", "flower", "fruit")


@pytest.mark.parametrize(
    ("make_support", "message"),
    [
        (lambda root: [(root / "bird").mkdir()], "at least 2 class folders"),
        (
            lambda root: [(root / "bird").mkdir(), (root / "cat").mkdir()],
            "Add example images to: bird, cat.",
        ),
    ],
)
def test_unusable_support_exits_2_with_a_clear_message(
    folders, tmp_path, capsys, make_support, message
):
    support = tmp_path / "only"
    support.mkdir()
    make_support(support)
    for folder in support.iterdir():
        (folder / "bad.jpg").write_text("nope")
    code, out, err = run_cli(capsys, "--support", support, "--query", folders.query)
    assert code == 2
    assert message in err and out == ""
    if "Add example" in message:  # and it says why the examples there did not count
        assert "skipped example" in err and "bad.jpg" in err


def test_no_readable_query_exits_2(folders, tmp_path, capsys):
    queries = tmp_path / "q"
    queries.mkdir()
    (queries / "a.jpg").write_bytes(b"")
    code, _, err = run_cli(capsys, "--support", folders.support, "--query", queries)
    assert code == 2 and "nothing to predict" in err


def test_missing_query_exits_2(folders, capsys):
    code, _, err = run_cli(capsys, "--support", folders.support, "--query", "/no/such/path")
    assert code == 2 and "does not exist" in err


def test_module_entry_point_in_a_new_process(folders, tmp_path):
    """The real command, as a user types it, twice on the same cache file."""
    command = [
        sys.executable,
        "-m",
        "fsl_app",
        "predict",
        "--support",
        str(folders.support),
        "--query",
        str(folders.query / "fruit"),
        "--format",
        "json",
        "--cache",
        str(tmp_path / "cache.sqlite"),
    ]
    for _ in range(2):
        done = subprocess.run(command, capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr
        assert [row["prediction"] for row in json.loads(done.stdout)].count("fruit") >= 4


def test_a_fully_cached_predict_builds_no_backbone_model(folders, tmp_path, capsys, monkeypatch):
    """Every embedding in the cache: no model is built and no weights are loaded."""
    args = ["--support", folders.support, "--query", folders.query, "--format", "json"]
    args += ["--cache", tmp_path / "cache.sqlite"]
    code, first, _ = run_cli(capsys, *args)
    assert code == 0

    def refuse(*args, **kwargs):
        raise AssertionError("the backbone's model was built for a fully cached run")

    monkeypatch.setattr("fsl_app.backbones._model_from_wheel", refuse)
    monkeypatch.setattr("timm.create_model", refuse)
    code, second, err = run_cli(capsys, *args)
    assert code == 0, err
    assert json.loads(second) == json.loads(first)


def test_help_documents_the_predict_command():
    done = subprocess.run(
        [sys.executable, "-m", "fsl_app", "predict", "--help"], capture_output=True, text=True
    )
    assert done.returncode == 0
    for option in ("--support", "--query", "--backbone", "--learner", "--format", "--device"):
        assert option in done.stdout
    assert "--strictness" in done.stdout and "none of these" in done.stdout


def test_a_file_name_that_is_not_utf8_is_printed_not_a_crash(folders, tmp_path):
    """A Latin-1 name from an old camera card: the report goes to a UTF-8 terminal or pipe,
    which cannot hold it raw (a real process, so stdout's encoding is the real one)."""
    images = tmp_path / "new"
    images.mkdir()
    photo = next(folders.query.rglob("*.png")).read_bytes()
    with open(os.fsencode(images) + b"/caf\xe9.png", "wb") as file:
        file.write(photo)
    for output in ("json", "csv", "table"):
        done = subprocess.run(
            [sys.executable, "-m", "fsl_app", "predict", "--examples", str(folders.support),
             "--images", str(images), "--format", output],
            capture_output=True, cwd=Path(__file__).resolve().parent.parent, timeout=600,
        )  # fmt: skip
        assert done.returncode == 0, done.stderr.decode(errors="replace")
        text = done.stdout.decode("utf-8")  # strict: all of it is UTF-8
        if output == "json":
            assert json.loads(text)[0]["path"].endswith("caf\\xe9.png")
        else:
            assert "caf\\xe9.png" in text
