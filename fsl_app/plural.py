"""Counts in words: "1 picture", "2 pictures", never "1 pictures"."""

from __future__ import annotations


def counted(n: int, singular: str, plural: str | None = None) -> str:
    """``n`` and the noun that goes with it ("1 picture", "0 pictures", "3 classes" with
    ``plural="classes"``); the plural is ``singular + "s"`` unless given."""
    return f"{n} {singular if n == 1 else plural or singular + 's'}"
