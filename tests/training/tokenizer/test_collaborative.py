"""Behaviour for the tokenizer's input: PPMI-SVD item vectors from training co-occurrence."""

from __future__ import annotations

import numpy as np

from training.tokenizer.collaborative import collaborative_input, ppmi_svd


def test_items_bought_together_point_the_same_way() -> None:
    rng = np.random.default_rng(0)
    # two groups of items, 0-9 and 10-19, each bought within its own group only; 20 never bought
    sequences = [rng.choice(10, size=6, replace=False) + 10 * (u % 2) for u in range(400)]
    vectors = ppmi_svd(sequences, n_items=21, dims=4)
    norms = np.linalg.norm(vectors, axis=1)
    assert np.allclose(norms[:20], 1.0, atol=1e-5) and norms[20] == 0.0
    cosine = vectors[:20] @ vectors[:20].T
    same = cosine[:10, :10][~np.eye(10, dtype=bool)].mean()
    other = cosine[:10, 10:].mean()
    assert same > 0.5 > other


def test_input_is_unit_text_beside_weighted_behaviour() -> None:
    text = np.array([[3.0, 4.0], [0.0, 2.0]], np.float32)
    behaviour = np.array([[1.0, 0.0, 0.0], [0.0, 0.0, 0.0]], np.float32)
    x = collaborative_input(text, behaviour, weight=1.5)
    np.testing.assert_allclose(x, [[0.6, 0.8, 1.5, 0, 0], [0, 1, 0, 0, 0]], atol=1e-6)
