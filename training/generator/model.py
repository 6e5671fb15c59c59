"""The H2Rec-harmonised generative recommender: a pure ``nn.Module`` library (no I/O).

Two item branches are fused the H2Rec way (arXiv 2512.10388) and feed one shared causal transformer:

* hash-ID branch: one embedding row per known item (token ``i + 1``; ``0`` = padding; the reserved last
  row stands for every item the model was never trained on, so a cold item falls back on its semantic
  views);
* semantic branch: one embedding per code level plus a fused semantic embedding (a small MLP of the mean
  of the level embeddings).

Per level ``l`` a cross-attention lets the level-``l`` view query the hash-ID sequence; a coarse-first gate
(prior ``linspace(1.0, 0.2, L)``) mixes the levels; a second cross-attention lets the hash sequence query
the fused semantic sequence. Both results run through the *same* transformer and are concatenated into the
memory. Unlike the authors' code every attention is causal and padding never yields NaN (masked scores are
a large negative number, not ``-inf``).

The output is the next item's full ID, generated one code at a time by a small transformer decoder
(BOS + chosen codes, cross-attending to the history). Choosing a decoder (not decoder-only over the
history) keeps the history encoded once per request and makes ``step`` a fixed-shape function of
``(memory, mask, prefix)``: that is what the export wraps (docs/CONTRACTS.md §3).

Variants for the baselines come from the same code: ``use_hash=False`` (TIGER / HiD-VAE-only: semantic
branch only) and ``use_semantic=False`` (SASRec: hash IDs only, items scored by the dot-product head).
"""

from __future__ import annotations

import math
import sys
from dataclasses import dataclass

import torch
from torch import Tensor, nn

__all__ = ["EncoderState", "GeneratorConfig", "SidrecGenerator"]

#: added to the scores of masked keys; finite so that an all-masked row (left padding) stays finite.
MASKED = -1e9


@dataclass
class GeneratorConfig:
    """Architecture of the generator. ``n_items``, ``id_length`` and ``codebook_size`` come from the data."""

    n_items: int = 0
    id_length: int = 4  # D = L semantic levels + the disambiguation code
    codebook_size: int = 256  # K
    d_model: int = 128
    n_heads: int = 2
    n_layers: int = 2
    cross_heads: int = 2
    n_decoder_layers: int = 2
    dropout: float = 0.2
    max_len: int = 50
    use_hash: bool = True
    use_semantic: bool = True
    gate_prior_start: float = 1.0
    gate_prior_end: float = 0.2

    def __post_init__(self) -> None:
        if self.id_length < 2:
            raise ValueError(f"id_length must be >= 2 (levels + disambiguation), got {self.id_length}")
        if not (self.use_hash or self.use_semantic):
            raise ValueError("at least one of use_hash / use_semantic must be true")
        if self.d_model % self.n_heads or self.d_model % self.cross_heads:
            raise ValueError(f"d_model={self.d_model} must be divisible by n_heads and cross_heads")

    @property
    def levels(self) -> int:
        """Semantic levels L (the disambiguation code carries no meaning, so it gets no view)."""
        return self.id_length - 1

    @property
    def generative(self) -> bool:
        """Whether items are produced by the ID decoder (False: SASRec-style dot-product scoring)."""
        return self.use_semantic


@dataclass
class EncoderState:
    """Everything ``encode`` computes; the losses need more than the memory."""

    memory: Tensor  # (B, T, d)
    mask: Tensor  # (B, T) bool, True at real items
    hash_states: Tensor | None  # (B, T, d) F_H: backbone over the gated level mix
    level_states: Tensor | None  # (B, T, L, d) z_l
    gate: Tensor | None  # (B, T, L) alpha


#: the three 16-bit slices of an int64 word that ``random_()`` fills with random bits (not the sign's)
_RANDOM_SLICES = slice(0, 3) if sys.byteorder == "little" else slice(1, 4)


