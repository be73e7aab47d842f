"""Torch on one thread for small work: fits and predictions on embeddings.

The tensors of a fit on embeddings are small (a few dozen examples, at most 500 pictures to
sort), so torch's intra-op threads cost more in hand-offs than they gain; and when another
process is busy on one of the cores, every hand-off waits for it. On a 2-core machine with one
core busy, a refit after a label (fit, calibrate, predict and explain 500 pictures;
``benchmarks/refit.py``) took 0.54-0.73 s on two threads and 0.17-0.23 s on one (2.5 s on two
under heavier load); on a quiet machine both take 0.14-0.19 s. Meta-training ran 6-10x faster on
one. Large work keeps every thread: the backbone's forward pass, and adapting its last stage on
activations (MAML's last stage fitted 0.45 s on two threads, 0.84 s on one, quiet).

Torch's thread count belongs to the whole process, and the app serves several sessions from
threads: the count drops to one while any caller is inside and comes back when the last one
leaves, so overlapping callers never leave it at one. Set ``FSL_APP_ONE_THREAD=0`` to keep
torch's threads for this work too (``benchmarks/refit.py`` measures both).
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager

import torch

ENV = "FSL_APP_ONE_THREAD"
_lock = threading.Lock()
_inside = 0
_threads_outside = 1


@contextmanager
def single_threaded(on: bool = True) -> Iterator[None]:
    """Run torch on one thread inside, as before outside (reentrant, and safe across threads);
    ``on=False`` leaves torch as it is (large work inside a caller that decides per call)."""
    global _inside, _threads_outside
    if not on or os.environ.get(ENV) == "0":
        yield
        return
    with _lock:
        if _inside == 0:
            _threads_outside = torch.get_num_threads()
            torch.set_num_threads(1)
        _inside += 1
    try:
        yield
    finally:
        with _lock:
            _inside -= 1
            if _inside == 0:
                torch.set_num_threads(_threads_outside)
