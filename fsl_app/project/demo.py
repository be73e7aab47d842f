"""A demo project one click away, made of real photos installed offline (Tux Paint's stamps).

A few labeled examples per class and a pool of unlabeled photos of the same classes, so every
page has something to show at once: predictions, the map, suggestions and an evaluation.
"""

from __future__ import annotations

import os

import numpy as np

from fsl_app.datasets import TUXPAINT_STAMPS, tuxpaint_photos
from fsl_app.project.store import Project, Store, StoreError

DEMO_PROJECT_NAME = "Demo: birds, fish, flowers, fruit, vegetables"
DEMO_EXAMPLES_PER_CLASS = 3
DEMO_UNLABELED_PER_CLASS = 8


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
    photos = tuxpaint_photos(root=root)
    rng = np.random.default_rng(seed)
    project = store.create_project(_free_name(store, name))
    unlabeled = []
    for class_name, files in photos.items():
        chosen = [files[i] for i in rng.permutation(len(files))]
        examples = chosen[:examples_per_class]
        unlabeled.extend(chosen[examples_per_class : examples_per_class + unlabeled_per_class])
        store.add_class(project.id, class_name)
        store.add_images(project.id, [(p.name, p.read_bytes()) for p in examples], class_name)
    order = rng.permutation(len(unlabeled))
    store.add_images(project.id, [(unlabeled[i].name, unlabeled[i].read_bytes()) for i in order])
    return store.get_project(project.id)


def _free_name(store: Store, name: str) -> str:
    taken = {p.name.casefold() for p in store.list_projects()}
    candidate, number = name, 1
    while candidate.casefold() in taken:
        number += 1
        candidate = f"{name} ({number})"
        if number > 1000:
            raise StoreError("Too many demo projects; delete some first.")
    return candidate
