"""Training objective: ID cross-entropy + H2Rec alignment losses + the optional dot-product head.

``L = id_weight * ce + item_weight * L_item + seq_weight * L_seq + dot_weight * L_dot`` — each weight
lives in ``LossConfig`` and is applied exactly once, here. The dot-product head's loss is a full softmax
over the catalogue (the recipe of a strong SASRec): at 10^4 items one matrix product per batch.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from training.generator.model import EncoderState, SidrecGenerator

__all__ = [
    "GeneratorObjective",
    "LossConfig",
    "LossParts",
    "catalogue_cross_entropy",
    "code_guided_alignment",
    "dot_loss",
    "generator_loss",
    "masked_granularity_loss",
    "native_bf16",
]


@dataclass
class LossConfig:
    """Weights and temperatures (H2Rec defaults: 0.1 / 0.1, tau 0.5 / 1.0)."""

    item_weight: float = 0.1
    seq_weight: float = 0.1
    dot_weight: float = 1.0
    #: weight of the ID decoder's cross-entropy (generative models)
    id_weight: float = 1.0
    #: the dot-product head's softmax: over the whole catalogue (0) or over the target and this many
    #: items drawn uniformly per batch (sampled softmax; an item equal to the target is masked out)
    dot_negatives: int = 0
    #: label smoothing of the dot-product head's softmax: the per-item hash rows are both read and
    #: ranked with, and a one-hot target lets them memorise the training sequences
    dot_smoothing: float = 0.0
    #: the full softmax's (M, C) products and softmax in bfloat16 (float32 accumulation, float32
    #: weights) where the hardware multiplies it natively (CUDA, CPUs with AVX512-BF16 or AMX):
    #: that product is most of a CPU step; elsewhere float32, as emulated bfloat16 is slower
    dot_bf16: bool = False
    item_temperature: float = 0.5
    seq_temperature: float = 1.0


@dataclass
class LossParts:
    total: Tensor
    parts: dict[str, float]


@dataclass
class PositiveTables:
    """Torch copies of ``AlignmentPositives`` (on the training device)."""

    neighbours: Tensor  # (n_items, P) int64, -1 = none
    weights: Tensor  # (n_items, P) float32
    tuple_ids: Tensor  # (n_items,) int64


def code_guided_alignment(
    semantic: Tensor, hashed: Tensor, items: Tensor, positives: PositiveTables, temperature: float
) -> Tensor:
    """Weighted multi-positive InfoNCE between e_S and E_H of distinct items, both directions (cosine).

    ``items`` (n,) must be unique so that a duplicate never acts as its own negative. Positive weights:
    the item itself 1, PMI neighbours their weight in [0.3, 1], same code tuple 1.
    """
    n = items.shape[0]
    slot = torch.full((positives.tuple_ids.shape[0],), -1, dtype=torch.long, device=items.device)
    slot[items] = torch.arange(n, device=items.device)
    neighbour_slot = slot[positives.neighbours[items].clamp(min=0)]  # (n, P)
    present = (positives.neighbours[items] >= 0) & (neighbour_slot >= 0)
    weights = torch.zeros(n, n + 1, device=items.device)  # column n swallows absent neighbours
    weights.scatter_reduce_(
        1,
        torch.where(present, neighbour_slot, torch.full_like(neighbour_slot, n)),
        positives.weights[items],
        reduce="amax",
    )
    weights = weights[:, :n]
    tuples = positives.tuple_ids[items]
    weights = torch.maximum(weights, (tuples[:, None] == tuples[None, :]).float())  # includes self
    sim = F.normalize(semantic, dim=-1) @ F.normalize(hashed, dim=-1).T / temperature  # (n, n)
    forward = -(weights * sim.log_softmax(1)).sum(1) / weights.sum(1)
    backward = -(weights.T * sim.T.log_softmax(1)).sum(1) / weights.T.sum(1)
    return 0.5 * (forward.mean() + backward.mean())


def masked_granularity_loss(model: SidrecGenerator, state: EncoderState, temperature: float) -> Tensor:
    """Mask the ⌊L/2⌋ lowest-gate levels, re-run the backbone, contrast last-position user vectors.

    Symmetric InfoNCE over the batch (the full and masked views of one user are positives) so the
    sequence representation does not hinge on fine-grained levels alone.
    """
    assert state.gate is not None and state.hash_states is not None
    n_masked = model.config.levels // 2
    if n_masked == 0:
        return state.gate.new_zeros(())
    lowest = state.gate.topk(n_masked, dim=-1, largest=False).indices  # (B, T, m)
    masked = torch.zeros_like(state.gate, dtype=torch.bool).scatter(-1, lowest, True)  # (B, T, L)
    full = F.normalize(state.hash_states[:, -1], dim=-1)  # (B, d): left padding -> last = last real
    partial = F.normalize(model.masked_hash_states(state, masked)[:, -1], dim=-1)
    sim = full @ partial.T / temperature  # (B, B)
    labels = torch.arange(sim.shape[0], device=sim.device)
    return 0.5 * (F.cross_entropy(sim, labels) + F.cross_entropy(sim.T, labels))


class _CatalogueCrossEntropy(torch.autograd.Function):
    """``F.cross_entropy(users @ items.T, targets, label_smoothing=eps)``, mean over rows, with one
    logits-sized buffer.

    Over the whole catalogue the logits (M, C) are the largest tensor of a step, and on CPU each fresh
    buffer that size costs as much in page faults as the arithmetic on it: torch's version writes the
    logits, the log-softmax, a zeroed gradient, a scattered one and a smoothing term. Here the product
    is written once and turned into the softmax in place (kept for the backward, which turns it into
    the gradient in place: ``softmax - (1 - eps) * onehot - eps / C``); the target and mean logits come
    from row products that never touch it. With ``dtype`` bfloat16 the two catalogue-sized products and
    the softmax run at that width (float32 accumulation) and the gradients return in the inputs' dtype.
    """

    @staticmethod
    def forward(
        ctx: Any, users: Tensor, items: Tensor, targets: Tensor, eps: float, dtype: torch.dtype | None
    ) -> Tensor:
        low_users, low_items = users.to(dtype or users.dtype), items.to(dtype or items.dtype)
        probs = low_users @ low_items.T  # (M, C): the one big buffer
        top = probs.amax(1, keepdim=True)
        total = probs.sub_(top).exp_().sum(1, keepdim=True)  # accumulated in float32, rounded to dtype
        probs.div_(total)
        lse = (top.to(users.dtype) + total.to(users.dtype).log()).squeeze(1)  # (M,)
        picked = (users * items[targets]).sum(1)
        mean_logit = users @ items.mean(0)
        ctx.save_for_backward(low_users, low_items, targets)
        ctx.probs, ctx.eps, ctx.dtype = probs, eps, users.dtype  # probs: the backward overwrites it
        return (lse - (1 - eps) * picked - eps * mean_logit).mean()

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, Tensor, None, None, None]:
        users, items, targets = ctx.saved_tensors
        if ctx.probs is None:
            raise RuntimeError("catalogue_cross_entropy supports one backward per graph")
        out, ctx.probs = ctx.probs, None  # the saved softmax becomes the gradient
        m, c = out.shape
        out.sub_(ctx.eps / c)
        out[torch.arange(m, device=out.device), targets] -= 1 - ctx.eps
        out.mul_(grad / m)
        return (out @ items).to(ctx.dtype), (out.T @ users).to(ctx.dtype), None, None, None


def catalogue_cross_entropy(
    users: Tensor, items: Tensor, targets: Tensor, smoothing: float, dtype: torch.dtype | None = None
) -> Tensor:
    """Mean label-smoothed cross-entropy of the logits ``users`` (M, d) @ ``items`` (C, d).T against
    ``targets`` (M,), with the (M, C) products and softmax in ``dtype`` (default: the inputs')."""
    return _CatalogueCrossEntropy.apply(users, items, targets, smoothing, dtype)


@functools.cache
def native_bf16(device: torch.device) -> bool:
    """Whether ``device`` multiplies bfloat16 matrices natively (not by emulation)."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    return bool(torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported())


def dot_loss(
    model: SidrecGenerator, users: Tensor, targets: Tensor, sid_table: Tensor, config: LossConfig
) -> Tensor:
    """Cross-entropy of the dot-product head: users (M, item_dim), target items (M,).

    Full softmax over the catalogue, or (``negatives`` > 0) over each target and ``negatives`` items
    drawn uniformly for the whole batch: at 10^4 items the full softmax and its gradient are most of a
    CPU training step, and a uniform sample needs no correction of the logits.
    """
    n_items, negatives = sid_table.shape[0] - 1, config.dot_negatives
    if negatives <= 0 or negatives >= n_items:
        dtype = torch.bfloat16 if config.dot_bf16 and native_bf16(users.device) else None
        return catalogue_cross_entropy(
            users, model.item_table(sid_table[1:]), targets, config.dot_smoothing, dtype
        )
    sampled = torch.randint(n_items, (negatives,), device=users.device)  # (S,)
    items = torch.cat([targets, sampled]) + 1  # tokens
    table = model.item_vectors(items, sid_table[items])  # (M + S, item_dim)
    positive = (users * table[: targets.shape[0]]).sum(-1, keepdim=True)  # (M, 1)
    negative = users @ table[targets.shape[0] :].T  # (M, S)
    is_target = sampled[None, :] == targets[:, None]  # (M, S)
    negative = negative.masked_fill(is_target, float("-inf"))
    log_p = torch.cat([positive, negative], 1).log_softmax(-1)  # (M, 1 + S); the target in column 0
    # label smoothing spreads over the candidates actually offered (a masked one has log p = -inf)
    offered = log_p[:, 0] + log_p[:, 1:].masked_fill(is_target, 0.0).sum(1)
    uniform = -offered / (1 + (~is_target).sum(1))
    return ((1 - config.dot_smoothing) * -log_p[:, 0] + config.dot_smoothing * uniform).mean()


def generator_loss(
    model: SidrecGenerator,
    inputs: Tensor,
    targets: Tensor,
    sid_table: Tensor,
    positives: PositiveTables | None,
    config: LossConfig,
    hash_tokens: Tensor | None = None,
) -> LossParts:
    """Loss over every position of left-padded chunks.

    inputs/targets (B, T) tokens (``targets[:, t]`` follows ``inputs[:, t]``); ``sid_table`` (n_items+1, D)
    maps tokens to codes (row 0 = padding); ``hash_tokens`` optionally replaces some inputs by the
    unknown-item token for the hash branch only (cold-start training).
    """
    state = model.encode_state(inputs if hash_tokens is None else hash_tokens, sid_table[inputs])
    valid = (inputs > 0) & (targets > 0)  # (B, T)
    rows, cols = valid.nonzero(as_tuple=True)  # M positions
    target_items = targets[rows, cols] - 1  # (M,)
    parts: dict[str, Tensor] = {}
    c = model.config
    if c.generative and config.id_weight > 0:
        target_codes = sid_table[targets]  # (B, T, D)
        logits = model.sequence_id_logits(state, target_codes)[rows, cols]  # (M, D, K)
        parts["ce"] = F.cross_entropy(
            logits.reshape(-1, c.codebook_size), target_codes[rows, cols].reshape(-1)
        )
    if config.dot_weight > 0 or not c.generative:
        users = model.user_vectors(state.memory[rows, cols])  # (M, item_dim)
        parts["dot"] = dot_loss(model, users, target_items, sid_table, config)
    if c.use_hash and c.use_semantic:
        if positives is not None and config.item_weight > 0:
            items = target_items.unique()
            semantic = model.semantic_embedding(model.level_views(sid_table[items + 1]))
            parts["item"] = code_guided_alignment(
                semantic, model.hash_embedding(items + 1), items, positives, config.item_temperature
            )
        if config.seq_weight > 0:
            parts["seq"] = masked_granularity_loss(model, state, config.seq_temperature)
    weights = {
        "ce": config.id_weight,
        "dot": config.dot_weight if c.generative else 1.0,
        "item": config.item_weight,
        "seq": config.seq_weight,
    }
    total = sum(
        (weights[name] * value for name, value in parts.items()),
        start=inputs.new_zeros((), dtype=torch.float32),
    )
    return LossParts(total, {name: float(value.detach()) for name, value in parts.items()})


class GeneratorObjective(nn.Module):
    """The model plus its loss as one module, so DDP wraps a single ``forward`` (gradient sync hooks)."""

    def __init__(
        self, model: SidrecGenerator, sid_table: Tensor, positives: PositiveTables | None, config: LossConfig
    ) -> None:
        super().__init__()
        self.model = model
        self.sid_table = sid_table
        self.positives = positives
        self.config = config

    def forward(
        self, inputs: Tensor, targets: Tensor, hash_tokens: Tensor | None = None
    ) -> tuple[Tensor, dict[str, float]]:
        parts = generator_loss(
            self.model, inputs, targets, self.sid_table, self.positives, self.config, hash_tokens
        )
        return parts.total, parts.parts
