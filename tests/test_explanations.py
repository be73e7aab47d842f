"""Explanations name the true nearest examples of the predicted class and the runner-up."""

from __future__ import annotations

import numpy as np

from fsl_app.learners import create_learner
from fsl_app.trust.explanations import cosine_distances, explain


def test_nearest_examples_are_the_true_nearest_neighbours(tux_embeddings):
    rng = np.random.default_rng(0)
    rows = rng.permutation(len(tux_embeddings.labels))
    support, queries = rows[:40], rows[40:60]
    x, y = tux_embeddings.features, tux_embeddings.labels
    learner = create_learner("protonet").fit(x[support], y[support])
    probabilities = learner.predict_proba(x[queries])
    explanations = explain(x[support], y[support], x[queries], probabilities, learner.classes_, k=3)
    for row, explanation in zip(queries, explanations, strict=True):
        same_class = [i for i in range(len(support)) if y[support][i] == explanation.prediction]
        brute = sorted(same_class, key=lambda i: 1 - np.dot(x[row], x[support][i])
                       / np.linalg.norm(x[row]) / np.linalg.norm(x[support][i]))[:3]  # fmt: skip
        assert [n.index for n in explanation.neighbours] == brute
        assert all(n.label == explanation.prediction for n in explanation.neighbours)
        distances = [n.distance for n in explanation.neighbours]
        assert distances == sorted(distances)
        ranked = learner.classes_[np.argsort(-probabilities[queries.tolist().index(row)])]
        assert explanation.prediction == ranked[0] and explanation.runner_up == ranked[1]


def test_text_reads_like_a_sentence():
    support = np.array([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0]])
    [explanation] = explain(support, ["cat", "cat", "fox"], np.array([[1.0, 0.05]]),
                            np.array([[0.8, 0.2]]), ["cat", "fox"], k=3)  # fmt: skip
    assert explanation.text == "Looks most like these 2 examples of 'cat'; next closest: 'fox'."


def test_cosine_distance_of_identical_directions_is_zero():
    d = cosine_distances(np.array([[2.0, 0.0]]), np.array([[5.0, 0.0], [0.0, 1.0]]))
    np.testing.assert_allclose(d, [[0.0, 1.0]], atol=1e-7)
