"""The app's cached classifier is refitted whenever what it was fitted on changes."""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from fsl_app.embedded_set import EmbeddedSet
from fsl_app.ui.resources import examples_key, fit_key, fitted_classifier


def test_marking_a_picture_none_of_these_refits_the_cached_classifier(tux_embeddings):
    """The marked pictures are the open-set detector's negatives: a classifier cached without
    them would keep answering as if nothing had been marked."""
    rows = np.r_[0:4, 36:40, 4:6]  # 4 birds, 4 fish as examples; two more birds to sort
    labels = [str(tux_embeddings.labels[i]) for i in rows[:8]] + [None, None]
    ids = [f"picture-{i}" for i in rows]
    embedded = EmbeddedSet(
        ids=ids,
        names=ids,
        labels=labels,
        embeddings=tux_embeddings.features[rows],
        classes=sorted(set(labels[:8])),
    )
    before = fitted_classifier(embedded, backbone_key="test", learner="protonet", strictness=1.0)
    marked = replace(embedded, none_of_these=frozenset({ids[-1]}))
    after = fitted_classifier(marked, backbone_key="test", learner="protonet", strictness=1.0)
    assert len(before.open_set_.negatives_) == 0
    assert len(after.open_set_.negatives_) == 1
    again = fitted_classifier(marked, backbone_key="test", learner="protonet", strictness=1.0)
    assert again is after  # nothing changed: the cached one


def test_pictures_to_sort_refit_the_classifier_but_not_the_judgment_of_the_examples():
    """A new picture to sort changes what a semi-supervised classifier learns from, so its
    key; the held-out accuracy and the label check judge the examples alone and keep theirs
    (they are the slow ones: a refit per example)."""
    embedded = EmbeddedSet(
        ids=["a", "b", "c"],
        names=["a", "b", "c"],
        labels=["bird", "fish", None],
        embeddings=np.eye(3, dtype=np.float32),
        classes=["bird", "fish"],
    )
    more = replace(
        embedded,
        ids=[*embedded.ids, "d"],
        names=[*embedded.names, "d"],
        labels=[*embedded.labels, None],
        embeddings=np.eye(4, 3, dtype=np.float32),
    )
    assert examples_key(more, "b") == examples_key(embedded, "b")
    assert fit_key(more, "b") != fit_key(embedded, "b")
    marked = replace(embedded, none_of_these=frozenset({"c"}))
    assert fit_key(marked, "b") != fit_key(embedded, "b")


def test_pictures_to_sort_refit_nothing_for_the_learner_that_fine_tunes_the_last_stage():
    """That learner learns from the examples alone (no pool): a new picture to sort must not
    cost seconds of fine-tuning, but a picture marked "none of these" still refits (the
    open-set detector learns from it), and the same examples without the activations are
    other rows (another key)."""
    plain = EmbeddedSet(
        ids=["a", "b", "c"],
        names=["a", "b", "c"],
        labels=["bird", "fish", None],
        embeddings=np.eye(3, dtype=np.float32),
        classes=["bird", "fish"],
    )
    wide = replace(plain, stage=np.ones((3, 4), np.float16))
    more = replace(
        wide,
        ids=[*wide.ids, "d"],
        names=[*wide.names, "d"],
        labels=[*wide.labels, None],
        embeddings=np.eye(4, 3, dtype=np.float32),
        stage=np.ones((4, 4), np.float16),
    )
    assert fit_key(more, "b") == fit_key(wide, "b")
    assert fit_key(replace(wide, none_of_these=frozenset({"c"})), "b") != fit_key(wide, "b")
    assert fit_key(wide, "b") != fit_key(plain, "b")
    assert examples_key(wide, "b") != examples_key(plain, "b")
