"""Positives for H2Rec's code-guided alignment: PMI co-occurrence neighbours and shared code tuples.

Computed once from the *training* sequences (never validation/test targets) with numpy, so the loss only
has to gather rows during training.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["AlignmentPositives", "alignment_positives", "pair_counts"]


@dataclass
class AlignmentPositives:
    """Per item: up to ``top`` PMI neighbours (-1 = none), weights in [min_weight, 1], and a tuple id."""

    neighbours: np.ndarray  # (n_items, top) int64
    weights: np.ndarray  # (n_items, top) float32
    tuple_ids: np.ndarray  # (n_items,) int64: items with equal semantic code tuples share an id


def pair_counts(sequences: list[np.ndarray], window: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Symmetric counts of (i, j) pairs within ``window`` positions: returns (i, j, count)."""
    flat = np.concatenate(sequences) if sequences else np.zeros(0, np.int64)
    owner = np.repeat(np.arange(len(sequences)), [len(s) for s in sequences])
    firsts, seconds = [], []
    for offset in range(1, window + 1):
        same = owner[:-offset] == owner[offset:]
        a, b = flat[:-offset][same], flat[offset:][same]
        keep = a != b
        firsts += [a[keep], b[keep]]
        seconds += [b[keep], a[keep]]
    i = np.concatenate(firsts) if firsts else np.zeros(0, np.int64)
    j = np.concatenate(seconds) if seconds else np.zeros(0, np.int64)
    # One int64 key per pair, sorted as the (i, j) rows would be: a 1-D unique is several times
    # faster than a row-wise one on the tens of millions of pairs of a 10^6-item catalogue.
    width = int(flat.max(initial=0)) + 1
    keys, counts = np.unique(i.astype(np.int64) * width + j, return_counts=True)
    return keys // width, keys % width, counts


def alignment_positives(
    sequences: list[np.ndarray],
    codes: np.ndarray,
    *,
    window: int = 3,
    min_count: int = 2,
    top: int = 50,
    min_weight: float = 0.3,
) -> AlignmentPositives:
    """PMI neighbours within ±``window`` seen ≥ ``min_count`` times (top ``top``, positive PMI only).

    ``codes`` is the (n_items, L) semantic code table (without the disambiguation code): items with the
    same tuple are positives of each other, which is exactly what H2Rec's "code-guided" means.
    """
    n_items = codes.shape[0]
    neighbours = np.full((n_items, top), -1, np.int64)
    weights = np.zeros((n_items, top), np.float32)
    i, j, counts = pair_counts(sequences, window)
    keep = counts >= min_count
    i, j, counts = i[keep], j[keep], counts[keep].astype(np.float64)
    item_totals = np.bincount(i, weights=counts, minlength=n_items)
    pmi = np.log(counts * max(counts.sum(), 1.0) / np.maximum(item_totals[i] * item_totals[j], 1e-12))
    positive = pmi > 0
    i, j, pmi = i[positive], j[positive], pmi[positive]
    if len(i):
        order = np.lexsort((-pmi, i))  # by item, then PMI descending
        i, j, pmi = i[order], j[order], pmi[order]
        rank = np.arange(len(i)) - np.searchsorted(i, i, side="left")
        keep = rank < top
        i, j, pmi, rank = i[keep], j[keep], pmi[keep], rank[keep]
        _, first, group = np.unique(i, return_index=True, return_inverse=True)
        lo, hi = np.minimum.reduceat(pmi, first)[group], np.maximum.reduceat(pmi, first)[group]
        scaled = np.where(hi > lo, (pmi - lo) / np.maximum(hi - lo, 1e-12), 1.0)
        neighbours[i, rank] = j
        weights[i, rank] = (min_weight + (1.0 - min_weight) * scaled).astype(np.float32)
    _, tuple_ids = np.unique(codes, axis=0, return_inverse=True)
    return AlignmentPositives(neighbours, weights, tuple_ids.reshape(-1).astype(np.int64))
