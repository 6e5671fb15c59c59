"""Unique semantic IDs: code tuples plus a deterministic disambiguation code.

The trie that the generator decodes through must map every leaf to exactly one item. Items that still
share a code tuple after training get a final code 0, 1, 2, ... ordered by the distance of their latent
to the shared quantised vector (nearest first; ties by item index), so the item that the codes describe
best keeps 0, and the same input always gives the same IDs.

One disambiguation code tells at most ``K`` items apart. When more than ``K`` items share a tuple, the
farthest of them (rank ``>= K``) *move*: each takes the first tuple with room among its own prefix with
another last code (in the order ``spill_order`` gives, nearest codeword first; else ``c+1, c+2, ...``),
and, if its whole prefix is full, the next tuples in code order. The ID keeps its length
(``levels + 1``), so the generator, the bundle and the service need no extra decoding step; the
tokenizer's ``metrics.json`` counts the moved items (``items_moved_by_disambiguation``). Assignment
fails only when the catalogue has more items than IDs (``K ** (levels + 1)``).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable

import numpy as np

from training.errors import ConfigError, DataError

__all__ = ["assign_unique_ids", "group_sizes", "id_capacity"]


def group_sizes(codes: np.ndarray) -> np.ndarray:
    """Number of items sharing each distinct code tuple: (n_distinct,) int64."""
    _, counts = np.unique(codes, axis=0, return_counts=True)
    return counts.astype(np.int64)


def id_capacity(levels: int, codebook_size: int) -> int:
    """How many distinct IDs ``levels`` codes plus one disambiguation code over ``K`` codes can hold."""
    return int(codebook_size) ** (levels + 1)


def _ranks(codes: np.ndarray, distances: np.ndarray) -> np.ndarray:
    """Rank (N,) of each item inside its tuple's group: by distance, then item index."""
    n = codes.shape[0]
    _, group = np.unique(codes, axis=0, return_inverse=True)  # (N,)
    group = group.reshape(-1)
    order = np.lexsort((np.arange(n), distances, group))  # by group, then distance, then index
    sorted_group = group[order]
    first_of_group = np.r_[0, np.flatnonzero(np.diff(sorted_group)) + 1]  # (n_distinct,)
    group_start = np.repeat(first_of_group, np.diff(np.r_[first_of_group, n]))  # (N,) in sorted order
    rank = np.empty(n, dtype=np.int64)
    rank[order] = np.arange(n) - group_start
    return rank


def assign_unique_ids(
    codes: np.ndarray,
    distances: np.ndarray,
    codebook_size: int,
    spill_order: Callable[[np.ndarray], np.ndarray] | None = None,
) -> np.ndarray:
    """(N, L) codes + (N,) latent-to-codeword distances -> (N, L+1) unique IDs, codes all ``< K``.

    ``spill_order(items)`` -> (len(items), K) int: for items that must move (see the module
    docstring), their last-level codes in order of preference. Raises ``ConfigError`` when the
    catalogue has more items than ``K ** (L + 1)`` IDs.
    """
    n, levels = codes.shape
    if n == 0:
        raise DataError("cannot assign IDs to an empty catalogue")
    if codes.min() < 0 or codes.max() >= codebook_size:
        raise DataError(f"codes must lie in [0, {codebook_size}), got [{codes.min()}, {codes.max()}]")
    if n > id_capacity(levels, codebook_size):
        raise ConfigError(
            f"{n:,} items need more IDs than {levels} codes + 1 disambiguation code over "
            f"{codebook_size} codes can hold ({id_capacity(levels, codebook_size):,}): raise "
            "model.codebook_size or model.levels"
        )
    codes = codes.astype(np.int64)
    rank = _ranks(codes, distances)
    moving = np.flatnonzero(rank >= codebook_size)
    if moving.size == 0:
        return np.concatenate([codes, rank[:, None]], axis=1)
    codes = codes.copy()
    moving = moving[np.lexsort((rank[moving], *codes[moving].T[::-1]))]  # by tuple, then rank
    staying = rank < codebook_size
    occupancy: Counter[tuple[int, ...]] = Counter(map(tuple, codes[staying].tolist()))
    full = _FullTuples(levels, codebook_size)
    for key, count in occupancy.items():
        if count == codebook_size:
            full.add(key)
    preferred = spill_order(moving) if spill_order is not None else None  # (n_moving, K)
    for row, item in enumerate(moving.tolist()):
        tuple_ = codes[item].tolist()
        target = None
        if not full.whole_prefix(tuple_[:-1]):  # else every candidate below would be full
            last = tuple_[-1]
            candidates = (
                preferred[row].tolist()
                if preferred is not None
                else [(last + step) % codebook_size for step in range(1, codebook_size)]
            )
            target = next(
                (key for c in candidates if occupancy[key := (*tuple_[:-1], int(c))] < codebook_size), None
            )
        if target is None:
            target = full.next_free(tuple_)
        codes[item] = target
        rank[item] = occupancy[target]
        occupancy[target] += 1
        if occupancy[target] == codebook_size:
            full.add(target)
    return np.concatenate([codes, rank[:, None]], axis=1)


class _FullTuples:
    """The code tuples holding ``k`` items, for the search of the next one with room.

    Tuples only ever fill up, so each full tuple points to a later tuple with every tuple in between
    full, and a search follows those pointers and shortens them (path compression) instead of walking
    a run of full tuples again for every item that must cross it: that walk made the resolution
    quadratic where a catalogue's codes crowd into a few prefixes (200,000 items on one prefix:
    40 s, twice as many items, six times as long).
    """

    def __init__(self, levels: int, k: int) -> None:
        self.levels, self.k, self.size = levels, k, k**levels
        self.after: dict[int, int] = {}  # full tuple (its rank in code order) -> a later one
        self.in_prefix: Counter[tuple[int, ...]] = Counter()  # full tuples under each prefix

    def add(self, key: tuple[int, ...]) -> None:
        value = self._value(key)
        self.after[value] = (value + 1) % self.size
        self.in_prefix[key[:-1]] += 1

    def whole_prefix(self, prefix: list[int]) -> bool:
        """Whether all ``k`` tuples under ``prefix`` are full."""
        return self.in_prefix[tuple(prefix)] == self.k

    def next_free(self, start: list[int]) -> tuple[int, ...]:
        """The first tuple after ``start`` in code order (wrapping) with fewer than ``k`` items."""
        value, crossed = (self._value(start) + 1) % self.size, []
        while value in self.after:
            crossed.append(value)
            if len(crossed) >= self.size:
                raise ConfigError("no free semantic ID left: raise model.codebook_size or model.levels")
            value = self.after[value]
        for full in crossed:
            self.after[full] = value
        digits = []
        for _ in range(self.levels):
            value, digit = divmod(value, self.k)
            digits.append(digit)
        return tuple(digits[::-1])

    def _value(self, key: tuple[int, ...] | list[int]) -> int:
        value = 0
        for code in key:
            value = value * self.k + code
        return value
