"""The serving fast path of ``SidrecGenerator.step``: incremental decoding with two caches.

Why: ``step`` recomputes, for every one of the ``batch × beam`` rows at every ID level, (1) the
cross-attention keys/values of the whole history memory (``(T, d) -> (T, 2d)`` per decoder layer),
although all beams of a request share the memory, and (2) every earlier position of the prefix,
although only the newest one is new. Here

* ``CrossKVGraph`` projects each request's memory once (after the encoder): ``cross_kv``;
* ``IncrementalStepGraph`` runs only the newest position of each beam. Its self-attention reads the
  earlier positions' keys/values from ``past`` and returns only the newest position's (``newest``);
  the caller appends it to ``past`` after reordering both by each beam's parent (as HF ``generate``
  reorders ``past_key_values``). Returning ``newest`` instead of the whole cache one level longer
  keeps the graph from copying the cache: the attention scores over the past and over the newest
  position are joined (``(N, S+1, h)``, small), never the keys/values (``(N, S+1, d)`` per layer).
  Its cross-attention reads ``cross_kv`` once per *request*: the beams of a request are consecutive
  rows, so their queries are grouped into one ``(W, dh) @ (dh, T)`` product per request and head
  instead of ``W`` copies of the keys. Rows are ``(N, d)`` matrices throughout, so every linear layer
  is one Gemm with its bias fused.

This re-states the decoder's forward pass with the model's own modules and weights, so it must follow
``training.generator.model``; ``tests/training/export/test_export.py`` holds it to ``step`` (every
prefix length, reordered beams) within the same tolerance as the ONNX graphs, and ``export_bundle``
only ships it next to the reference ``generator_step.onnx``.
"""

from __future__ import annotations

import math
from typing import cast

import torch
from torch import Tensor, nn

from training.generator.model import MASKED, Attention, Block, SidrecGenerator

__all__ = ["CrossKVGraph", "IncrementalStepGraph"]


def _blocks(generator: SidrecGenerator) -> list[Block]:
    return cast(list[Block], list(generator.decoder))


def _prefix_attention(attention: Attention, query: Tensor, past: Tensor) -> tuple[Tensor, Tensor]:
    """Self-attention of the newest position over all positions so far (no mask needed: the newest
    position sees every earlier one): query (N, d), past (N, S, 2, d) -> output (N, d) and the newest
    position's key/value (N, 2, d).

    Elementwise products and sums instead of ``N × h`` tiny matrix products (one query row each).
    """
    n, d = query.shape
    h = attention.n_heads
    s = past.shape[1]
    q = attention.q(query).view(n, 1, h, d // h)  # (N, 1, h, dh)
    newest = attention.kv(query).view(n, 2, d)  # (N, 2, d): key | value
    keys, values = past[:, :, 0].view(n, s, h, d // h), past[:, :, 1].view(n, s, h, d // h)  # (N, S, h, dh)
    scores = torch.cat(
        [(q * keys).sum(-1), (q * newest[:, :1].view(n, 1, h, d // h)).sum(-1)], 1
    )  # (N, S+1, h)
    weights = (scores / math.sqrt(d // h)).softmax(1).unsqueeze(-1)  # (N, S+1, h, 1)
    mixed = (weights[:, :s] * values).sum(1) + weights[:, s] * newest[:, 1].view(n, h, d // h)  # (N, h, dh)
    return attention.out(mixed.reshape(n, d)), newest


def _grouped_cross_attention(attention: Attention, query: Tensor, kv: Tensor, bias: Tensor) -> Tensor:
    """Cross-attention with each request's precomputed ``kv`` (B, 2, h, T, dh) shared by its beams:
    query (N, d) with N = B × W, request-major -> (N, d). ``bias`` (B, 1, 1, T)."""
    n, d = query.shape
    b, h = kv.shape[0], attention.n_heads
    q = attention.q(query).view(b, -1, h, d // h).transpose(1, 2)  # (B, h, W, dh)
    scores = q @ kv[:, 0].transpose(-1, -2) / math.sqrt(d // h) + bias  # (B, h, W, T)
    return attention.out((scores.softmax(-1) @ kv[:, 1]).transpose(1, 2).reshape(n, d))


class CrossKVGraph(nn.Module):
    """memory (B, T, d) -> cross_kv (B, layers, 2, h, T, dh): each decoder layer's keys and values."""

    def __init__(self, generator: SidrecGenerator) -> None:
        super().__init__()
        self.generator = generator

    def forward(self, memory: Tensor) -> Tensor:
        b, t, d = memory.shape
        layers = []
        for block in _blocks(self.generator):
            assert block.cross is not None
            h = block.cross.n_heads
            layers.append(
                block.cross.kv(memory).view(b, t, 2, h, d // h).permute(0, 2, 3, 1, 4)
            )  # (B, 2, h, T, dh)
        return torch.stack(layers, dim=1)


class IncrementalStepGraph(nn.Module):
    """``step`` for the newest position only, over ``N = B × W`` beams (rows request-major).

    cross_kv (B, layers, 2, h, T, dh), memory_mask (B, T) bool, prefix (N, S), past (N, S, layers, 2, d)
    (self-attention keys/values of positions ``0..S-1`` of each beam's own prefix; ``S = 0``: empty;
    positions second, so the caller appends a level by copying one contiguous block per row)
    -> logits (N, K) equal to ``step(memory, memory_mask, prefix)`` with the memory repeated per beam,
    and newest (N, layers, 2, d): position ``S``'s keys/values, the next level's ``past[:, S]``.
    """

    def __init__(self, generator: SidrecGenerator) -> None:
        super().__init__()
        self.generator = generator

    def forward(
        self, cross_kv: Tensor, memory_mask: Tensor, prefix: Tensor, past: Tensor
    ) -> tuple[Tensor, Tensor]:
        g = self.generator
        n, s = prefix.shape
        bos = torch.full((n, 1), g.config.id_length * g.config.codebook_size, dtype=prefix.dtype)
        newest_token = torch.cat([bos, prefix + g.code_offsets[:s]], 1)[:, s]  # (N,): BOS or code S-1
        x = g.code_emb(newest_token) + g.level_pos.weight[s]  # (N, d)
        zero = torch.zeros((), dtype=torch.float32)
        memory_bias = torch.where(memory_mask, zero, torch.full_like(zero, MASKED))[
            :, None, None
        ]  # (B,1,1,T)
        newest = []
        for layer, block in enumerate(_blocks(g)):
            assert block.cross is not None and block.ln_cross is not None
            attended, kv = _prefix_attention(block.attn, block.ln1(x), past[:, :, layer])
            newest.append(kv)  # (N, 2, d)
            x = x + attended
            x = x + _grouped_cross_attention(block.cross, block.ln_cross(x), cross_kv[:, layer], memory_bias)
            x = x + block.ff(block.ln2(x))
        logits = g.decoder_ln(x) @ g.head_weight[s] + g.head_bias[s]  # (N, K)
        return logits, torch.stack(newest, 1)
