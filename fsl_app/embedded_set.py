"""Pictures as embeddings: the user's examples and the pictures still to sort, in one type.

Everything that classifies starts from an :class:`EmbeddedSet`, whether the pictures come from a
project in the store (the app) or from folders (the command line): one fit, one prediction
record, one readiness check downstream. Embeddings come through the embedder's cache by the
SHA-256 of each picture's bytes, so building the set again after a label changes embeds nothing.
"""

from __future__ import annotations

import dataclasses
import functools
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from fsl_app.datasets import ImageFolder, scan_image_folder
from fsl_app.embeddings import Embedder, ImageSource, ProgressCallback
from fsl_app.errors import UnusableInputError
from fsl_app.files import LeftOut, iter_image_files
from fsl_app.plural import counted
from fsl_app.project.store import ProjectImage, Store, StoreError

if TYPE_CHECKING:
    from fsl_app.stage_cache import StageEmbedder

# Given a stage ("examples" or "images"), a progress callback for it, or None.
ProgressFactory = Callable[[str], ProgressCallback | None]

# A class with fewer examples than this gets a hint to add more: calibration needs 3 per class.
FEW_EXAMPLES = 3


@dataclass(frozen=True)
class Unreadable:
    """A picture left out, and why, in words for the person who gave it."""

    name: str
    reason: str
    labeled: bool  # it was meant as an example (else as a picture to sort)


@dataclass(frozen=True)
class EmbeddedSet:
    """Labeled examples and unlabeled pictures, one embedding row each, in the order given.

    Row i is the picture ``ids[i]`` (the SHA-256 of its bytes) named ``names[i]`` (a file path
    or an upload's name), of class ``labels[i]`` or unlabeled (None), with embedding
    ``embeddings[i]`` of shape (dim,). ``classes`` lists every class the user defined, in their
    order, also those without a usable example yet; ``unreadable`` the pictures left out;
    ``backbone`` the name of the image model that made the embeddings (learners with
    meta-learned checkpoints look theirs up by it); ``left_out`` the files in the folders
    given that are not images, counted rather than reported one by one;
    ``none_of_these`` the ids of unlabeled pictures the user marked "none of these classes"
    (they stay pictures to sort, shown as marked, and teach "none of these" what is foreign);
    ``stage`` (n, C*H*W), None unless asked for (:func:`with_last_stage`), each picture's
    activations entering the image model's last stage, for the learner that adapts that stage
    (``maml``; :func:`fsl_app.learners.needs_last_stage`).
    """

    ids: list[str]
    names: list[str]
    labels: list[str | None]
    embeddings: np.ndarray  # (n, dim) float32
    classes: list[str]
    unreadable: list[Unreadable] = field(default_factory=list)
    backbone: str | None = None
    left_out: LeftOut = field(default_factory=LeftOut)
    none_of_these: frozenset[str] = frozenset()
    stage: np.ndarray | None = field(default=None, repr=False)

    @property
    def embedding_dim(self) -> int:
        return int(self.embeddings.shape[1])

    @functools.cached_property
    def inputs(self) -> np.ndarray:
        """What a classifier is fitted on and predicts from, (n, dim [+ C*H*W]) float32: the
        embeddings, followed by the last-stage activations when the set carries them (joined
        once per set: a page asks for it once per card)."""
        if self.stage is None:
            return self.embeddings
        return np.concatenate([self.embeddings, self.stage.astype(np.float32)], axis=1)

    @property
    def labeled(self) -> np.ndarray:
        """Which rows are examples, of shape (n,)."""
        return np.array([label is not None for label in self.labels], dtype=bool)

    def examples(self) -> tuple[np.ndarray, list[str], list[str]]:
        """Embeddings (n_examples, dim), labels and ids of the labeled rows."""
        rows = np.flatnonzero(self.labeled)
        return (
            self.embeddings[rows],
            [str(self.labels[i]) for i in rows],
            [self.ids[i] for i in rows],
        )

    def negatives(self) -> np.ndarray:
        """Embeddings of the pictures marked "none of these", (n_marked, dim), by id: the same
        marks give the same model wherever the set comes from."""
        return self._unlabeled_by_id(marked=True)

    def pool(self) -> np.ndarray:
        """Embeddings of the pictures still to sort that a semi-supervised learner may learn
        from, (n, dim), by id: not those marked "none of these" (they belong to no class), and
        in one order, so the same pictures give the same model wherever the set comes from."""
        return self._unlabeled_by_id(marked=False)

    def _unlabeled_by_id(self, *, marked: bool) -> np.ndarray:
        rows = sorted(
            (image_id, i)
            for i, (image_id, label) in enumerate(zip(self.ids, self.labels, strict=True))
            if label is None and (image_id in self.none_of_these) == marked
        )
        return self.embeddings[[i for _, i in rows]]

    @property
    def example_ids(self) -> list[str]:
        return [i for i, label in zip(self.ids, self.labels, strict=True) if label is not None]

    @property
    def unlabeled_ids(self) -> list[str]:
        return [i for i, label in zip(self.ids, self.labels, strict=True) if label is None]

    def rows(self, ids: Sequence[str]) -> np.ndarray:
        """Row of each of ``ids`` that is in the set (others are left out), in that order."""
        position = {image_id: i for i, image_id in enumerate(self.ids)}
        return np.array([position[i] for i in ids if i in position], dtype=int)

    def class_counts(self) -> dict[str, int]:
        """Usable examples per class, every class of the set included."""
        counts = dict.fromkeys(self.classes, 0)
        for label in self.labels:
            if label is not None:
                counts[label] = counts.get(label, 0) + 1
        return counts

    def readiness(self) -> list[str]:
        """Why no classifier can be fitted yet, as sentences to act on; empty when it can."""
        return readiness(self.class_counts())

    @property
    def waiting_classes(self) -> list[str]:
        """Classes the user made that have no usable example yet, in their order: the model
        leaves them out until they have one (see :func:`readiness`)."""
        return waiting_for_examples(self.class_counts())

    def in_class_order(self, names: Sequence[str]) -> list[str]:
        """``names`` in the order of the user's classes (:attr:`classes`), the one order every
        button, menu and bar shows them in; names of no class come last, alphabetically."""
        position = {name: i for i, name in enumerate(self.classes)}
        return sorted(names, key=lambda n: (position.get(n, len(position)), n.casefold(), n))


