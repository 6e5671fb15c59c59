"""Unique-ID assignment and the ID metrics, on hand-made code tables."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from training.errors import ConfigError, DataError
from training.tokenizer.ids import _ranks, assign_unique_ids
from training.tokenizer.metrics import (
    codebook_stats,
    collision_stats,
    prefix_tag_purity,
    tag_accuracy,
    text_probe_accuracy,
)

CODES = np.array([[1, 2], [1, 2], [0, 1], [1, 2], [3, 3]])
TAGS = np.array([[1, 2], [1, 3], [2, 0], [1, 2], [2, 2]])


def test_disambiguation_orders_a_shared_tuple_by_distance_then_index() -> None:
    sids = assign_unique_ids(CODES, np.array([0.5, 0.1, 0.3, 0.1, 0.0]), codebook_size=4)
    assert sids.tolist() == [[1, 2, 2], [1, 2, 0], [0, 1, 0], [1, 2, 1], [3, 3, 0]]


@settings(max_examples=50, deadline=None)
@given(st.integers(1, 60), st.integers(1, 3), st.integers(0, 10_000))
def test_ids_are_unique_deterministic_and_keep_the_codes(n: int, levels: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    codes = rng.integers(0, 3, (n, levels))
    distances = rng.random(n).round(1)  # ties on purpose
    sids = assign_unique_ids(codes, distances, codebook_size=64)
    assert len(np.unique(sids, axis=0)) == n
    assert np.array_equal(sids[:, :levels], codes)
    assert np.array_equal(sids, assign_unique_ids(codes.copy(), distances.copy(), codebook_size=64))


def test_a_tuple_shared_by_more_items_than_codes_moves_the_farthest_to_free_tuples() -> None:
    codes = np.array([[1, 1]] * 5 + [[1, 0]])
    sids = assign_unique_ids(codes, np.array([0.0, 0.1, 0.2, 0.3, 0.4, 0.0]), codebook_size=2)
    # the two nearest keep [1, 1]; the third fills [1, 0] (same prefix), the rest go to the next free tuple
    assert sids.tolist() == [[1, 1, 0], [1, 1, 1], [1, 0, 1], [0, 0, 0], [0, 0, 1], [1, 0, 0]]
    preferred = assign_unique_ids(
        codes, np.arange(6.0), codebook_size=2, spill_order=lambda items: np.tile([0, 1], (len(items), 1))
    )
    assert len(np.unique(preferred, axis=0)) == 6


@settings(max_examples=50, deadline=None)
@given(st.integers(1, 3), st.integers(2, 4), st.integers(0, 10_000), st.data())
def test_disambiguation_never_fails_below_the_id_capacity(levels: int, k: int, seed: int, data) -> None:
    n = data.draw(st.integers(1, min(k ** (levels + 1), 80)))
    rng = np.random.default_rng(seed)
    codes = rng.integers(0, 2, (n, levels))  # crowded on purpose
    distances = rng.random(n).round(1)
    sids = assign_unique_ids(codes, distances, codebook_size=k)
    assert len(np.unique(sids, axis=0)) == n and sids.min() >= 0 and sids.max() < k
    assert np.array_equal(sids, assign_unique_ids(codes.copy(), distances.copy(), codebook_size=k))


def reference_ids(codes: np.ndarray, distances: np.ndarray, k: int, spill: np.ndarray | None) -> np.ndarray:
    """The resolution written plainly: every item that must leave a full prefix walks the code space
    from its own tuple to the first with room (quadratic where codes crowd into a few prefixes)."""
    codes, rank = codes.astype(np.int64).copy(), _ranks(codes, distances)
    moving = np.flatnonzero(rank >= k)
    moving = moving[np.lexsort((rank[moving], *codes[moving].T[::-1]))]
    occupancy = Counter(map(tuple, codes[rank < k].tolist()))
    space = [
        tuple(int(d) for d in np.unravel_index(v, (k,) * codes.shape[1])) for v in range(k ** codes.shape[1])
    ]
    for row, item in enumerate(moving.tolist()):
        start = tuple(codes[item].tolist())
        candidates = spill[row].tolist() if spill is not None else [(start[-1] + s) % k for s in range(1, k)]
        target = next((key for c in candidates if occupancy[key := (*start[:-1], c)] < k), None)
        if target is None:
            at = space.index(start)
            target = next(
                space[(at + s) % len(space)]
                for s in range(1, len(space))
                if occupancy[space[(at + s) % len(space)]] < k
            )
        codes[item], rank[item] = target, occupancy[target]
        occupancy[target] += 1
    return np.concatenate([codes, rank[:, None]], axis=1)


@settings(max_examples=60, deadline=None)
@given(st.integers(1, 3), st.integers(2, 4), st.integers(0, 10_000), st.booleans(), st.data())
def test_resolution_matches_the_plain_walk(levels: int, k: int, seed: int, spill: bool, data) -> None:
    """Crowded codes fill whole prefixes, so items cross runs of full tuples (the pointers' case)."""
    n = data.draw(st.integers(1, k ** (levels + 1)))
    rng = np.random.default_rng(seed)
    codes = np.minimum(rng.geometric(0.7, (n, levels)) - 1, k - 1)  # most items on the first codes
    distances = rng.random(n).round(1)
    order = rng.permuted(np.tile(np.arange(k), (n, 1)), axis=1) if spill else None
    sids = assign_unique_ids(codes, distances, k, (lambda items: order[items]) if order is not None else None)
    moving = np.flatnonzero(_ranks(codes, distances) >= k)
    moving = moving[np.lexsort((_ranks(codes, distances)[moving], *codes[moving].T[::-1]))]
    expected = reference_ids(codes, distances, k, order[moving] if order is not None else None)
    np.testing.assert_array_equal(sids, expected)
    assert len(np.unique(sids, axis=0)) == n


def test_more_items_than_ids_is_a_clear_error() -> None:
    with pytest.raises(ConfigError, match=r"9 items need more IDs than 2 codes \+ 1 disambiguation code"):
        assign_unique_ids(np.zeros((9, 2), dtype=np.int64), np.zeros(9), codebook_size=2)


def test_empty_catalogue_is_a_clear_error() -> None:
    with pytest.raises(DataError, match="empty catalogue"):
        assign_unique_ids(np.zeros((0, 3), dtype=np.int64), np.zeros(0), codebook_size=4)


def test_collision_and_codebook_metrics() -> None:
    stats = collision_stats(CODES)
    assert stats["collision_rate"] == pytest.approx(1 - 3 / 5)
    assert stats["max_items_per_id"] == 3
    assert stats["items_per_id_histogram"] == {"1": 2, "3": 1}
    books = codebook_stats(CODES, codebook_size=4)
    assert books["codebook_usage"] == [0.75, 0.75]
    p = np.array([3, 1, 1]) / 5
    assert books["codebook_perplexity"][0] == pytest.approx(np.exp(-(p * np.log(p)).sum()))


def test_tag_accuracy_and_purity_exclude_unknown() -> None:
    assert tag_accuracy(np.array([[1, 2], [2, 2], [2, 9]]), np.array([[1, 2], [1, 0], [2, 9]])) == [
        2 / 3,
        1.0,
    ]
    # level 1: prefix (1,2) holds tags 2,3,2 -> 2 of 3; (0,1) is unknown; (3,3) holds 2 -> 1 of 1
    assert prefix_tag_purity(CODES, TAGS) == [1.0, 0.75]


def test_text_probe_reads_tags_only_where_the_embedding_carries_them() -> None:
    rng = np.random.default_rng(0)
    tags = rng.integers(1, 4, size=(600, 2))  # classes 1..3 at both levels, none unknown
    informative = np.eye(4)[tags[:, 0]] + 0.05 * rng.normal(size=(600, 4))  # level 0 visible, level 1 not
    valid = np.zeros(600, dtype=bool)
    valid[::5] = True
    level0, level1 = text_probe_accuracy(informative, tags, valid)
    assert level0 > 0.95
    assert level1 < 0.6  # chance is 1/3
