"""The background warm-up: started once, waited for, and what it leaves imported."""

from __future__ import annotations

import sys

from fsl_app import warmup


def test_the_warm_up_runs_once_and_leaves_what_pages_need_imported():
    warmup.start()
    first = warmup._thread
    warmup.start()  # a second start (another page, another session) starts nothing new
    assert warmup._thread is first
    warmup.wait()
    assert not warmup.running()
    for module in ("scipy.optimize", "sklearn.cluster", "sklearn.decomposition", "fsl_app.active"):
        assert module in sys.modules