def readiness(class_counts: dict[str, int]) -> list[str]:
    """Why the classes cannot be told apart yet, as sentences to act on; empty when they can.

    ``class_counts`` maps every class the user defined to its number of usable examples. Two
    classes with examples are enough: a class still without one waits
    (:func:`waiting_for_examples`) and the model answers among the others meanwhile, so adding
    a class never takes the predictions away.
    """
    if len(class_counts) < 2:
        return ["Add at least two classes: the app tells classes apart, so it needs two or more."]
    if len(class_counts) - len(waiting_for_examples(class_counts)) < 2:
        return [f"Add example images to: {', '.join(waiting_for_examples(class_counts))}."]
    return []


def waiting_for_examples(class_counts: dict[str, int]) -> list[str]:
    """The classes with no usable example yet, in the order given."""
    return [name for name, count in class_counts.items() if count == 0]


def waiting_note(class_counts: dict[str, int]) -> str | None:
    """What a model fitted while some classes wait for examples leaves out, in one sentence
    (None when no class waits)."""
    waiting = waiting_for_examples(class_counts)
    if not waiting:
        return None
    named = ", ".join(f"'{name}'" for name in waiting)
    covered = ", ".join(f"'{name}'" for name, count in class_counts.items() if count > 0)
    verb = "is" if len(waiting) == 1 else "are"
    return (
        f"{named} {verb} waiting for examples, so the model leaves "
        f"{'it' if len(waiting) == 1 else 'them'} out for now and answers among {covered}."
    )


def few_example_hints(class_counts: dict[str, int]) -> list[str]:
    """Gentle hints for classes with too few examples to be learned or calibrated well."""
    return [
        f"'{name}' has {counted(count, 'example')}: add a few more "
        f"(at least {FEW_EXAMPLES}, better 5 to 10) so the app learns it and knows how sure "
        "to be."
        for name, count in class_counts.items()
        if 0 < count < FEW_EXAMPLES
    ]


# --- From a project in the store -------------------------------------------------------------


