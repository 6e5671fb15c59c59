"""Decoding constraints as small composable processors (after transformers' logits processors).

Each processor validates its arguments in ``__init__`` (naming the bad one), and its ``__call__``
returns *new* scores with invalid codes set to ``-inf`` (or its input itself where it bans nothing);
it never mutates its input. Unlike the transformers prefix constraint there is no per-beam Python
loop: every processor works on the whole ``(N, K)`` block of a step (N = batch × beam) through the
trie states in ``StepContext``.

Per docs/CONTRACTS.md §3 and its torch reference (``training.generator.beam``):
``TrieConstraint`` allows only codes under which some catalogue item lies; ``ExcludeItems``
(``exclude_seen``) bans excluded items at the last level only, exactly like the reference, so an
excluded item's prefix may still hold a beam. ``AllowedItems`` (tag-path filters) prunes *every*
level to prefixes under which at least one allowed item lies, counting allowed leaves under each
child node with one cumulative-sum lookup: that is what makes a filter restrict decoding to the
matching code prefixes instead of discarding most of the beam at the end.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from service.errors import InvalidRequest
from service.prefix_index import PrefixIndex

__all__ = ["AllowedItems", "ExcludeItems", "Processor", "StepContext", "TrieConstraint", "apply_processors"]


@dataclass(frozen=True)
class StepContext:
    """What a processor may look at in one decoding step (rows request-major: ``beams`` per request).

    The children are built only if asked for: where the index lists each node's few children, the
    search reads only those and needs no ``(N, K)`` table unless a processor does.
    """

    depth: int  # depth of the child nodes (= number of codes chosen after this step)
    beams: int  # rows per request
    index: PrefixIndex
    states: np.ndarray  # int64 (N,) the rows' nodes at depth ``depth - 1``

    @functools.cached_property
    def children(self) -> np.ndarray:
        """int32 (N, K) child node ids, -1 where no catalogue item continues the prefix."""
        return self.index.children(self.depth - 1, self.states)

    @functools.cached_property
    def listed(self) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
        """The same children as lists where the index has them (``PrefixIndex.listed``): codes and
        child nodes (N, fan) each, short rows repeating their last entry, and bool (N, fan) marking
        the repeats; a few per row instead of ``K``. None where the index has a dense table."""
        return self.index.listed(self.depth - 1, self.states)

    @functools.cached_property
    def request(self) -> np.ndarray:
        """int64 (N,): which request of the batch each row belongs to (built only if asked for)."""
        return np.arange(self.states.shape[0]) // self.beams


class Processor(Protocol):
    def __call__(self, scores: np.ndarray, context: StepContext) -> np.ndarray: ...


class TrieConstraint:
    """Only codes that continue the prefix of some catalogue item."""

    def __call__(self, scores: np.ndarray, context: StepContext) -> np.ndarray:
        return scores + context.index.penalty(context.depth - 1, context.states)


class AllowedItems:
    """Only codes under which at least one allowed item lies; ``allowed`` is bool (B, n_items)."""

    def __init__(self, index: PrefixIndex, allowed: np.ndarray) -> None:
        if allowed.ndim != 2 or allowed.shape[1] != index.n_items or allowed.dtype != np.bool_:
            raise ValueError(
                f"allowed must be bool (batch, {index.n_items}), got {allowed.dtype} {allowed.shape}"
            )
        empty = np.flatnonzero(~allowed.any(axis=1))
        if empty.size:
            raise InvalidRequest(
                f"request {int(empty[0])}: the filters and exclusions leave no item to recommend"
            )
        self._index = index
        counts = np.zeros((allowed.shape[0], index.n_items + 1), dtype=np.int32)  # (B, n_items + 1)
        np.cumsum(allowed[:, index.leaf_item], axis=1, out=counts[:, 1:])
        self._cumulative = counts

    def __call__(self, scores: np.ndarray, context: StepContext) -> np.ndarray:
        nodes = np.maximum(context.children, 0)  # (N, K); rows with -1 are masked below
        lo, hi = self._index.leaf_range(context.depth, nodes)  # (N, K) each
        rows = context.request[:, None]  # (N, 1)
        has_allowed = self._cumulative[rows, hi] > self._cumulative[rows, lo]  # (N, K)
        valid = has_allowed & (context.children >= 0)
        return np.where(valid, scores, -np.inf).astype(scores.dtype, copy=False)


class ExcludeItems:
    """Ban the ``excluded`` items (bool (B, n_items)) at the last ID level."""

    def __init__(self, index: PrefixIndex, excluded: np.ndarray) -> None:
        if excluded.ndim != 2 or excluded.shape[1] != index.n_items or excluded.dtype != np.bool_:
            raise ValueError(
                f"excluded must be bool (batch, {index.n_items}), got {excluded.dtype} {excluded.shape}"
            )
        self._index = index
        self._excluded = excluded

    def __call__(self, scores: np.ndarray, context: StepContext) -> np.ndarray:
        if context.depth != self._index.id_length:
            return scores
        if context.listed is not None:  # (N, fan) leaves per row: no search of the (N, K) table
            codes, leaves, _ = context.listed  # a repeated leaf is banned twice: harmless
            requests = context.request[:, None]  # (N, 1)
        else:
            rows, codes = np.nonzero(context.children >= 0)  # (M,) each: the few real leaves, not all N × K
            leaves, requests = context.children[rows, codes], rows // context.beams
        banned = self._excluded[requests, self._index.items_of_leaves(leaves)]  # like codes
        if not banned.any():  # the usual case: no history item among the candidates
            return scores
        at = np.nonzero(banned)
        out = scores.copy()
        out[at[0] if context.listed is not None else rows[at], codes[at]] = -np.inf
        return out


def apply_processors(scores: np.ndarray, context: StepContext, processors: list[Processor]) -> np.ndarray:
    for processor in processors:
        scores = processor(scores, context)
    return scores