class Dropout(nn.Module):
    """``nn.Dropout`` whose keep mask compares 16-bit random integers with a threshold.

    On CPU torch's dropout draws every element through ``bernoulli_``, several times slower than
    filling int64 words with ``random_()`` and reading three 16-bit draws from each; with dropout on
    every block that was a large share of a training step. ``p`` is rounded to a multiple of 1/65536
    (the scale uses the rounded value, so the expectation is exact). Identity in eval mode, so the
    exported graphs do not contain it.
    """

    def __init__(self, p: float) -> None:
        super().__init__()
        if not 0.0 <= p < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {p}")
        dropped = round(p * 65536)
        self.threshold = dropped - 32768  # int16 draws >= threshold are kept
        self.scale = 65536 / (65536 - dropped)

    def forward(self, x: Tensor) -> Tensor:
        if not self.training or self.threshold == -32768:
            return x
        n = x.numel()
        words = torch.empty((n + 2) // 3, dtype=torch.int64, device=x.device).random_()  # [0, 2^63)
        draws = words.view(torch.int16).view(-1, 4)[:, _RANDOM_SLICES].reshape(-1)[:n].view(x.shape)
        return x * (draws >= self.threshold).to(x.dtype).mul_(self.scale)


def _attention_bias(allowed: Tensor) -> Tensor:
    """Bool (…, Tq, Tk) -> additive float bias (…, 1, Tq, Tk) for the head dimension."""
    zeros = torch.zeros((), dtype=torch.float32, device=allowed.device)
    return torch.where(allowed, zeros, torch.full_like(zeros, MASKED)).unsqueeze(-3)


def _causal(n: int, device: torch.device) -> Tensor:
    """(n, n) bool: position i sees positions up to and including i."""
    return torch.ones(n, n, dtype=torch.bool, device=device).tril()


def _history_bias(mask: Tensor) -> Tensor:
    """Causal self-attention bias over a padded history (B, T) -> (B, 1, T, T).

    A position sees the real items up to itself, and always itself: a padding position then attends
    only to itself, so it can neither produce NaN nor leak later items.
    """
    t = mask.shape[1]
    causal = _causal(t, mask.device)  # (T, T)
    itself = torch.eye(t, dtype=torch.bool, device=mask.device)
    return _attention_bias((causal & mask.unsqueeze(1)) | itself)


class Attention(nn.Module):
    """Multi-head attention with an additive bias (exports to ONNX as plain MatMul/Softmax).

    No dropout on the attention probabilities: with histories of a few items it removes most of what a
    position can see, and its random numbers cost a fifth of a CPU training step; the blocks' residual
    and feed-forward dropout regularise instead.
    """

    def __init__(self, d_model: int, n_heads: int) -> None:
        super().__init__()
        self.n_heads = n_heads
        self.q = nn.Linear(d_model, d_model)
        self.kv = nn.Linear(d_model, 2 * d_model)
        self.out = nn.Linear(d_model, d_model)

    def forward(self, query: Tensor, key: Tensor, bias: Tensor) -> Tensor:
        b, tq, d = query.shape
        tk = key.shape[1]
        h = self.n_heads
        q = self.q(query).view(b, tq, h, d // h).transpose(1, 2)  # (B, h, Tq, dh)
        k, v = self.kv(key).view(b, tk, 2, h, d // h).permute(2, 0, 3, 1, 4)  # (B, h, Tk, dh) each
        scores = q @ k.transpose(-1, -2) / math.sqrt(d // h) + bias  # (B, h, Tq, Tk)
        return self.out((scores.softmax(-1) @ v).transpose(1, 2).reshape(b, tq, d))  # (B, Tq, d)


class FeedForward(nn.Module):
    def __init__(self, d_model: int, dropout: float) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(d_model, 4 * d_model), nn.GELU(), Dropout(dropout), nn.Linear(4 * d_model, d_model)
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)


class Block(nn.Module):
    """Pre-LN block: self-attention, optional cross-attention, feed-forward."""

    def __init__(self, d_model: int, n_heads: int, dropout: float, cross: bool) -> None:
        super().__init__()
        self.ln1 = nn.LayerNorm(d_model)
        self.attn = Attention(d_model, n_heads)
        self.ln_cross = nn.LayerNorm(d_model) if cross else None
        self.cross = Attention(d_model, n_heads) if cross else None
        self.ln2 = nn.LayerNorm(d_model)
        self.ff = FeedForward(d_model, dropout)
        self.drop = Dropout(dropout)

    def forward(
        self,
        x: Tensor,
        bias: Tensor,
        memory: Tensor | None = None,
        memory_bias: Tensor | None = None,
        groups: int = 1,
    ) -> Tensor:
        """``groups`` > 1 cuts the sequence into that many equal consecutive segments whose tokens attend
        only within their own segment (``bias`` is then one segment's); the cross-attention and the
        feed-forward still see every token."""
        h = self.ln1(x)
        if groups > 1:
            b, n, d = h.shape
            h = h.reshape(b * groups, n // groups, d)
            x = x + self.drop(self.attn(h, h, bias).reshape(b, n, d))
        else:
            x = x + self.drop(self.attn(h, h, bias))
        if self.cross is not None and self.ln_cross is not None and memory is not None:
            assert memory_bias is not None
            x = x + self.drop(self.cross(self.ln_cross(x), memory, memory_bias))
        return x + self.drop(self.ff(self.ln2(x)))


class LevelCrossAttention(nn.Module):
    """Residual cross-attention ``LN(query + Attn(query, key))`` used for the H2Rec level/branch mixing."""

    def __init__(self, d_model: int, n_heads: int) -> None:
        super().__init__()
        self.attn = Attention(d_model, n_heads)
        self.ln = nn.LayerNorm(d_model)

    def forward(self, query: Tensor, key: Tensor, bias: Tensor) -> Tensor:
        return self.ln(query + self.attn(query, key, bias))


class SidrecGenerator(nn.Module):
    """Dual-branch causal encoder + ID decoder; see the module docstring."""

    level_offsets: Tensor
    gate_prior: Tensor
    code_offsets: Tensor

    def __init__(self, config: GeneratorConfig) -> None:
        super().__init__()
        if config.n_items < 1:
            raise ValueError(f"n_items must be >= 1, got {config.n_items}")
        self.config = config
        c = config
        d, big_l, k = c.d_model, c.levels, c.codebook_size
        self.unknown_token = c.n_items + 1
        self.position = nn.Embedding(c.max_len, d)
        self.input_drop = Dropout(c.dropout)
        self.hash_emb = nn.Embedding(c.n_items + 2, d, padding_idx=0) if c.use_hash else None
        if c.use_semantic:
            self.level_emb = nn.Embedding(big_l * k, d)  # level l, code c -> row l*K + c
            self.semantic_mlp = nn.Sequential(nn.Linear(d, d), nn.GELU(), nn.Linear(d, d))
            self.register_buffer("level_offsets", torch.arange(big_l) * k, persistent=False)
        if c.use_hash and c.use_semantic:
            self.level_cross = nn.ModuleList([LevelCrossAttention(d, c.cross_heads) for _ in range(big_l)])
            self.semantic_cross = LevelCrossAttention(d, c.cross_heads)
            self.gate_mlp = nn.Sequential(nn.Linear(d, d), nn.GELU(), nn.Linear(d, big_l))
            self.level_mask_emb = nn.Parameter(torch.zeros(big_l, d))  # masked-granularity stand-ins
            self.register_buffer(
                "gate_prior", torch.linspace(c.gate_prior_start, c.gate_prior_end, big_l), persistent=False
            )
            self.memory_proj = nn.Linear(2 * d, d)
        self.backbone = nn.ModuleList(
            [Block(d, c.n_heads, c.dropout, cross=False) for _ in range(c.n_layers)]
        )
        self.backbone_ln = nn.LayerNorm(d)
        if c.generative:
            self.code_emb = nn.Embedding(c.id_length * k + 1, d)  # level l, code c -> l*K + c; last = BOS
            self.level_pos = nn.Embedding(c.id_length, d)
            self.decoder = nn.ModuleList(
                [Block(d, c.n_heads, c.dropout, cross=True) for _ in range(c.n_decoder_layers)]
            )
            self.decoder_ln = nn.LayerNorm(d)
            self.head_weight = nn.Parameter(torch.randn(c.id_length, d, k) * d**-0.5)  # one head per level
            self.head_bias = nn.Parameter(torch.zeros(c.id_length, k))
            self.register_buffer("code_offsets", torch.arange(c.id_length) * k, persistent=False)
        # Dual-branch dot-product head: user state . [hash emb; semantic emb].
        item_dim = d * (int(c.use_hash) + int(c.use_semantic))
        self.user_proj = nn.Linear(d, item_dim)
        self.apply(self._init_weights)

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, std=0.02)
            nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, std=0.02)

    # ----------------------------------------------------------------------------------- item views
    def hash_embedding(self, tokens: Tensor) -> Tensor:
        """Hash rows for tokens (…); tokens beyond the trained catalogue share the reserved row."""
        assert self.hash_emb is not None
        return self.hash_emb(tokens.clamp(max=self.unknown_token))

    def level_views(self, codes: Tensor) -> Tensor:
        """Per-level code embeddings v_l: codes (…, D) -> (…, L, d)."""
        return self.level_emb(codes[..., : self.config.levels] + self.level_offsets)

    def semantic_embedding(self, views: Tensor) -> Tensor:
        """Fused semantic embedding e_S = MLP(mean_l v_l): (…, L, d) -> (…, d)."""
        return self.semantic_mlp(views.mean(-2))

    def item_vectors(self, tokens: Tensor, codes: Tensor) -> Tensor:
        """[E_H(i); e_S(i)] (the dot-product head's targets) for tokens (…) with their codes (…, D)."""
        parts = []
        if self.hash_emb is not None:
            parts.append(self.hash_embedding(tokens))
        if self.config.use_semantic:
            parts.append(self.semantic_embedding(self.level_views(codes)))
        return torch.cat(parts, -1)

    def item_table(self, item_codes: Tensor) -> Tensor:
        """``item_vectors`` of every item, codes (n_items, D) -> (n_items, item_dim)."""
        tokens = torch.arange(1, item_codes.shape[0] + 1, device=item_codes.device)
        return self.item_vectors(tokens, item_codes)

    # ------------------------------------------------------------------------------------- encoder
    def run_backbone(self, x: Tensor, causal_bias: Tensor) -> Tensor:
        """The shared causal transformer: (B, T, d) -> (B, T, d)."""
        for block in self.backbone:
            x = block(x, causal_bias)
        return self.backbone_ln(x)

    def mix_levels(self, level_states: Tensor, gate: Tensor, masked: Tensor | None = None) -> Tensor:
        """Gate-weighted sum of z_l; ``masked`` (B, T, L) bool swaps chosen levels for learned vectors."""
        if masked is not None:
            level_states = torch.where(masked.unsqueeze(-1), self.level_mask_emb, level_states)
        return (gate.unsqueeze(-1) * level_states).sum(-2)  # (B, T, d)

    def masked_hash_states(self, state: EncoderState, masked: Tensor) -> Tensor:
        """F_H recomputed with the levels ``masked`` (B, T, L) replaced (masked-granularity view)."""
        assert state.level_states is not None and state.gate is not None
        bias = _history_bias(state.mask)
        return self.run_backbone(self.mix_levels(state.level_states, state.gate, masked), bias)

    def encode_state(self, history_tokens: Tensor, history_codes: Tensor) -> EncoderState:
        """Encode a left-padded history: tokens (B, T), codes (B, T, D)."""
        t = history_tokens.shape[1]
        mask = history_tokens > 0  # (B, T)
        positions = torch.arange(t, device=history_tokens.device) + (self.config.max_len - t)
        pos = self.position(positions)  # (T, d)
        bias = _history_bias(mask)  # (B, 1, T, T)
        c = self.config
        hash_seq = (
            self.input_drop(self.hash_embedding(history_tokens) + pos) if self.hash_emb is not None else None
        )
        if not c.use_semantic:
            assert hash_seq is not None
            memory = self.run_backbone(hash_seq, bias)
            return EncoderState(memory, mask, None, None, None)
        views = self.level_views(history_codes)  # (B, T, L, d)
        semantic_seq = self.input_drop(self.semantic_embedding(views) + pos)  # (B, T, d)
        if hash_seq is None:
            memory = self.run_backbone(semantic_seq, bias)
            return EncoderState(memory, mask, None, None, None)
        level_states = torch.stack(
            [
                cross(self.input_drop(views[:, :, lvl] + pos), hash_seq, bias)
                for lvl, cross in enumerate(self.level_cross)
            ],
            dim=2,
        )  # (B, T, L, d)
        gate = (self.gate_mlp(hash_seq) + self.gate_prior).softmax(-1)  # (B, T, L)
        hash_states = self.run_backbone(self.mix_levels(level_states, gate), bias)  # F_H (B, T, d)
        semantic_states = self.run_backbone(self.semantic_cross(hash_seq, semantic_seq, bias), bias)  # F_S
        memory = self.memory_proj(torch.cat([hash_states, semantic_states], -1))  # (B, T, d)
        return EncoderState(memory, mask, hash_states, level_states, gate)

    def encode(self, history_tokens: Tensor, history_codes: Tensor) -> Tensor:
        """CONTRACTS §3: tokens (B, T) int64, codes (B, T, D) int64 -> memory (B, T, d) float32."""
        return self.encode_state(history_tokens, history_codes).memory

    # ------------------------------------------------------------------------------------- decoder
    def decode(self, memory: Tensor, memory_mask: Tensor, prefix: Tensor) -> Tensor:
        """Decoder hidden states for ``[BOS, prefix]``: memory (N, T, d), prefix (N, S) -> (N, S+1, d)."""
        n, s = prefix.shape
        k = self.config.codebook_size
        bos = torch.full((n, 1), self.config.id_length * k, dtype=prefix.dtype, device=prefix.device)
        tokens = torch.cat([bos, prefix + self.code_offsets[:s]], 1)  # (N, S+1)
        x = self.code_emb(tokens) + self.level_pos.weight[: s + 1]  # (N, S+1, d)
        self_bias = _attention_bias(_causal(s + 1, prefix.device)).unsqueeze(0)  # (1, 1, S+1, S+1)
        memory_bias = _attention_bias(memory_mask.unsqueeze(1))  # (N, 1, 1, T)
        for block in self.decoder:
            x = block(x, self_bias, memory, memory_bias)
        return self.decoder_ln(x)

    def level_logits(self, hidden: Tensor) -> Tensor:
        """Per-level heads over decoder states: (N, S+1, d) -> (N, S+1, K) (position j scores level j)."""
        s1 = hidden.shape[1]
        return torch.einsum("njd,jdk->njk", hidden, self.head_weight[:s1]) + self.head_bias[:s1]

    def step(self, memory: Tensor, memory_mask: Tensor, prefix: Tensor) -> Tensor:
        """CONTRACTS §3: logits (N, K) for ID level S = prefix.shape[1] given the chosen codes."""
        s = prefix.shape[1]
        hidden = self.decode(memory, memory_mask, prefix)[:, s:]  # (N, 1, d): last position only
        weight = self.head_weight[s : s + 1]  # (1, d, K)
        return (torch.einsum("njd,jdk->njk", hidden, weight) + self.head_bias[s : s + 1]).squeeze(1)

    def sequence_id_logits(self, state: EncoderState, codes: Tensor) -> Tensor:
        """Teacher-forced logits of the next item's ID at every position: codes (B, T, D) -> (B, T, D, K).

        Training's form of ``id_logits``: the decoder inputs of all T positions of a sequence run as one
        row of T·D tokens, each block of D causal within itself (self-attention runs per block, never
        over all T·D tokens) and cross-attending to the memory up to its own position, so the
        cross-attention keys/values are computed once per sequence instead of once per target (the same
        numbers as ``id_logits`` on each position's visible memory).
        """
        b, t, d_len = codes.shape
        k = self.config.codebook_size
        bos = torch.full((b, t, 1), d_len * k, dtype=codes.dtype, device=codes.device)
        tokens = torch.cat([bos, codes[..., :-1] + self.code_offsets[: d_len - 1]], -1)  # (B, T, D)
        x = (self.code_emb(tokens) + self.level_pos.weight[:d_len]).reshape(b, t * d_len, -1)
        block = torch.arange(t, device=codes.device).repeat_interleave(d_len)  # (T·D,) position of a token
        self_bias = _attention_bias(_causal(d_len, codes.device)).unsqueeze(0)  # (1, 1, D, D): within a block
        visible = (torch.arange(t, device=codes.device)[None, :] <= block[:, None])[None] & state.mask[
            :, None, :
        ]
        memory_bias = _attention_bias(visible)  # (B, 1, T·D, T)
        for layer in self.decoder:
            x = layer(x, self_bias, state.memory, memory_bias, groups=t)
        hidden = self.decoder_ln(x).view(b, t, d_len, -1)
        return torch.einsum("btjd,jdk->btjk", hidden, self.head_weight) + self.head_bias

    def id_logits(self, memory: Tensor, memory_mask: Tensor, codes: Tensor) -> Tensor:
        """Teacher-forced logits of every level of the IDs ``codes`` (N, D) -> (N, D, K)."""
        return self.level_logits(self.decode(memory, memory_mask, codes[:, :-1]))

    # ------------------------------------------------------------------------------- dot-product head
    def user_vectors(self, memory: Tensor) -> Tensor:
        """User state for the dot-product head: (…, d) -> (…, item_dim)."""
        return self.user_proj(memory)
