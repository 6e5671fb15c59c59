"""A faster twin of ``SidrecGenerator.step`` for serving: cross-attention keys/values computed once.

Why: in ``step`` every one of the ``batch × beam`` rows re-projects the whole history memory
``(T, d) -> (T, 2d)`` in each decoder layer at each ID level, although all beams of a request share
the same memory. On the Beauty model that projection is most of the step's arithmetic. Here
``CrossKVGraph`` projects each request's memory once (after the encoder), and ``CachedStepGraph``
takes those keys/values (repeated per beam, a copy instead of a matmul) in place of the memory.

This re-states the decoder's forward pass with the model's own modules and weights, so it must follow
``training.generator.model``; ``tests/training/export/test_export.py`` holds it to ``step`` within
the same tolerance as the ONNX graphs, and ``export_bundle`` only ships it next to the reference
``generator_step.onnx``.
"""

from __future__ import annotations

import math
from typing import cast

import torch
from torch import Tensor, nn

from training.generator.model import MASKED, Attention, Block, SidrecGenerator

__all__ = ["CachedStepGraph", "CrossKVGraph"]


def _bias(allowed: Tensor) -> Tensor:
    """Bool (…, Tq, Tk) -> additive (…, 1, Tq, Tk), as the model's attention bias."""
    zeros = torch.zeros((), dtype=torch.float32, device=allowed.device)
    return torch.where(allowed, zeros, torch.full_like(zeros, MASKED)).unsqueeze(-3)


def _blocks(generator: SidrecGenerator) -> list[Block]:
    return cast(list[Block], list(generator.decoder))


def _cross_attention(attention: Attention, query: Tensor, kv: Tensor, bias: Tensor) -> Tensor:
    """``Attention.forward`` with precomputed ``kv`` (N, 2, h, T, dh): query (N, Tq, d) -> (N, Tq, d)."""
    n, tq, d = query.shape
    h = attention.n_heads
    q = attention.q(query).view(n, tq, h, d // h).transpose(1, 2)  # (N, h, Tq, dh)
    scores = q @ kv[:, 0].transpose(-1, -2) / math.sqrt(d // h) + bias  # (N, h, Tq, T)
    return attention.out((scores.softmax(-1) @ kv[:, 1]).transpose(1, 2).reshape(n, tq, d))


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


class CachedStepGraph(nn.Module):
    """cross_kv (N, layers, 2, h, T, dh), mask (N, T), prefix (N, S) -> logits (N, K), as ``step``."""

    def __init__(self, generator: SidrecGenerator) -> None:
        super().__init__()
        self.generator = generator

    def forward(self, cross_kv: Tensor, memory_mask: Tensor, prefix: Tensor) -> Tensor:
        g = self.generator
        n, s = prefix.shape
        k = g.config.codebook_size
        bos = torch.full((n, 1), g.config.id_length * k, dtype=prefix.dtype, device=prefix.device)
        tokens = torch.cat([bos, prefix + g.code_offsets[:s]], 1)  # (N, S+1)
        x = g.code_emb(tokens) + g.level_pos.weight[: s + 1]  # (N, S+1, d)
        causal = torch.ones(s + 1, s + 1, dtype=torch.bool, device=prefix.device).tril()
        self_bias = _bias(causal).unsqueeze(0)  # (1, 1, S+1, S+1)
        memory_bias = _bias(memory_mask.unsqueeze(1))  # (N, 1, 1, T)
        for layer, block in enumerate(_blocks(g)):
            assert block.cross is not None and block.ln_cross is not None
            h = block.ln1(x)
            x = x + block.attn(h, h, self_bias)
            x = x + _cross_attention(block.cross, block.ln_cross(x), cross_kv[:, layer], memory_bias)
            x = x + block.ff(block.ln2(x))
        hidden = g.decoder_ln(x)[:, s:]  # (N, 1, d)
        return (
            torch.einsum("njd,jdk->njk", hidden, g.head_weight[s : s + 1]) + g.head_bias[s : s + 1]
        ).squeeze(1)
