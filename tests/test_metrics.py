"""The numbers reported about a model: calibration error, intervals, held-out folds."""

from __future__ import annotations

import numpy as np
import pytest

from fsl_app.evaluation.folds import deal_folds
from fsl_app.evaluation.metrics import (
    accuracy_interval,
    confidence_interval95,
    expected_calibration_error,
    negative_log_likelihood,
    reliability_bins,
    top_label,
)

# --- Expected calibration error ---------------------------------------------------------------


def confidences_and_hits(confidence, accuracy, n=20_000, seed=0):
    """Two-class probabilities whose top class has ``confidence`` and is right with ``accuracy``."""
    rng = np.random.default_rng(seed)
    confidence = np.broadcast_to(confidence, n)
    probabilities = np.stack([confidence, 1 - confidence], axis=1)
    targets = np.where(rng.random(n) < np.broadcast_to(accuracy, n), 0, 1)
    return probabilities, targets


def test_ece_of_perfectly_calibrated_predictions_is_near_zero():
    confidence = np.random.default_rng(1).uniform(0.5, 1.0, 20_000)
    probabilities, targets = confidences_and_hits(confidence, accuracy=confidence)
    assert expected_calibration_error(*top_label(probabilities, targets)) < 0.02


def test_ece_of_overconfident_predictions_is_the_gap():
    probabilities, targets = confidences_and_hits(0.99, accuracy=0.6)
    ece = expected_calibration_error(*top_label(probabilities, targets))
    assert ece == pytest.approx(0.39, abs=0.02)


def test_ece_is_the_weighted_gap_of_the_reliability_bins():
    confidence = np.array([0.0, 0.2, 0.25, 0.9, 0.95, 1.0])
    correct = np.array([False, True, False, True, True, False])
    bins = reliability_bins(confidence, correct, n_bins=4)
    # (0, 0.25] takes exactly 0 and 0.25; (0.75, 1] takes 1.0.
    assert [(b.low, b.high, b.count) for b in bins] == [(0.0, 0.25, 3), (0.75, 1.0, 3)]
    assert bins[1].confidence == pytest.approx(0.95) and bins[1].accuracy == pytest.approx(2 / 3)
    gap = sum(b.count / 6 * abs(b.accuracy - b.confidence) for b in bins)
    assert expected_calibration_error(confidence, correct, n_bins=4) == pytest.approx(gap)
    assert np.isnan(expected_calibration_error([], []))


def test_calibration_metrics_read_probabilities_through_top_label():
    probabilities = np.array([[0.7, 0.2, 0.1], [0.1, 0.3, 0.6], [0.5, 0.5, 0.0]])
    confidence, correct = top_label(probabilities, [0, 1, 0])
    assert confidence.tolist() == [0.7, 0.6, 0.5] and correct.tolist() == [True, False, True]
    assert negative_log_likelihood(probabilities, [0, 1, 0]) == pytest.approx(
        -np.mean(np.log([0.7, 0.3, 0.5]))
    )
    with pytest.raises(ValueError, match="top_label"):
        expected_calibration_error(probabilities, [0, 1, 0])


# --- Intervals --------------------------------------------------------------------------------


def test_confidence_interval_is_196_standard_errors():
    values = [0.5, 0.7, 0.6, 0.8]
    expected = 1.96 * np.std(values, ddof=1) / 2
    assert confidence_interval95(values) == pytest.approx(expected)


def test_wilson_interval_is_honest_for_small_counts():
    low, high = accuracy_interval(5, 5)
    assert high == pytest.approx(1.0) and 0.5 < low < 0.6  # 5 of 5 right is not proof of 100%
    low, high = accuracy_interval(50, 100)
    assert low == pytest.approx(0.404, abs=0.002) and high == pytest.approx(0.596, abs=0.002)


@pytest.mark.parametrize(("correct", "n"), [(0, 1), (1, 1), (0, 7), (3, 20), (17, 20), (199, 200)])
def test_wilson_interval_matches_scipy(correct, n):
    from scipy.stats import binomtest

    expected = binomtest(correct, n).proportion_ci(confidence_level=0.95, method="wilson")
    assert accuracy_interval(correct, n) == pytest.approx((expected.low, expected.high), abs=1e-9)


# --- Held-out folds ---------------------------------------------------------------------------


def test_folds_hold_out_only_classes_that_keep_an_example():
    assert deal_folds(["a", "a", "b"], min_class_size=2).tolist() == [0, 1, -1]
    folds = deal_folds(["a"] * 6 + ["b"] * 6, min_class_size=2, max_folds=5)
    assert folds.max() == 4 and (folds >= 0).all()


def test_folds_follow_the_callers_rules():
    labels = ["a"] * 7 + ["b"] * 2 + ["c"] + ["d"] * 4
    # Calibration holds out classes of three or more, shuffled, in at most max_folds refits.
    folds = deal_folds(labels, min_class_size=3, max_folds=5, seed=0)
    assert (folds[7:10] == -1).all() and sorted(set(folds[folds >= 0])) == [0, 1, 2, 3, 4]
    for members in (slice(0, 7), slice(10, 14)):
        assert len(set(folds[members])) > 1  # no fold takes a whole class
    assert np.array_equal(folds, deal_folds(labels, min_class_size=3, max_folds=5, seed=0))
    # Without a seed the examples are dealt in their order.
    assert deal_folds(labels, min_class_size=3, max_folds=5)[:7].tolist() == [0, 1, 2, 3, 4, 0, 1]
    assert (deal_folds(["a"], min_class_size=2) == -1).all()
