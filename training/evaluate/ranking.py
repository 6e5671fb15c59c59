"""Scoring users with a trained generator, shared by validation (model selection) and the final report.

* Full ranking (TIGER / HiD-VAE protocol): the constrained beam's top-k over the whole catalogue; a
  non-generative model (SASRec) scores every item with the dot-product head instead. ``rerank=True``
  also re-orders the final beam two ways: by the dual-branch dot-product head alone (``reranked``), and
  by the product of the two experts (``fused``: the beam's ID log-probability plus the head's
  log-softmax over the whole catalogue, both log-probabilities of the same item, so no weight to tune).
* Sampled (H2Rec protocol): the target against ``n`` negatives not in the user's sequence, each scored by
  the model's log-likelihood of the candidate's ID (dot product for SASRec).

Users are processed in batches sorted by history length and padded only to the batch's longest history,
so short histories do not pay for the longest one.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor
from tqdm import tqdm

from training.generator.beam import PrefixTrie, constrained_beam_search
from training.generator.model import SidrecGenerator

__all__ = ["RERANKINGS", "RankingInputs", "full_ranking_top", "sample_negatives", "sampled_scores"]

#: the beam re-orderings ``full_ranking_top(rerank=True)`` returns, by name
RERANKINGS = ("reranked", "fused")


@dataclass
class RankingInputs:
    """The model and its lookup tables, on one device."""

    model: SidrecGenerator
    sid_table: Tensor  # (n_items + 1, D): token -> codes, row 0 = padding
    trie: PrefixTrie | None  # None for a non-generative model


def left_pad(histories: list[np.ndarray], max_len: int) -> Tensor:
    """Tokens (B, T) with T = the longest (truncated) history; item ``i`` becomes token ``i + 1``."""
    width = max(1, min(max_len, max(len(h) for h in histories)))
    tokens = np.zeros((len(histories), width), np.int64)
    for row, history in enumerate(histories):
        tail = history[-width:]
        if len(tail):
            tokens[row, width - len(tail) :] = tail + 1
    return torch.from_numpy(tokens)


def _batches(histories: list[np.ndarray], batch_size: int, label: str) -> Iterator[np.ndarray]:
    order = np.argsort([len(h) for h in histories], kind="stable")
    for start in tqdm(range(0, len(order), batch_size), desc=label, leave=False, disable=None):
        yield order[start : start + batch_size]


def _dot_scores(inputs: RankingInputs, memory: Tensor) -> Tensor:
    """Dot-product head scores of every item at the last position: (B, n_items)."""
    model = inputs.model
    return model.user_vectors(memory[:, -1]) @ model.item_table(inputs.sid_table[1:]).T


@torch.no_grad()
def full_ranking_top(
    inputs: RankingInputs,
    histories: list[np.ndarray],
    *,
    k: int,
    beam: int,
    batch_size: int = 256,
    rerank: bool = False,
    label: str = "ranking",
) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Top-``k`` item indices per user (N, k) (-1 where fewer than k items were reachable), and with
    ``rerank`` (generative models only) the same beam re-ordered as named in ``RERANKINGS`` (one beam
    search serves all)."""
    model = inputs.model
    model.eval()
    top = np.full((len(histories), k), -1, np.int64)
    reordered = (
        {name: np.full((len(histories), k), -1, np.int64) for name in RERANKINGS}
        if rerank and model.config.generative
        else {}
    )
    device = inputs.sid_table.device
    for idx in _batches(histories, batch_size, label):
        tokens = left_pad([histories[i] for i in idx], model.config.max_len).to(device)
        memory = model.encode(tokens, inputs.sid_table[tokens])
        if not model.config.generative:
            scores = _dot_scores(inputs, memory)
            top[idx] = torch.sort(-scores, dim=1, stable=True).indices[:, :k].cpu().numpy()
            continue
        assert inputs.trie is not None
        result = constrained_beam_search(model, memory, tokens > 0, inputs.trie, beam=beam, k=beam)
        items = result.items
        top[idx] = items[:, :k].cpu().numpy()
        if reordered:
            dot = _dot_scores(inputs, memory).log_softmax(-1).gather(1, items.clamp(min=0))  # (B, beam)
            for name, scores in (("reranked", dot), ("fused", dot + result.scores)):
                scores = torch.where(items >= 0, scores, float("-inf"))
                order = torch.sort(-scores, dim=1, stable=True).indices
                reordered[name][idx] = items.gather(1, order)[:, :k].cpu().numpy()
    return top, reordered


def sample_negatives(sequences: list[np.ndarray], n_items: int, n: int, seed: int) -> np.ndarray:
    """(U, n) distinct items outside each user's full sequence, reproducible from ``seed``."""
    if n_items - max(len(set(s.tolist())) for s in sequences) < n:
        raise ValueError(f"cannot sample {n} negatives from {n_items} items for the longest sequence")
    rng = np.random.default_rng(seed)
    out = np.empty((len(sequences), n), np.int64)
    for row, sequence in enumerate(sequences):
        seen = set(sequence.tolist())
        chosen: list[int] = []
        while len(chosen) < n:
            for item in rng.integers(0, n_items, 2 * n).tolist():
                if item not in seen:
                    seen.add(item)
                    chosen.append(item)
                    if len(chosen) == n:
                        break
        out[row] = chosen
    return out


@torch.no_grad()
def sampled_scores(
    inputs: RankingInputs,
    histories: list[np.ndarray],
    candidates: np.ndarray,
    *,
    batch_size: int = 128,
    label: str = "sampled",
) -> np.ndarray:
    """Score (N, C) of each candidate item: ID log-likelihood (generative) or dot product (SASRec)."""
    model = inputs.model
    model.eval()
    out = np.zeros(candidates.shape, np.float32)
    device = inputs.sid_table.device
    n_cand = candidates.shape[1]
    for idx in _batches(histories, batch_size, label):
        tokens = left_pad([histories[i] for i in idx], model.config.max_len).to(device)
        memory = model.encode(tokens, inputs.sid_table[tokens])
        items = torch.from_numpy(candidates[idx]).to(device)  # (B, C)
        if not model.config.generative:
            out[idx] = _dot_scores(inputs, memory).gather(1, items).cpu().numpy()
            continue
        codes = inputs.sid_table[items + 1].flatten(0, 1)  # (B*C, D)
        logits = model.id_logits(
            memory.repeat_interleave(n_cand, 0), (tokens > 0).repeat_interleave(n_cand, 0), codes
        )  # (B*C, D, K)
        loglik = logits.float().log_softmax(-1).gather(-1, codes.unsqueeze(-1)).squeeze(-1).sum(-1)
        out[idx] = loglik.view(len(idx), n_cand).cpu().numpy()
    return out
