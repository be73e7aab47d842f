"""Errors that end a whole request with one sentence a person can act on.

Kept apart from the modules that raise them so that the command line can catch them without
importing torch.
"""

from __future__ import annotations


class NotFittedError(RuntimeError):
    """A learner or classifier was asked to predict before it saw any examples."""


class UnusableInputError(ValueError):
    """The input as a whole cannot be used; the message says what to fix.

    Problems with single files are reported one by one and the rest goes on; this is for input
    that leaves nothing to learn from or nothing to predict.
    """
