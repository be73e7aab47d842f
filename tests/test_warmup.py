"""The background warm-up: started once, waited for, and what it leaves imported."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from fsl_app import warmup

ROOT = Path(__file__).resolve().parent.parent


def test_the_warm_up_runs_once_and_leaves_what_pages_need_imported():
    warmup.start()
    first = warmup._thread
    warmup.start()  # a second start (another page, another session) starts nothing new
    assert warmup._thread is first
    warmup.wait()
    assert not warmup.running()
    for module in ("scipy.optimize", "sklearn.cluster", "sklearn.decomposition", "fsl_app.active"):
        assert module in sys.modules


def test_the_warm_up_itself_runs_clean_in_a_fresh_process():
    # start() swallows a failure (a warm-up must never take the app down), and another test may
    # already have imported these modules: so run the warm-up's body itself, in a new process.
    code = (
        "import sys\n"
        "from fsl_app import warmup\n"
        "needed = ('scipy.optimize', 'sklearn.cluster', 'sklearn.linear_model', 'fsl_app.active')\n"
        "assert not [m for m in needed if m in sys.modules], 'imported before the warm-up'\n"
        "warmup._warm_up()\n"
        "assert all(m in sys.modules for m in needed)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr
