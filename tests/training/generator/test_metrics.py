"""Ranking metrics against a case computed by hand, and the PMI/tuple positives of the alignment loss."""

from __future__ import annotations

import math
from collections import Counter

import numpy as np
import pytest

from training.evaluate.metrics import ranking_metrics, sampled_ranks, target_ranks
from training.evaluate.ranking import sample_negatives
from training.generator.cooccurrence import alignment_positives, pair_counts


def test_ranking_metrics_hand_computed() -> None:
    top = np.array(
        [[7, 3, 9, 1, 2, 4, 5, 6, 8, 0], [1, 2, 3, 4, 5, 6, 7, 8, 9, 10], [5, 6, 7, 8, 9, 1, 2, 3, 4, 0]]
    )
    ranks = target_ranks(top, np.array([9, 42, 0]))
    assert ranks.tolist() == [2, -1, 9]
    metrics = ranking_metrics(ranks, (5, 10))
    assert metrics["recall@5"] == pytest.approx(1 / 3)
    assert metrics["recall@10"] == pytest.approx(2 / 3)
    assert metrics["ndcg@5"] == pytest.approx((1 / math.log2(4)) / 3)  # rank 2 -> 1/log2(4) = 0.5
    assert metrics["ndcg@10"] == pytest.approx((0.5 + 1 / math.log2(11)) / 3)


def test_sampled_rank_counts_strictly_better_negatives() -> None:
    ranks = sampled_ranks(np.array([0.5, 2.0]), np.array([[0.9, 0.5, 0.1], [1.0, 1.5, 1.9]]))
    assert ranks.tolist() == [1, 0]
    assert ranking_metrics(ranks, (1,), recall_name="hr")["hr@1"] == pytest.approx(0.5)


def test_negatives_avoid_the_users_items_and_are_reproducible() -> None:
    sequences = [np.array([0, 1, 2]), np.array([5, 6])]
    first = sample_negatives(sequences, 20, 10, seed=7)
    assert first.shape == (2, 10)
    assert not set(first[0]) & {0, 1, 2} and not set(first[1]) & {5, 6}
    assert all(len(set(row)) == 10 for row in first)
    assert np.array_equal(first, sample_negatives(sequences, 20, 10, seed=7))


def test_alignment_positives_pmi_window_and_tuples() -> None:
    sequences = [np.array([0, 1, 2, 3, 4]), np.array([0, 1, 2]), np.array([4, 5])]
    codes = np.array([[0, 0], [0, 0], [1, 1], [2, 1], [3, 3], [4, 4]])
    found = alignment_positives(sequences, codes, window=3, min_count=2, top=3)
    # (0,1), (0,2), (1,2) co-occur twice within 3 positions; everything else once.
    assert set(found.neighbours[0][found.neighbours[0] >= 0]) == {1, 2}
    assert (found.neighbours[3] == -1).all() and (found.neighbours[5] == -1).all()
    assert ((found.weights[found.neighbours >= 0] >= 0.3) & (found.weights[found.neighbours >= 0] <= 1)).all()
    assert found.tuple_ids[0] == found.tuple_ids[1] and found.tuple_ids[2] != found.tuple_ids[3]


def test_pair_counts_are_the_sorted_counts_of_every_pair_within_the_window() -> None:
    rng = np.random.default_rng(1)
    sequences = [rng.integers(0, 30, rng.integers(1, 12)) for _ in range(60)]
    expected: Counter[tuple[int, int]] = Counter()
    for sequence in sequences:
        for a in range(len(sequence)):
            for b in range(a + 1, min(a + 4, len(sequence))):
                if sequence[a] != sequence[b]:
                    expected[int(sequence[a]), int(sequence[b])] += 1
                    expected[int(sequence[b]), int(sequence[a])] += 1
    i, j, counts = pair_counts(sequences, window=3)
    assert list(zip(i.tolist(), j.tolist(), strict=True)) == sorted(expected)  # (i, j) ascending
    assert counts.tolist() == [expected[pair] for pair in sorted(expected)]
    assert [a.size for a in pair_counts([np.array([4])], window=3)] == [0, 0, 0]
