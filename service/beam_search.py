"""Vectorised constrained beam search over batch × beam, in numpy around an ONNX step function.

Semantics are exactly those of docs/CONTRACTS.md §3 (the torch reference is
``training.generator.beam``; a parity test holds the two together): a level's scores are
``log_softmax`` over all ``K`` codes, invalid codes become ``-inf`` *after* it, the ``beam × K``
candidates of a request are ranked by a stable sort on ``-score`` (ties -> lower flat index
``beam * K + code``), and ``-inf`` beams are dropped. The whole batch advances together: one step
call, one trie gather and one sort per level, no Python loop over beams, requests or items. Where the
prefix index lists each node's few children (its CSR depths), only those are candidates: ``beam ×
fan`` instead of ``beam × K``, in the same order (codes ascend within a list), so the ranking is the
same and the top-k runs over a few hundred candidates per request instead of thousands. What
runs the generator is a ``service.decoders.Decoder`` (reference step graph or incremental fast path).

Requests in one batch may ask for different beam widths and ``k``: the batch runs with the widest
beam and each request keeps only its own top ``beam`` rows (the rest are set to ``-inf``), which
gives every request exactly the answer it would get alone.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Generator
from dataclasses import dataclass
from typing import TypeVar

import numpy as np

from service.constraints import Processor, StepContext, TrieConstraint, apply_processors
from service.decoders import Decoder
from service.prefix_index import PrefixIndex

__all__ = ["BeamHit", "ConstrainedBeamSearch", "Steps", "log_softmax", "run_to_end", "top_candidates"]

T = TypeVar("T")
#: a computation cut into steps: each ``next`` runs one, and the last returns (``StopIteration``) the
#: result. The event loop runs a decode this way on a single CPU (``service.batcher``)
Steps = Generator[None, None, T]


def run_to_end(steps: Steps[T]) -> T:
    """All of ``steps`` at once: the result."""
    while True:
        try:
            next(steps)
        except StopIteration as done:
            return done.value


@dataclass(frozen=True)
class BeamHit:
    """One recommended item: its catalogue row, summed log-probability and semantic ID."""

    item: int
    score: float
    codes: tuple[int, ...]


def log_softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits - logits.max(axis=-1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))


def top_candidates(candidates: np.ndarray, keep: int) -> np.ndarray:
    """Column indices of each row's ``keep`` best scores, best first; ties -> lower index first.

    Exactly ``np.argsort(-candidates, kind="stable")[:, :keep]`` (the contract's order), but linear in
    the row length: a partition finds each row's ``keep``-th score, everything above it is taken, the
    ties at it are taken lowest index first (a cumulative count, only when ties straddle the cut), and
    only those ``keep`` survivors are sorted: at serving sizes a full sort costs several times that.
    """
    batch, width = candidates.shape
    if keep >= width:
        return np.argsort(-candidates, axis=1, kind="stable")
    threshold = -np.partition(-candidates, keep - 1, axis=1)[:, keep - 1 : keep]  # (B, 1) keep-th best
    chosen = candidates >= threshold  # (B, C): the ``keep`` best and any further ties at the threshold
    if (chosen.sum(axis=1) > keep).any():  # ties straddle the cut (e.g. -inf): lowest index first
        above = candidates > threshold
        tied = candidates == threshold
        room = keep - above.sum(axis=1, keepdims=True)  # (B, 1) ties still to take, >= 1
        chosen = above | (tied & (np.cumsum(tied, axis=1) <= room))  # exactly ``keep`` per row
    columns = np.nonzero(chosen)[1].reshape(batch, keep)  # ascending per row
    values = np.take_along_axis(candidates, columns, axis=1)
    return np.take_along_axis(columns, np.argsort(-values, axis=1, kind="stable"), axis=1)


class ConstrainedBeamSearch:
    """Beam search restricted to the IDs of ``index``."""

    def __init__(self, index: PrefixIndex, clock: Callable[[], float] = time.perf_counter) -> None:
        """``clock``: what ``on_step``'s durations are read from, in seconds (see ``steps``)."""
        self.index = index
        self._clock = clock
        self._trie = TrieConstraint()

    def steps(
        self,
        decoder: Decoder,
        beams: np.ndarray,
        ks: np.ndarray,
        processors: list[Processor] | None = None,
        on_step: Callable[[int, float, float], None] | None = None,
    ) -> Steps[list[list[BeamHit]]]:
        """Decode a batch with ``decoder`` (a fresh one per batch), per-request ``beams``/``ks`` (B,):
        the hits of every request, best first (``run_to_end`` runs it all at once).

        ``processors`` add request constraints on top of the catalogue trie. ``on_step(depth,
        step_seconds, mask_seconds)`` is told how long each level spent in the decoder and in
        constraint masking (for metrics and the benchmark), on the clock given to ``__init__``: wall
        time by default; the benchmark reads the decoding thread's CPU time, which other threads
        holding the GIL do not inflate. Yields after each level (see ``Steps``).
        """
        batch = beams.shape[0]
        width = int(beams.max())
        k_codes = self.index.codebook_size
        extra: list[Processor] = processors or []
        chain: list[Processor] = [self._trie, *extra]
        scores = np.zeros((batch, 1), dtype=np.float32)  # (B, W_cur): the first level starts from one beam
        states = np.zeros((batch, 1), dtype=np.int64)  # (B, W_cur) trie node ids
        prefix = np.zeros((batch, 1, 0), dtype=np.int64)  # (B, W_cur, S)
        parent = np.zeros((batch, 1), dtype=np.int64)  # (B, W_cur) beam continued from the last level
        for depth in range(self.index.id_length):
            current = scores.shape[1]
            rows = batch * current
            started = self._clock()
            logits = decoder.step(prefix, parent).reshape(rows, k_codes)  # (N, K)
            logp = log_softmax(logits.astype(np.float32, copy=False))  # (N, K)
            masking = self._clock()
            context = StepContext(depth + 1, current, self.index, states.reshape(rows))
            listed = context.listed  # None at dense depths
            # a listed depth reads only real children: the trie constraint holds without a mask
            logp = apply_processors(logp, context, extra if listed is not None else chain)
            if on_step is not None:
                now = self._clock()
                on_step(depth, masking - started, now - masking)
            if listed is None:  # every code a column: (N, K)
                columns = logp
            else:  # only each row's children, codes ascending (the contract's tie order): (N, fan)
                columns = np.take_along_axis(logp, listed[0], axis=1)
                columns[listed[2]] = -np.inf  # a repeated entry is no candidate
            fan = columns.shape[1]
            candidates = (scores[:, :, None] + columns.reshape(batch, current, fan)).reshape(batch, -1)
            keep = min(width, candidates.shape[1])
            order = top_candidates(candidates, keep)  # (B, W)
            scores = np.take_along_axis(candidates, order, axis=1)  # (B, W)
            scores[np.arange(keep)[None, :] >= beams[:, None]] = -np.inf
            parent, column = order // fan, order % fan  # (B, W) each
            flat_parent = parent + (np.arange(batch) * current)[:, None]  # rows of this level
            if listed is None:
                code = column
                children = context.children.reshape(-1)
                states = np.maximum(children[flat_parent * k_codes + code], 0).astype(np.int64)
            else:
                code = listed[0][flat_parent, column]
                states = listed[1][flat_parent, column].astype(np.int64)
            prefix = np.concatenate(
                [np.take_along_axis(prefix, parent[:, :, None], axis=1), code[:, :, None]], axis=2
            )
            yield  # a level done: whoever runs the steps may do other work before the next
        items = self.index.items_of_leaves(states).tolist()  # (B, W) as Python ints, converted once
        totals, ids = scores.tolist(), prefix.tolist()
        return [
            [
                BeamHit(items[b][j], totals[b][j], tuple(ids[b][j]))
                for j in range(min(int(ks[b]), scores.shape[1]))
                if totals[b][j] != -math.inf  # dropped beams; scores are never NaN or +inf
            ]
            for b in range(batch)
        ]
