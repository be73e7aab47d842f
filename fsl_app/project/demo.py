"""A demo project one click away, made of real photos installed offline (Tux Paint's stamps).

A few labeled examples per class and a pool of unlabeled photos of the same classes, so every
page has something to show at once: predictions, the map, suggestions and an evaluation.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from fsl_app.datasets import DEMO_CLASSES, TUXPAINT_STAMPS, tuxpaint_photos
from fsl_app.project.store import Project, Store, StoreError

DEMO_PROJECT_NAME = "Demo: birds, flowers, fruit, road signs, tools"
DEMO_EXAMPLES_PER_CLASS = 4
DEMO_UNLABELED_PER_CLASS = 8
_BEING_MADE = " (being made)"


def create_demo_project(
    store: Store,
    *,
    name: str = DEMO_PROJECT_NAME,
    examples_per_class: int = DEMO_EXAMPLES_PER_CLASS,
    unlabeled_per_class: int = DEMO_UNLABELED_PER_CLASS,
    root: str | os.PathLike = TUXPAINT_STAMPS,
    seed: int = 0,
) -> Project:
    """A new project with a few labeled photos per class and an unlabeled pool of others.

    A name already taken gets a number ("… (2)"). FileNotFoundError, with the command that
    installs them, when the photos are not on this machine.
    """
    draw = draw_demo(
        tuxpaint_photos(DEMO_CLASSES, root=root),
        examples_per_class=examples_per_class,
        unlabeled_per_class=unlabeled_per_class,
        seed=seed,
    )
    final = _free_name(store, name)
    # Built under a working name and named the demo only when complete: a build cut short
    # (the app stopped, an error) never leaves a half-made demo that the button would open
    # from then on, and another tab never opens one while it is being made.
    project = store.create_project(_free_name(store, f"{final}{_BEING_MADE}"))
    try:
        for class_name, examples in draw.examples.items():
            store.add_class(project.id, class_name)
            store.add_images(project.id, [(p.name, p.read_bytes()) for p in examples], class_name)
        store.add_images(project.id, [(p.name, p.read_bytes()) for p in draw.unlabeled])
    except BaseException:
        store.discard_project(project.id)
        raise
    try:
        return store.rename_project(project.id, final)
    except StoreError:
        store.discard_project(project.id)
        taken = _named(store, final)
        if taken is not None:  # another tab finished the demo first: that one is the demo
            return taken
        raise


def open_demo_project(store: Store, **options) -> Project:
    """The demo project: the one already there, else the one deleted lately (restored), else a
    new one (:func:`create_demo_project`, with ``options``). A second click on "Open the demo
    project" opens the demo, with what the user did in it, instead of making "Demo (2)"."""
    name = options.get("name", DEMO_PROJECT_NAME)
    existing = _named(store, name)
    if existing is not None:
        return existing
    for item in store.list_trash():
        if item.kind == "project" and item.name.casefold() == name.casefold():
            store.restore(item)
            return store.get_project(item.id)
    return create_demo_project(store, **options)


@dataclass(frozen=True)
class DemoDraw:
    """The demo's photos: ``examples`` per class, and the ``unlabeled`` pool in a shuffled
    order, with ``truth`` the class each unlabeled photo was drawn from (same order)."""

    examples: dict[str, list[Path]]
    unlabeled: list[Path]
    truth: list[str]


def draw_demo(
    photos: dict[str, list[Path]],
    *,
    examples_per_class: int = DEMO_EXAMPLES_PER_CLASS,
    unlabeled_per_class: int = DEMO_UNLABELED_PER_CLASS,
    seed: int = 0,
) -> DemoDraw:
    """Which photos of each class are examples and which are left to sort, drawn with ``seed``:
    the demo project and its benchmark (``benchmarks/demo.py``) draw the same way."""
    rng = np.random.default_rng(seed)
    examples, pool = {}, []
    for class_name, files in photos.items():
        chosen = [files[i] for i in rng.permutation(len(files))]
        examples[class_name] = chosen[:examples_per_class]
        pool.extend(
            (p, class_name)
            for p in chosen[examples_per_class : examples_per_class + unlabeled_per_class]
        )
    order = rng.permutation(len(pool))
    return DemoDraw(examples, [pool[i][0] for i in order], [pool[i][1] for i in order])


def _named(store: Store, name: str) -> Project | None:
    """The project called ``name`` (names are unique regardless of case), if there is one."""
    return next((p for p in store.list_projects() if p.name.casefold() == name.casefold()), None)


def _free_name(store: Store, name: str) -> str:
    taken = {p.name.casefold() for p in store.list_projects()}
    candidate, number = name, 1
    while candidate.casefold() in taken:
        number += 1
        candidate = f"{name} ({number})"
        if number > 1000:
            raise StoreError("Too many demo projects; delete some first.")
    return candidate
