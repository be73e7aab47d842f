"""Calibrated confidence and "none of these": toy arrays for rules, real embeddings for claims."""

from __future__ import annotations

from itertools import pairwise

import numpy as np
import pytest
from toy_data import gaussian_blobs

from fsl_app.classifier import CalibratedClassifier
from fsl_app.datasets import load_dataset
from fsl_app.embeddings import Embedder, EmbeddingCache
from fsl_app.evaluation.episodes import sample_episodes
from fsl_app.evaluation.metrics import (
    expected_calibration_error,
    negative_log_likelihood,
    top_label,
)
from fsl_app.learners import LEARNERS, NotFittedError, ProtoNet, create_learner
from fsl_app.learners.base import softmax
from fsl_app.trust.calibration import (
    MIN_CLASS_SIZE,
    calibrate_temperature,
    fit_temperature,
    held_out_predictions,
)
from fsl_app.trust.open_set import OpenSetDetector


def blobs(n_per_class=5, n_classes=3, dim=16, seed=0, spread=0.3):
    """Gaussian blobs around well-separated centres; a task any learner should solve."""
    return gaussian_blobs(n_per_class, n_classes, dim, seed, spread, centre_seed=99)


# --- Temperature -----------------------------------------------------------------------------


def test_temperature_undoes_logits_that_are_five_times_too_sharp():
    rng = np.random.default_rng(0)
    true_logits = rng.normal(scale=2.0, size=(3000, 4))
    targets = np.array([rng.choice(4, p=p) for p in softmax(true_logits)])
    sharp = 5 * true_logits
    temperature = fit_temperature(sharp, targets)
    assert temperature == pytest.approx(5.0, rel=0.1)
    calibrated, raw = softmax(sharp / temperature), softmax(sharp)
    assert negative_log_likelihood(calibrated, targets) < negative_log_likelihood(raw, targets)
    assert expected_calibration_error(*top_label(calibrated, targets)) < 0.03
    assert expected_calibration_error(*top_label(raw, targets)) > 0.15


def test_a_few_lucky_held_out_predictions_do_not_make_it_certain():
    """Four right answers would push the maximum-likelihood T to its bound; the prior does not."""
    logits = np.array([[2.0, 0.0], [0.0, 2.0], [1.5, 0.0], [0.0, 1.0]])
    targets = np.array([0, 1, 0, 1])
    assert fit_temperature(logits, targets, prior_weight=0) == pytest.approx(0.05, rel=0.01)
    assert fit_temperature(logits, targets) > 0.3


class CountingLearner:
    """Builds ProtoNets and counts the refits."""

    def __init__(self):
        self.fits = 0

    def __call__(self):
        self.fits += 1
        return ProtoNet()


def test_held_out_predictions_leave_one_out_on_small_supports():
    support, labels = blobs(n_per_class=3)
    make = CountingLearner()
    held = held_out_predictions(make, support, labels)
    logits, targets = held.logits, held.targets
    assert make.fits == 9 and logits.shape == (9, 3)
    assert sorted(targets) == sorted(np.searchsorted(np.unique(labels), labels))
    assert (logits.argmax(axis=1) == targets).all()


def test_held_out_predictions_use_at_most_max_folds_and_never_a_whole_class():
    support, labels = blobs(n_per_class=12, n_classes=3)
    small = np.concatenate([support[:36], support[:2] + 0.01])  # class_3: too few to hold out
    small_labels = np.concatenate([labels, ["class_3"] * 2])
    make = CountingLearner()
    held = held_out_predictions(make, small, small_labels, max_folds=5)
    logits, targets = held.logits, held.targets
    assert make.fits == 5
    assert logits.shape == (36, 4) and 3 not in targets


def test_one_shot_support_keeps_temperature_one_and_says_why():
    support, labels = blobs(n_per_class=1)
    temperature = calibrate_temperature(ProtoNet, support, labels)
    assert temperature.value == 1.0 and temperature.held_out == 0
    assert f"{MIN_CLASS_SIZE} examples" in temperature.reason


