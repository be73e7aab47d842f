"""Episodes are fixed by their seed; `evaluate` reports accuracy with an honest interval."""

from __future__ import annotations

import json

import numpy as np
import pytest

from fsl_app.cli import main
from fsl_app.evaluation.episodes import evaluate_learner, sample_episodes
from fsl_app.learners import create_learner

LABELS = np.repeat(["a", "b", "c", "d", "e", "f"], 20)


def test_episodes_have_the_asked_shape_and_disjoint_support_and_query():
    episodes = sample_episodes(LABELS, ways=5, shots=3, queries=4, n_episodes=50, seed=1)
    assert len(episodes) == 50
    for episode in episodes:
        assert len(set(episode.classes)) == 5
        assert len(episode.support) == 15 and len(episode.query) == 20
        assert not set(episode.support) & set(episode.query)
        assert set(LABELS[episode.support]) == set(episode.classes)
        for name in episode.classes:
            assert (LABELS[episode.support] == name).sum() == 3


def test_the_same_seed_gives_the_same_episodes():
    first = sample_episodes(LABELS, ways=3, shots=1, queries=2, n_episodes=10, seed=7)
    again = sample_episodes(LABELS, ways=3, shots=1, queries=2, n_episodes=10, seed=7)
    other = sample_episodes(LABELS, ways=3, shots=1, queries=2, n_episodes=10, seed=8)
    assert all(np.array_equal(a.support, b.support) for a, b in zip(first, again, strict=True))
    assert not all(np.array_equal(a.support, b.support) for a, b in zip(first, other, strict=True))


def test_too_few_images_per_class_is_explained():
    with pytest.raises(ValueError, match="only 0 classes"):
        sample_episodes(LABELS, ways=5, shots=10, queries=15, n_episodes=1)


def test_evaluation_of_a_perfectly_separable_task_is_exact():
    rng = np.random.default_rng(0)
    features = np.eye(6)[np.searchsorted(np.unique(LABELS), LABELS)] * 10
    features += 0.01 * rng.normal(size=features.shape)
    episodes = sample_episodes(LABELS, ways=4, shots=2, queries=3, n_episodes=20)
    result = evaluate_learner(
        lambda: create_learner("protonet"), features, LABELS, episodes, name="p"
    )
    assert result.accuracy == 1.0 and result.ci95 == 0.0
    assert (result.ways, result.shots, result.episodes) == (4, 2, 20)


@pytest.mark.slow
def test_evaluate_command_on_real_digits(capsys):
    args = ["evaluate", "--dataset", "digits", "--per-class", "25", "--ways", "5"]
    args += ["--shots", "1", "5", "--queries", "5", "--episodes", "40", "--format", "json"]
    assert main([*args, "--learner", "protonet"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [(r["learner"], r["shots"]) for r in rows] == [("protonet", 1), ("protonet", 5)]
    for row in rows:
        assert set(row) == {
            "learner", "ways", "shots", "accuracy", "ci95", "ece", "episodes",
            "seconds_per_episode",
        }  # fmt: skip
        assert 0.2 < row["accuracy"] <= 1 and 0 < row["ci95"] < 0.2
        assert row["episodes"] == 40 and row["ways"] == 5
    assert rows[1]["accuracy"] > rows[0]["accuracy"]  # five examples beat one
    assert main([*args, "--learner", "protonet"]) == 0
    assert json.loads(capsys.readouterr().out)[0]["accuracy"] == rows[0]["accuracy"]


@pytest.mark.slow
def test_evaluate_refuses_more_ways_than_classes(folders, capsys):
    code = main(["evaluate", "--data", str(folders.support), "--ways", "5", "--episodes", "5"])
    assert code == 2
    assert "5 classes" in capsys.readouterr().err


@pytest.mark.slow
def test_calibration_keeps_accuracy_and_lowers_calibration_error(capsys):
    """The temperature rescales confidences only: same answers, more honest confidence."""
    args = ["evaluate", "--dataset", "tuxpaint", "--ways", "5", "--shots", "5", "--queries", "5"]
    args += ["--episodes", "60", "--learner", "protonet", "--format", "json"]
    assert main([*args, "--no-calibration"]) == 0
    [raw] = json.loads(capsys.readouterr().out)
    assert main(args) == 0
    [calibrated] = json.loads(capsys.readouterr().out)
    assert calibrated["accuracy"] == raw["accuracy"]
    assert calibrated["ece"] < raw["ece"]


@pytest.mark.slow
def test_inductive_scoring_leaves_the_queries_out_of_a_semi_supervised_fit(capsys):
    """By default each episode's queries are the pictures still to sort, as in the app; with
    --inductive soft k-means is scored without them, as its own inductive self."""
    args = ["evaluate", "--dataset", "digits", "--per-class", "25", "--ways", "5", "--shots"]
    args += ["1", "--queries", "5", "--episodes", "30", "--no-calibration", "--format", "json"]
    results = {}
    for flags in ([], ["--inductive"]):
        assert main([*args, *flags, "--learner", "soft_kmeans", "protonet"]) == 0
        results[tuple(flags)] = {r["learner"]: r for r in json.loads(capsys.readouterr().out)}
    semi, inductive = results[()], results[("--inductive",)]
    for key in ("accuracy", "ece"):  # protonet ignores the pool
        assert semi["protonet"][key] == inductive["protonet"][key]
    assert semi["soft_kmeans"]["accuracy"] != inductive["soft_kmeans"]["accuracy"]