def embed_project(
    store: Store,
    project_id: int,
    embedder: Embedder,
    *,
    images: Sequence[ProjectImage] | None = None,
    progress: ProgressCallback | None = None,
) -> EmbeddedSet:
    """A project's pictures: embeddings from the cache by hash, the rest through the model.

    ``images`` (default: all of the project's) may be passed when the caller already listed
    them. ``progress(done, total)`` is called only while pictures go through the model, so
    a rerun after a label reads no image file at all.
    """
    images = list(store.list_images(project_id) if images is None else images)
    vectors = embedder.cache.get_many(embedder.cache_key, [image.sha256 for image in images])
    missing = [image for image in images if image.sha256 not in vectors]
    unreadable: list[Unreadable] = []
    if missing:
        readable, sources = [], []
        for image in missing:
            try:
                sources.append(store.image_path(image.sha256))
                readable.append(image)
            except StoreError as err:  # a row whose file went away: report it, keep the rest
                unreadable.append(Unreadable(image.name, str(err), image.class_name is not None))
        embedded = embedder.embed(sources, progress=progress)
        vectors.update(zip(embedded.ids, embedded.embeddings, strict=True))
        unreadable.extend(
            Unreadable(readable[i].name, message, readable[i].class_name is not None)
            for i, message in embedded.errors
        )
    usable = [image for image in images if image.sha256 in vectors]
    return EmbeddedSet(
        ids=[image.sha256 for image in usable],
        names=[image.name for image in usable],
        labels=[image.class_name for image in usable],
        embeddings=_stack([vectors[image.sha256] for image in usable], embedder),
        classes=[c.name for c in store.list_classes(project_id)],
        unreadable=unreadable,
        backbone=embedder.backbone.name,
        none_of_these=frozenset(store.none_of_these(project_id)),
    )


# --- From uploads ----------------------------------------------------------------------------


def embed_uploads(
    embedder: Embedder,
    files: Sequence[tuple[str, bytes]],
    *,
    progress: ProgressCallback | None = None,
) -> EmbeddedSet:
    """Pictures given as (name, bytes), e.g. from a browser, as pictures to sort: kept nowhere,
    only embedded (through the embedder's cache). Unreadable ones are in ``unreadable``."""
    embedded = embedder.embed(
        [data for _, data in files], names=[n for n, _ in files], progress=progress
    )
    return EmbeddedSet(
        ids=embedded.ids,
        names=[files[i][0] for i in embedded.indices],
        labels=[None] * len(embedded.ids),
        embeddings=embedded.embeddings,
        classes=[],
        unreadable=[Unreadable(files[i][0], why, False) for i, why in embedded.errors],
        backbone=embedder.backbone.name,
    )


# --- From folders ----------------------------------------------------------------------------


def embed_folders(
    embedder: Embedder,
    examples: str | os.PathLike | None,
    images: str | os.PathLike | None = None,
    *,
    min_classes: int = 2,
    progress: ProgressFactory = lambda stage: None,
) -> EmbeddedSet:
    """Examples from a folder of class folders and, optionally, pictures to sort.

    ``examples`` holds one subfolder per class (images inside at any depth; files outside
    every class folder are reported as unreadable examples); ``images`` is one image or a
    folder of images at any depth, each an unlabeled row, after the examples. Folders that are
    missing, have fewer than ``min_classes`` classes or hold no file raise
    :class:`UnusableInputError`.
    """
    folder = scan_examples_folder(examples, min_classes=min_classes) if examples else None
    left_out = folder.left_out if folder else LeftOut()
    image_files = list_input_files(images, left_out=left_out) if images is not None else []
    sources: list[ImageSource] = [*(folder.paths if folder else []), *image_files]
    labels: list[str | None] = [*(folder.labels if folder else []), *[None] * len(image_files)]
    n_examples = len(folder.paths) if folder else 0
    unreadable = [
        Unreadable(str(path), "it is not inside a class folder", True)
        for path in (folder.loose_files if folder else [])
    ]
    kept: list[int] = []
    ids: list[str] = []
    parts = []
    for stage, span in (
        ("examples", range(n_examples)),
        ("images", range(n_examples, len(sources))),
    ):
        if not span:
            continue
        embedded = embedder.embed([sources[i] for i in span], progress=progress(stage))
        kept.extend(span[i] for i in embedded.indices)
        ids.extend(embedded.ids)
        parts.append(embedded.embeddings)
        unreadable.extend(
            Unreadable(str(sources[span[i]]), why, stage == "examples")
            for i, why in embedded.errors
        )
    return EmbeddedSet(
        ids=ids,
        names=[str(sources[i]) for i in kept],
        labels=[labels[i] for i in kept],
        embeddings=np.concatenate(parts) if parts else _stack([], embedder),
        classes=folder.classes if folder else [],
        unreadable=unreadable,
        backbone=embedder.backbone.name,
        left_out=left_out,
    )


