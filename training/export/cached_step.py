"""The serving fast path of ``SidrecGenerator.step``: incremental decoding with two caches.

Why: ``step`` recomputes, for every one of the ``batch × beam`` rows at every ID level, (1) the
cross-attention keys/values of the whole history memory (``(T, d) -> (T, 2d)`` per decoder layer),
although all beams of a request share the memory, and (2) every earlier position of the prefix,
although only the newest one is new. Here

* ``CrossKVGraph`` projects each request's memory once (after the encoder): ``cross_kv``;
* ``IncrementalStepGraph`` runs only the newest position of each beam. Its self-attention reads the
  earlier positions' keys/values from ``past`` (returned as ``present`` one level longer; the caller
  reorders it by each beam's parent, as HF ``generate`` reorders ``past_key_values``), and its
  cross-attention reads ``cross_kv`` once per *request*: the beams of a request are consecutive rows,
  so their queries are grouped into one ``(W, dh) @ (dh, T)`` product per request and head instead of
  ``W`` copies of the keys.

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


def _prefix_attention(attention: Attention, query: Tensor, keys: Tensor, values: Tensor) -> Tensor:
    """Self-attention of the newest position over all positions so far (no mask needed: the newest
    position sees every earlier one): query (N, 1, d), keys/values (N, S+1, d) -> (N, 1, d).

    Elementwise products and sums instead of ``N × h`` tiny matrix products (one query row each).
    """
    n, positions, d = keys.shape
    h = attention.n_heads
    q = attention.q(query).view(n, 1, h, d // h)  # (N, 1, h, dh)
    scores = (q * keys.view(n, positions, h, d // h)).sum(-1) / math.sqrt(d // h)  # (N, S+1, h)
    weights = scores.softmax(1).unsqueeze(-1)  # (N, S+1, h, 1)
    return attention.out((weights * values.view(n, positions, h, d // h)).sum(1).reshape(n, 1, d))


def _grouped_cross_attention(attention: Attention, query: Tensor, kv: Tensor, bias: Tensor) -> Tensor:
    """Cross-attention with each request's precomputed ``kv`` (B, 2, h, T, dh) shared by its beams:
    query (N, 1, d) with N = B × W, request-major -> (N, 1, d). ``bias`` (B, 1, 1, T)."""
    n, _, d = query.shape
    b, h = kv.shape[0], attention.n_heads
    q = attention.q(query).view(b, -1, h, d // h).transpose(1, 2)  # (B, h, W, dh)
    scores = q @ kv[:, 0].transpose(-1, -2) / math.sqrt(d // h) + bias  # (B, h, W, T)
    return attention.out((scores.softmax(-1) @ kv[:, 1]).transpose(1, 2).reshape(n, 1, d))


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

    cross_kv (B, layers, 2, h, T, dh), memory_mask (B, T) bool, prefix (N, S), past (N, layers, 2, S, d)
    (self-attention keys/values of positions ``0..S-1`` of each beam's own prefix; ``S = 0``: empty)
    -> logits (N, K) equal to ``step(memory, memory_mask, prefix)`` with the memory repeated per beam,
    and present (N, layers, 2, S+1, d).
    """

    def __init__(self, generator: SidrecGenerator) -> None:
        super().__init__()
        self.generator = generator

    def forward(
        self, cross_kv: Tensor, memory_mask: Tensor, prefix: Tensor, past: Tensor
    ) -> tuple[Tensor, Tensor]:
        g = self.generator
        n, s = prefix.shape
        d = g.config.d_model
        bos = torch.full((n, 1), g.config.id_length * g.config.codebook_size, dtype=prefix.dtype)
        newest = torch.cat([bos, prefix + g.code_offsets[:s]], 1)[:, s:]  # (N, 1): BOS or code S-1
        x = g.code_emb(newest) + g.level_pos.weight[s : s + 1]  # (N, 1, d)
        zero = torch.zeros((), dtype=torch.float32)
        memory_bias = torch.where(memory_mask, zero, torch.full_like(zero, MASKED))[
            :, None, None
        ]  # (B,1,1,T)
        present = []
        for layer, block in enumerate(_blocks(g)):
            assert block.cross is not None and block.ln_cross is not None
            h = block.ln1(x)
            new = block.attn.kv(h)  # (N, 1, 2d): this position's key | value
            keys = torch.cat([past[:, layer, 0], new[..., :d]], 1)  # (N, S+1, d)
            values = torch.cat([past[:, layer, 1], new[..., d:]], 1)  # (N, S+1, d)
            present.append(torch.stack([keys, values], 1))  # (N, 2, S+1, d)
            x = x + _prefix_attention(block.attn, h, keys, values)
            x = x + _grouped_cross_attention(block.cross, block.ln_cross(x), cross_kv[:, layer], memory_bias)
            x = x + block.ff(block.ln2(x))
        hidden = g.decoder_ln(x)  # (N, 1, d)
        logits = (hidden @ g.head_weight[s : s + 1] + g.head_bias[s : s + 1]).squeeze(1)  # (N, K)
        return logits, torch.stack(present, 1)
