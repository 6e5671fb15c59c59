"""The generator's ID decoder over one batch of requests, one level at a time, as the beam search drives it.

``ConstrainedBeamSearch`` asks a ``Decoder`` for the next level's logits of every beam and tells it
which beam of the previous level each new beam continues (``parent``); what the decoder keeps between
levels is its own business. Two implementations, bound to the bundle's graphs by ``Recommender``:

* ``ReferenceDecoder``: the reference step graph (``SidrecGenerator.step``); the memory is repeated
  per beam and the whole prefix is recomputed at every level. Keeps no state.
* ``IncrementalDecoder``: the fast path (``training/export/cached_step.py``): each request's
  cross-attention keys/values come once from ``generator_cross_kv``, and each level runs only the
  newest position, reading the earlier positions' self-attention keys/values from ``past``: the
  previous level's ``past`` and ``newest``, reordered by ``parent`` (as HF ``generate`` reorders
  ``past_key_values``) and joined here, in one copy.

Both return the same logits (a parity test holds them to the torch ``step``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

import numpy as np

__all__ = ["Decoder", "IncrementalDecoder", "IncrementalStepFunction", "ReferenceDecoder", "StepFunction"]

#: ``step(memory (N, T, d) float32, memory_mask (N, T) bool, prefix (N, S) int64) -> logits (N, K)``
StepFunction = Callable[[np.ndarray, np.ndarray, np.ndarray], np.ndarray]
#: ``step(cross_kv (B, layers, 2, h, T, dh), memory_mask (B, T), prefix (N, S), past (N, S, layers, 2, d))
#: -> (logits (N, K), newest (N, layers, 2, d))`` with ``N = B × W`` rows, request-major.
IncrementalStepFunction = Callable[
    [np.ndarray, np.ndarray, np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]
]


class Decoder(Protocol):
    """The decoder of one batch; ``step`` is called once per ID level, in order."""

    def step(self, prefix: np.ndarray, parent: np.ndarray) -> np.ndarray:
        """Logits (B, W, K) of the next level for the beams with codes ``prefix`` (B, W, S) int64;
        beam ``j`` of request ``b`` continues beam ``parent[b, j]`` of the previous call (zeros at
        the first level, where every request has one beam and ``S = 0``)."""
        ...


class ReferenceDecoder:
    """The reference step graph: memory (B, T, d) repeated per beam, the whole prefix every level."""

    def __init__(self, step: StepFunction, memory: np.ndarray, memory_mask: np.ndarray) -> None:
        self._step = step
        self._memory = memory  # (B, T, d)
        self._mask = memory_mask  # (B, T)

    def step(self, prefix: np.ndarray, parent: np.ndarray) -> np.ndarray:
        batch, width, length = prefix.shape
        logits = self._step(
            np.repeat(self._memory, width, axis=0),  # (N, T, d)
            np.repeat(self._mask, width, axis=0),  # (N, T)
            prefix.reshape(batch * width, length),  # (N, S)
        )
        return logits.reshape(batch, width, -1)


class IncrementalDecoder:
    """Cross-attention K/V once per request, self-attention K/V carried from level to level."""

    def __init__(self, step: IncrementalStepFunction, cross_kv: np.ndarray, memory_mask: np.ndarray) -> None:
        batch, layers, _, heads, _, head_dim = cross_kv.shape
        self._step = step
        self._cross_kv = cross_kv  # (B, layers, 2, h, T, dh)
        self._mask = memory_mask  # (B, T)
        d = heads * head_dim
        self._past = np.zeros((batch, 0, layers, 2, d), dtype=np.float32)  # one beam each, no position
        self._newest = np.zeros((batch, 0, layers, 2, d), dtype=np.float32)  # nothing decoded yet

    def step(self, prefix: np.ndarray, parent: np.ndarray) -> np.ndarray:
        batch, width, length = prefix.shape
        previous = self._past.shape[0] // batch  # beams per request at the previous level
        rows = (parent + np.arange(batch)[:, None] * previous).reshape(-1)  # (N,) into the previous rows
        # (N, S, layers, 2, d), gathered straight into one new array: a concatenate of two gathers
        # costs several times more
        past = np.empty((rows.shape[0], length, *self._past.shape[2:]), dtype=np.float32)
        np.take(self._past, rows, axis=0, out=past[:, : length - 1], mode="clip")
        np.take(self._newest, rows, axis=0, out=past[:, length - 1 :], mode="clip")
        logits, newest = self._step(self._cross_kv, self._mask, prefix.reshape(batch * width, length), past)
        self._past, self._newest = past, newest[:, None]  # (N, 1, layers, 2, d)
        return logits.reshape(batch, width, -1)