def scan_examples_folder(examples: str | os.PathLike, *, min_classes: int = 2) -> ImageFolder:
    """The class folders under ``examples``, refused clearly when there are too few."""
    if not Path(examples).is_dir():
        raise UnusableInputError(
            f"The examples folder '{examples}' does not exist or is not a folder."
        )
    folder = scan_image_folder(examples)
    if len(folder.classes) < min_classes:
        found = f"only '{folder.classes[0]}'" if folder.classes else "none"
        raise UnusableInputError(
            f"The examples folder '{examples}' needs at least {min_classes} class folders "
            f"(one per class, images inside); found {found}."
        )
    return folder


def list_input_files(path: str | os.PathLike, *, left_out: LeftOut | None = None) -> list[Path]:
    """One image, or the images in a folder, refused clearly when there are none.

    Files in the folder that are not images are counted in ``left_out``.
    """
    left_out = left_out if left_out is not None else LeftOut()
    before = left_out.count
    try:
        files = list(iter_image_files(path, left_out))
    except FileNotFoundError:
        raise UnusableInputError(f"'{path}' does not exist.") from None
    if not files:
        raise UnusableInputError(
            f"The folder '{path}' has no images in it, only other files."
            if left_out.count > before
            else f"The folder '{path}' has no files in it."
        )
    return files


# --- The activations entering the last stage, for the learner that adapts it ---------------


def for_learner(
    embedded: EmbeddedSet,
    embedder: Embedder,
    learner: str,
    params: dict | None,
    source_of: Callable[[int], ImageSource],
    *,
    progress: ProgressCallback | None = None,
) -> EmbeddedSet:
    """``embedded`` as ``learner`` (with ``params``) takes it: with each picture's last-stage
    activations (:func:`with_last_stage`, beside the embedder's cache) when it adapts that
    stage, else unchanged. ``source_of(row)`` reads a picture not yet in that cache."""
    from fsl_app.learners import needs_last_stage

    if not needs_last_stage(learner, embedded.backbone, params):
        return embedded
    from fsl_app.stage_cache import stage_embedder_beside

    return with_last_stage(embedded, stage_embedder_beside(embedder), source_of, progress=progress)


def for_classifier(
    embedded: EmbeddedSet,
    embedder: Embedder,
    classifier,
    source_of: Callable[[int], ImageSource],
    *,
    progress: ProgressCallback | None = None,
) -> EmbeddedSet:
    """``embedded`` as a fitted (e.g. saved) ``classifier`` takes it: with the activations
    entering the last stage exactly when its rows carry them (``classifier.needs_last_stage``).
    """
    if not classifier.needs_last_stage:
        return embedded
    from fsl_app.stage_cache import stage_embedder_beside

    return with_last_stage(embedded, stage_embedder_beside(embedder), source_of, progress=progress)


def with_last_stage(
    embedded: EmbeddedSet,
    stage_embedder: StageEmbedder,
    source_of: Callable[[int], ImageSource],
    *,
    progress: ProgressCallback | None = None,
) -> EmbeddedSet:
    """``embedded`` carrying each picture's activations entering the last stage (``stage``).

    They come from the stage embedder's cache by id; the pictures not in it are read through
    ``source_of(row)`` (a path, bytes) and go through the image model up to that stage once,
    with ``progress(done, total)``. A picture that was embedded but cannot be read now raises
    :class:`UnusableInputError` naming it.
    """
    found = stage_embedder.cache.get_many(stage_embedder.cache_key, embedded.ids)
    missing = [i for i, image_id in enumerate(embedded.ids) if image_id not in found]
    if missing:
        computed = stage_embedder.embed([source_of(i) for i in missing], progress=progress)
        found.update(zip(computed.ids, computed.embeddings, strict=True))
        for i, why in computed.errors:
            raise UnusableInputError(
                f"'{embedded.names[missing[i]]}' could not be read again for fine-tuning: {why}"
            )
    stage = np.zeros((len(embedded.ids), stage_embedder.stage.input_numel), np.float16)
    for row, image_id in enumerate(embedded.ids):
        if image_id not in found:
            raise UnusableInputError(
                f"'{embedded.names[row]}' changed since it was added: add it again."
            )
        stage[row] = found[image_id]
    return dataclasses.replace(embedded, stage=stage)


def _stack(vectors: list[np.ndarray], embedder: Embedder) -> np.ndarray:
    if not vectors:
        return np.zeros((0, embedder.backbone.embedding_dim), np.float32)
    return np.stack(vectors).astype(np.float32, copy=False)