def test_one_shot_classifier_predicts_with_notes_instead_of_crashing():
    support, labels = blobs(n_per_class=1)
    query, truth = blobs(n_per_class=4, seed=1)
    model = CalibratedClassifier().fit(support, labels)
    predicted = model.predict_calibrated(query)
    assert model.temperature_ == 1.0 and np.isfinite(model.threshold_)
    assert len(model.notes) == 2 and "not calibrated" in model.notes[0]
    assert (predicted.prediction == truth).all()
    assert np.allclose(predicted.probabilities.sum(axis=1), 1.0)
    assert not predicted.unknown.any()


@pytest.mark.parametrize("name", sorted(LEARNERS))
def test_every_learner_calibrates_without_changing_its_ranking(name):
    support, labels = blobs(n_per_class=4)
    query, _ = blobs(n_per_class=3, seed=1, spread=1.0)
    model = CalibratedClassifier(name).fit(support, labels)
    predicted = model.predict_calibrated(query)
    # Only the learner's own notes (what a meta-trainable one started from): nothing about
    # calibration was too small.
    assert model.notes == model.learner_.notes_ and 0.05 <= model.temperature_ <= 20
    assert predicted.probabilities.shape == (9, 3)
    assert np.allclose(predicted.probabilities.sum(axis=1), 1.0)
    own = create_learner(name).fit(support, labels).predict(query)
    assert (predicted.prediction == own).all()
    assert (predicted.confidence == predicted.probabilities.max(axis=1)).all()


def test_predicting_before_fitting_says_what_to_do():
    with pytest.raises(NotFittedError, match="fit"):
        CalibratedClassifier().predict_calibrated(np.zeros((1, 4)))


# --- "None of these" -----------------------------------------------------------------------


def photo_like(n_per_class, seed=0):
    """Blobs on a large shared positive part, as pooled post-ReLU CNN embeddings are."""
    features, labels = blobs(n_per_class=n_per_class, seed=seed)
    return features + 4, labels


FAR_AWAY = -photo_like(4, seed=2)[0]


@pytest.mark.parametrize("shots", [1, 5])
def test_far_points_are_unknown_and_in_class_points_are_not(shots):
    support, labels = photo_like(shots)
    in_class, _ = photo_like(20, seed=1)
    detector = OpenSetDetector().fit(support, labels)
    assert detector.is_unknown(in_class).mean() <= 0.1
    assert detector.is_unknown(FAR_AWAY).all()
    assert (detector.distance(FAR_AWAY) > detector.distance(in_class).max()).all()


def test_one_shot_threshold_falls_back_and_says_so():
    assert OpenSetDetector().fit(*photo_like(5)).reason_ is None
    assert "rough rule" in OpenSetDetector().fit(*photo_like(1)).reason_


def test_strictness_moves_the_threshold_and_zero_turns_it_off():
    support, labels = photo_like(5)
    thresholds = [OpenSetDetector(s).fit(support, labels).threshold_ for s in (0.5, 1, 2)]
    assert thresholds[0] > thresholds[1] > thresholds[2]
    off = CalibratedClassifier(strictness=0).fit(support, labels)
    assert off.threshold_ == np.inf and not off.predict_calibrated(FAR_AWAY).unknown.any()
    assert "switched off" in off.notes[0]
    with pytest.raises(ValueError, match="strictness"):
        OpenSetDetector(-1).fit(support, labels)


# --- Real embeddings -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def real(backbone, photos):
    """Embeddings of the Tux Paint photos, and of foreign images (Fashion-MNIST, digits)."""
    embedder = Embedder(backbone, cache=EmbeddingCache(None))
    sources = [p for files in photos.values() for p in files]
    labels = np.array([c for c, files in photos.items() for _ in files])
    tux = embedder.embed(sources)
    foreign = [
        *load_dataset("fashion-mnist-test", per_class=3).sources,
        *load_dataset("digits", per_class=3).sources,
    ]
    return tux.embeddings, labels[tux.indices], embedder.embed(foreign).embeddings


