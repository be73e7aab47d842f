"""Files we ship or cache, damaged: a sentence and exit status 2, or a cache started afresh.

A cut-short checkpoint in pretrained/, a cut-short weight file for a timm model, and an
embedding cache that is not a database any more, each met through the command line with real
photos, as a user would meet them.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from fsl_app.cli import main
from fsl_app.embeddings import EmbeddingCache

PRETRAINED = Path(__file__).resolve().parent.parent / "pretrained"


def run_cli(capsys, *args) -> tuple[int, str, str]:
    code = main([*map(str, args)])
    out, err = capsys.readouterr()
    return code, out, err


def cut_short(source: Path, target: Path) -> Path:
    data = source.read_bytes()
    target.write_bytes(data[: len(data) // 2])
    return target


@pytest.fixture
def pretrained(tmp_path, monkeypatch) -> Path:
    """A pretrained/ folder of our own, holding copies of the shipped checkpoints."""
    folder = tmp_path / "pretrained"
    shutil.copytree(PRETRAINED, folder)
    monkeypatch.setenv("FSL_APP_PRETRAINED", str(folder))
    return folder


@pytest.mark.slow
def test_a_cut_short_checkpoint_is_a_sentence_and_exit_2(folders, pretrained, capsys):
    checkpoint = pretrained / "relation-tf_efficientnet_lite0.safetensors"
    cut_short(PRETRAINED / checkpoint.name, checkpoint)
    code, out, err = run_cli(
        capsys, "predict", "--examples", folders.support, "--images", folders.query,
        "--learner", "relation",
    )  # fmt: skip
    assert code == 2 and out == ""
    assert "relation checkpoint" in err and "is damaged or cut short" in err
    assert "reinstall fsl_app" in err and "Traceback" not in err


@pytest.mark.slow
def test_a_cut_short_weight_file_for_an_image_model_is_a_sentence(folders, pretrained, capsys):
    cut_short(
        pretrained / "relation-tf_efficientnet_lite0.safetensors",
        pretrained / "resnet18.safetensors",
    )
    code, out, err = run_cli(
        capsys, "predict", "--examples", folders.support, "--images", folders.query,
        "--backbone", "resnet18",
    )  # fmt: skip
    assert code == 2 and out == ""
    assert "'resnet18' is damaged or cut short" in err and "Traceback" not in err


def test_a_damaged_cache_is_moved_aside_and_started_afresh(tmp_path):
    path = tmp_path / "embeddings.sqlite"
    path.write_bytes(b"this was a database once" * 100)
    cache = EmbeddingCache(path)
    assert cache.notice and "damaged" in cache.notice and "started afresh" in cache.notice
    assert (tmp_path / "embeddings.sqlite.corrupt").exists()
    cache.put_many("backbone", {"a" * 64: np.ones(4, dtype=np.float32)})
    assert cache.count() == 1
    cache.close()
    reopened = EmbeddingCache(path)
    assert reopened.notice is None and reopened.count() == 1
    reopened.close()


@pytest.mark.slow
def test_predict_with_a_damaged_cache_says_so_once_and_answers(folders, tmp_path, capsys):
    cache = tmp_path / "cache.sqlite"
    cache.write_bytes(b"\x00garbage" * 512)
    code, out, err = run_cli(
        capsys, "predict", "--examples", folders.support, "--images", folders.query,
        "--cache", cache, "--format", "json",
    )  # fmt: skip
    assert code == 0 and out.startswith("[")
    assert err.count("The embedding cache") == 1 and "started afresh" in err
    code, _, err = run_cli(
        capsys, "predict", "--examples", folders.support, "--images", folders.query,
        "--cache", cache, "--format", "json",
    )  # fmt: skip
    assert code == 0 and "embedding cache" not in err
