"""Unique semantic IDs: code tuples plus a deterministic disambiguation code.

The trie that the generator decodes through must map every leaf to exactly one item. Items that still
share a code tuple after training get a final code 0, 1, 2, ... ordered by the distance of their latent
to the shared quantised vector (nearest first; ties by item index), so the item that the codes describe
best keeps 0, and the same input always gives the same IDs.
"""

from __future__ import annotations

import numpy as np

from training.errors import DataError

__all__ = ["assign_unique_ids", "group_sizes"]


def group_sizes(codes: np.ndarray) -> np.ndarray:
    """Number of items sharing each distinct code tuple: (n_distinct,) int64."""
    _, counts = np.unique(codes, axis=0, return_counts=True)
    return counts.astype(np.int64)


def assign_unique_ids(codes: np.ndarray, distances: np.ndarray, codebook_size: int) -> np.ndarray:
    """(N, L) codes + (N,) latent-to-codeword distances -> (N, L+1) unique IDs.

    Raises ``DataError`` when more than ``codebook_size`` items share one tuple, because the
    disambiguation code must stay a valid code (< K) for the generator's output layer.
    """
    n = codes.shape[0]
    if n == 0:
        raise DataError("cannot assign IDs to an empty catalogue")
    _, group = np.unique(codes, axis=0, return_inverse=True)  # (N,)
    group = group.reshape(-1)
    order = np.lexsort((np.arange(n), distances, group))  # by group, then distance, then index
    sorted_group = group[order]
    first_of_group = np.r_[0, np.flatnonzero(np.diff(sorted_group)) + 1]  # (n_distinct,)
    group_start = np.repeat(first_of_group, np.diff(np.r_[first_of_group, n]))  # (N,) in sorted order
    rank = np.empty(n, dtype=np.int64)
    rank[order] = np.arange(n) - group_start
    if rank.max() >= codebook_size:
        worst = codes[order[first_of_group[np.argmax(np.diff(np.r_[first_of_group, n]))]]]
        raise DataError(
            f"{int(rank.max()) + 1} items share the code tuple {worst.tolist()}, more than the "
            f"{codebook_size} disambiguation codes; train longer or raise model.codebook_size"
        )
    return np.concatenate([codes.astype(np.int64), rank[:, None]], axis=1)
