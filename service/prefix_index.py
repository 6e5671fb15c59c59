"""STATIC-style flattened trie over the catalogue's semantic IDs.

Why: constrained decoding must only ever emit IDs of real items, and on the serving path it has to
do so for a whole batch × beam at once. Following youtube/static-constraint-decoding, the trie is
flattened offline into arrays: each beam carries an integer *trie state* (its node id at the current
depth) and one gather per step yields, for every beam, the child node of each of the ``K`` codes
(``-1`` where no item continues the prefix). The first ``dense_levels`` depths are dense
``(n_nodes, K)`` tables (small: at most ``K`` rows at depth 1); deeper depths, where nodes are as
many as items, are stored as CSR. A node's children are a contiguous run of the CSR arrays, so the
children of a batch's states are read as ``(N, fan)`` lists, ``fan`` the most children one of those
states has (at most ``K``), a short row repeating its last child (writing the same child twice is
harmless): a handful of numpy calls per level, which is what a batch-1 request pays for masking, and
nothing held beside the CSR arrays (a table padded to the widest node of the catalogue would hold
``n_s × fan_s`` entries: gigabytes at 10^6 items, where some prefix is full).

Nodes of each depth are numbered in lexicographic order of their prefixes, so every node covers a
contiguous range of leaves in sorted-ID order: ``leaf_start[s][n] .. leaf_start[s][n + 1]``. That
makes "does any *allowed* item lie under this prefix?" one cumulative-sum lookup (see
``service.constraints``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from service.errors import BundleError

__all__ = ["PrefixIndex"]


@dataclass(frozen=True)
class PrefixIndex:
    """Flattened trie of ``n_items`` unique code tuples of length ``id_length`` over ``K`` codes."""

    codebook_size: int
    id_length: int
    dense: list[np.ndarray]  # depth s < dense_levels: int32 (n_s, K) child ids, -1 = none
    csr_indptr: list[np.ndarray]  # depth s >= dense_levels: int64 (n_s + 1,)
    csr_codes: list[np.ndarray]  # int64 (nnz_s,) codes, ascending within a row
    csr_child: list[np.ndarray]  # int32 (nnz_s,) child node ids at depth s + 1
    leaf_start: list[np.ndarray]  # depth s in 0..D: int64 (n_s + 1,) first sorted leaf of each node
    leaf_item: np.ndarray  # int64 (n_items,) item index of the j-th leaf in sorted-ID order
    penalties: list[np.ndarray] = field(init=False, repr=False, compare=False)
    # per dense depth: float32 (n_s, K), 0 where a child exists and -inf where none (never stored)

    def __post_init__(self) -> None:
        object.__setattr__(
            self, "penalties", [np.where(table >= 0, 0.0, -np.inf).astype(np.float32) for table in self.dense]
        )

    @property
    def dense_levels(self) -> int:
        return len(self.dense)

    @property
    def n_items(self) -> int:
        return int(self.leaf_item.shape[0])

    @classmethod
    def build(cls, sids: np.ndarray, codebook_size: int, dense_levels: int = 2) -> PrefixIndex:
        """Flatten the trie of ``sids`` (int64 (n_items, D), unique rows, codes in ``[0, K)``)."""
        if sids.ndim != 2 or sids.shape[0] == 0:
            raise BundleError(f"sids must be a non-empty (n_items, id_length) table, got shape {sids.shape}")
        if sids.min() < 0 or sids.max() >= codebook_size:
            raise BundleError(
                f"sids: codes must lie in [0, {codebook_size}), got [{sids.min()}, {sids.max()}]"
            )
        n_items, depth = sids.shape
        order = np.lexsort(sids.T[::-1])  # (n_items,) leaves in lexicographic ID order
        sorted_ids = sids[order]  # (n_items, D)
        # [j, s]: the prefix of length s of leaf j equals leaf j-1's
        same_as_prev = np.zeros((n_items, depth + 1), dtype=bool)
        same_as_prev[1:, 0] = True
        same_as_prev[1:, 1:] = np.cumprod(sorted_ids[1:] == sorted_ids[:-1], axis=1).astype(bool)
        if same_as_prev[1:, depth].any():
            dup = sorted_ids[np.flatnonzero(same_as_prev[1:, depth])[0]]
            raise BundleError(f"sids: the ID {dup.tolist()} belongs to more than one item")
        # node_of_leaf[j, s]: the depth-s node on leaf j's path (nodes numbered in sorted order).
        new_node = ~same_as_prev  # (n_items, D + 1)
        node_of_leaf = np.cumsum(new_node, axis=0) - 1  # (n_items, D + 1)
        leaf_start = [
            np.append(np.flatnonzero(new_node[:, s]), n_items).astype(np.int64) for s in range(depth + 1)
        ]
        dense: list[np.ndarray] = []
        csr_indptr: list[np.ndarray] = []
        csr_codes: list[np.ndarray] = []
        csr_child: list[np.ndarray] = []
        for s in range(depth):
            first = leaf_start[s + 1][:-1]  # (n_{s+1},) one leaf per child node
            parent = node_of_leaf[first, s]  # (n_{s+1},) ascending
            code = sorted_ids[first, s]  # (n_{s+1},) ascending within a parent
            child = np.arange(first.shape[0], dtype=np.int32)
            n_parents = leaf_start[s].shape[0] - 1
            if s < dense_levels:
                table = np.full((n_parents, codebook_size), -1, dtype=np.int32)  # (n_s, K)
                table[parent, code] = child
                dense.append(table)
            else:
                counts = np.bincount(parent, minlength=n_parents)
                csr_indptr.append(np.concatenate([[0], np.cumsum(counts)]).astype(np.int64))
                csr_codes.append(code.astype(np.int64))
                csr_child.append(child)
        return cls(
            codebook_size, depth, dense, csr_indptr, csr_codes, csr_child, leaf_start, order.astype(np.int64)
        )

    def children(self, depth: int, states: np.ndarray) -> np.ndarray:
        """Child node ids ``(N, K)`` of the depth-``depth`` nodes ``states`` (N,), ``-1`` where none.

        One gather for dense depths; for CSR depths one scatter of every state's padded children.
        """
        listed = self.listed(depth, states)
        if listed is None:
            return self.dense[depth][states]  # (N, K)
        out = np.full((states.shape[0], self.codebook_size), -1, dtype=np.int32)  # (N, K)
        out[np.arange(states.shape[0])[:, None], listed[0]] = listed[1]
        return out

    def penalty(self, depth: int, states: np.ndarray) -> np.ndarray:
        """float32 ``(N, K)``: 0 for the codes with a child under ``states`` (N,), ``-inf`` for the rest;
        added to a step's scores it is the trie constraint (one gather at dense depths)."""
        if depth < self.dense_levels:
            return self.penalties[depth][states]
        return np.where(self.children(depth, states) >= 0, 0.0, -np.inf).astype(np.float32)

    def listed(self, depth: int, states: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
        """At CSR depths the children of ``states`` (N,) as lists: codes and child nodes ``(N, fan)``
        each, short rows repeating their last entry, and where they do (bool); None at dense depths."""
        if depth < self.dense_levels:
            return None
        csr = depth - self.dense_levels
        indptr = self.csr_indptr[csr]
        start = indptr[states]  # (N,) each state's first CSR entry
        counts = indptr[states + 1] - start  # (N,) >= 1: every node above the leaves has a child
        column = np.arange(int(counts.max(initial=1)))[None, :]  # (1, fan)
        entries = start[:, None] + np.minimum(column, counts[:, None] - 1)  # (N, fan) last one repeated
        return self.csr_codes[csr][entries], self.csr_child[csr][entries], column >= counts[:, None]

    def leaf_range(self, depth: int, nodes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """First and one-past-last sorted leaf under each depth-``depth`` node (``nodes`` >= 0)."""
        start = self.leaf_start[depth]
        return start[nodes], start[nodes + 1]

    def items_of_leaves(self, leaves: np.ndarray) -> np.ndarray:
        """Item index of each full-depth node (a leaf's node id is its sorted position)."""
        return self.leaf_item[leaves]

    def save(self, path: Path) -> None:
        arrays: dict[str, np.ndarray] = {
            "codebook_size": np.array(self.codebook_size),
            "id_length": np.array(self.id_length),
            "leaf_item": self.leaf_item,
        }
        for name in ("dense", "csr_indptr", "csr_codes", "csr_child", "leaf_start"):  # one array per depth
            for s, array in enumerate(getattr(self, name)):
                arrays[f"{name}_{s}"] = array
        with path.open("wb") as handle:
            np.savez(handle, **arrays)  # type: ignore[arg-type]

    @classmethod
    def load(cls, path: Path) -> PrefixIndex:
        """Load without unpickling; a malformed file is a ``BundleError`` naming it."""
        try:
            with np.load(path, allow_pickle=False) as data:
                k, depth = int(data["codebook_size"]), int(data["id_length"])
                dense = [data[f"dense_{s}"] for s in range(depth) if f"dense_{s}" in data]
                n_csr = depth - len(dense)
                return cls(
                    codebook_size=k,
                    id_length=depth,
                    dense=dense,
                    csr_indptr=[data[f"csr_indptr_{i}"] for i in range(n_csr)],
                    csr_codes=[data[f"csr_codes_{i}"] for i in range(n_csr)],
                    csr_child=[data[f"csr_child_{i}"] for i in range(n_csr)],
                    leaf_start=[data[f"leaf_start_{s}"] for s in range(depth + 1)],
                    leaf_item=data["leaf_item"],
                )
        except (KeyError, ValueError, OSError) as exc:
            raise BundleError(f"{path}: not a valid prefix index ({exc})") from exc