@pytest.mark.slow
@pytest.mark.parametrize("scale", [0.005, 1.0], ids=["overconfident", "underconfident"])
def test_temperature_fitted_on_the_support_calibrates_held_out_queries(real, scale):
    """ProtoNet with far too sharp or too flat logits: the support alone puts it right."""
    features, labels, _ = real
    raw, calibrated, targets = [], [], []
    for episode in sample_episodes(labels, ways=3, shots=5, queries=5, n_episodes=10):
        model = CalibratedClassifier("protonet", temperature=scale)
        model.fit(features[episode.support], labels[episode.support])
        query = features[episode.query]
        raw.append(model.learner_.predict_proba(query))
        calibrated.append(model.predict_calibrated(query).probabilities)
        targets.append(np.searchsorted(model.classes_, labels[episode.query]))
    raw, calibrated, targets = map(np.concatenate, (raw, calibrated, targets))
    nll_raw = negative_log_likelihood(raw, targets)
    assert negative_log_likelihood(calibrated, targets) < 0.8 * nll_raw
    ece_raw = expected_calibration_error(*top_label(raw, targets))
    assert expected_calibration_error(*top_label(calibrated, targets)) < ece_raw


@pytest.mark.slow
@pytest.mark.parametrize("shots", [1, 5])
def test_foreign_images_are_flagged_far_more_often_than_photos_of_the_classes(real, shots):
    features, labels, foreign = real
    in_class, flagged_foreign = [], []
    for episode in sample_episodes(labels, ways=3, shots=shots, queries=5, n_episodes=10):
        model = CalibratedClassifier().fit(features[episode.support], labels[episode.support])
        in_class.append(model.predict_calibrated(features[episode.query]).unknown.mean())
        flagged_foreign.append(model.predict_calibrated(foreign).unknown.mean())
    assert np.mean(in_class) < 0.15
    assert np.mean(flagged_foreign) > max(0.3, 3 * np.mean(in_class))


@pytest.mark.slow
def test_pictures_marked_none_of_these_flag_their_kind_and_keep_the_classes(real):
    """Fashion-MNIST pictures given as negatives: other Fashion-MNIST pictures are flagged."""
    features, labels, foreign = real
    fashion, digits = foreign[:30], foreign[30:]
    episode = sample_episodes(labels, ways=3, shots=4, queries=5, n_episodes=1, seed=3)[0]
    support, support_labels = features[episode.support], labels[episode.support]
    plain = CalibratedClassifier().fit(support, support_labels)
    told = CalibratedClassifier().fit(support, support_labels, negatives=fashion[::3])
    held_out = np.delete(fashion, np.s_[::3], axis=0)
    before, after = (m.predict_calibrated(held_out).unknown for m in (plain, told))
    assert after.sum() > before.sum() and after[before].all()
    known = features[episode.query]
    assert told.predict_calibrated(known).unknown.mean() <= 0.15
    # Digits were not given: their answers depend on the threshold alone, as before.
    assert (told.open_set_.distance(digits) == plain.open_set_.distance(digits)).all()
    off = CalibratedClassifier(strictness=0).fit(support, support_labels, negatives=fashion)
    assert not off.predict_calibrated(held_out).unknown.any()


def test_a_photo_of_another_category_is_none_of_these_and_strictness_only_adds(tux_embeddings):
    """A project of birds, fish and flowers with 4 real photos each: photos of fruit are
    answered "none of these", its own photos are not, and a higher strictness flags every
    picture a lower one did, and more (with pictures marked none of these too)."""
    features, labels = tux_embeddings.features, tux_embeddings.labels
    rng = np.random.default_rng(0)
    support, known = [], []
    for name in ("bird", "fish", "flower"):
        rows = rng.permutation(np.flatnonzero(labels == name))
        support += list(rows[:4])
        known += list(rows[4:])
    fruit = features[labels == "fruit"]
    vegetables = features[labels == "vegetable"]
    plain = OpenSetDetector().fit(features[support], labels[support])
    assert plain.is_unknown(fruit).mean() >= 0.6
    assert plain.is_unknown(features[known]).mean() <= 0.05
    for negatives in (None, vegetables[:3]):
        flagged = [
            OpenSetDetector(strictness)
            .fit(features[support], labels[support], negatives=negatives)
            .is_unknown(np.concatenate([features[known], fruit, vegetables[3:]]))
            for strictness in (0.5, 1.0, 1.5, 2.0)
        ]
        for lower, higher in pairwise(flagged):
            assert (higher >= lower).all()
        assert flagged[-1].sum() > flagged[0].sum()
