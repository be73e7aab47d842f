"""Getting a server process ready in the background while the user is still on the home page.

A page's first visit in a fresh process used to spend most of its time importing scikit-learn
and scipy (seconds each on a busy 2-core CPU) and running code paths for the first time. The
app starts :func:`start` once its home page is drawn; pages that need those modules call
:func:`wait` first, so an import never runs in two threads at once (two threads importing one
package with circular imports can deadlock) and a page that comes early waits for what it
needs anyway, without paying for it twice.

UMAP's numba kernels are not compiled here: that takes half a minute of a core and of the
interpreter lock, which would slow every page in the meantime; the map uses it only on request
and says so.
"""

from __future__ import annotations

import logging
import threading

import numpy as np

_log = logging.getLogger(__name__)
_started = threading.Lock()
_thread: threading.Thread | None = None


def _warm_up() -> None:
    # Calibration, typical pictures to label next, the linear learner, the map's fast layout.
    import scipy.optimize  # noqa: F401
    import sklearn.cluster
    import sklearn.decomposition
    import sklearn.linear_model
    import sklearn.neighbors  # noqa: F401

    from fsl_app.active import rank
    from fsl_app.classifier import CalibratedClassifier
    from fsl_app.evaluation.held_out import evaluate_held_out
    from fsl_app.projection import map_coordinates

    rng = np.random.default_rng(0)
    features = rng.normal(size=(12, 16)).astype(np.float32)
    labels = [f"c{i % 3}" for i in range(12)]
    classifier = CalibratedClassifier().fit(features, labels)
    classifier.predict_calibrated(features)
    pool = rng.normal(size=(6, 16)).astype(np.float32)
    rank(support=features, labels=labels, pool=pool, k=2, model=classifier)
    evaluate_held_out(features, labels, [str(i) for i in range(12)])
    map_coordinates(features, "pca", 2)


def _run() -> None:
    try:
        _warm_up()
    except Exception:  # a warm-up must never take the app down: the page will do it itself
        _log.exception("Warming up failed; pages will import what they need themselves")


def start() -> None:
    """Start the warm-up once per process (later calls do nothing)."""
    global _thread
    with _started:
        if _thread is None:
            _thread = threading.Thread(target=_run, name="fsl_app-warmup", daemon=True)
            _thread.start()


def running() -> bool:
    return _thread is not None and _thread.is_alive()


def wait(timeout: float | None = None) -> None:
    """Return once the warm-up is over (at once when it never started or is done)."""
    if _thread is not None:
        _thread.join(timeout)
