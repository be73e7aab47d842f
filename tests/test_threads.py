"""Fits and predictions on embeddings run torch on one thread, and leave it as they found it."""

import threading

import numpy as np
import pytest
import torch
from toy_data import gaussian_blobs

from fsl_app.classifier import CalibratedClassifier
from fsl_app.learners import create_learner
from fsl_app.learners.soft_kmeans import SoftKMeans
from fsl_app.threads import single_threaded
from fsl_app.trust.open_set import OpenSetDetector


@pytest.fixture(autouse=True)
def two_threads():
    """Each test starts on two threads (as on a 2-core machine) and leaves torch as it was."""
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(threads)


def test_one_thread_inside_and_the_count_comes_back_when_nested():
    before = torch.get_num_threads()
    with single_threaded():
        assert torch.get_num_threads() == 1
        with single_threaded():
            assert torch.get_num_threads() == 1
        assert torch.get_num_threads() == 1
    assert torch.get_num_threads() == before


def test_overlapping_callers_in_two_threads_never_leave_torch_on_one_thread():
    """Streamlit serves sessions from threads: the first caller to leave must not give the
    other its threads back, and the last one must restore them."""
    first_inside, second_inside, first_left = (
        threading.Event(),
        threading.Event(),
        threading.Event(),
    )
    seen = {}

    def first():
        with single_threaded():
            first_inside.set()
            second_inside.wait(5)
        first_left.set()

    def second():
        first_inside.wait(5)
        with single_threaded():
            second_inside.set()
            first_left.wait(5)
            seen["after the first left"] = torch.get_num_threads()

    threads = [threading.Thread(target=first), threading.Thread(target=second)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)
    assert seen == {"after the first left": 1}
    assert torch.get_num_threads() == 2


def test_a_fit_and_a_prediction_run_on_one_thread(monkeypatch):
    counts = []
    steps = SoftKMeans._steps

    def counting(self, *args):
        counts.append(torch.get_num_threads())
        return steps(self, *args)

    monkeypatch.setattr(SoftKMeans, "_steps", counting)
    support, labels = gaussian_blobs(5, 3, 16, 0, 0.3)
    pool, _ = gaussian_blobs(4, 3, 16, 1, 0.3)
    model = CalibratedClassifier("soft_kmeans").fit(support, labels, unlabeled=pool)
    assert counts and set(counts) == {1}
    assert torch.get_num_threads() == 2
    probabilities = model.predict_proba(pool)
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, atol=1e-6)
    assert torch.get_num_threads() == 2


def test_the_setting_keeps_torchs_threads(monkeypatch):
    monkeypatch.setenv("FSL_APP_ONE_THREAD", "0")
    with single_threaded():
        assert torch.get_num_threads() == 2


def test_rows_that_carry_the_last_stages_activations_keep_torchs_threads(monkeypatch):
    """Adapting the image model's last stage is large work: only a classifier of embeddings
    does its own work (here, "none of these") on one thread."""
    counts = []
    fit = OpenSetDetector.fit

    def counting(self, *args, **kwargs):
        counts.append(torch.get_num_threads())
        return fit(self, *args, **kwargs)

    monkeypatch.setattr(OpenSetDetector, "fit", counting)
    support, labels = gaussian_blobs(5, 3, 48, 0, 0.3)
    CalibratedClassifier("protonet", embedding_dim=48).fit(support, labels)
    CalibratedClassifier("protonet", embedding_dim=16).fit(support, labels)
    assert counts == [1, 2]


def test_maml_adapting_the_last_stage_keeps_torchs_threads():
    """Only its head's work on embeddings is small; the stage's activations are not."""
    maml = create_learner("maml")
    assert not maml._small_work(torch.zeros(1, maml.stage_row_width()))
    assert maml._small_work(torch.zeros(1, 1280))
