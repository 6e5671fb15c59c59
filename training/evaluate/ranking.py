"""Scoring users with a trained generator, shared by validation (model selection) and the final report.

Full ranking over the whole catalogue, in one or more *orderings* (``ORDERINGS``), all from one encoder
pass and at most one beam search:

* ``beam`` (TIGER / HiD-VAE protocol): the constrained beam's top-k;
* ``dot``: the dual-branch dot-product head scoring every item exactly (H2Rec's own scoring; SASRec's
  only ordering);
* ``reranked``: the final beam re-ordered by the head alone;
* ``fused``: the final beam re-ordered by the product of the two experts (the beam's ID log-probability
  plus the head's log-softmax over the catalogue, both log-probabilities of the same item, so no weight
  to tune).

Items already in the user's history are never recommended (``exclude_seen``), as the service does by
default. Sampled (H2Rec protocol): the target against ``n`` negatives not in the user's sequence, each
scored by the model's log-likelihood of the candidate's ID (dot product for SASRec).

Users are processed in batches sorted by history length and padded only to the batch's longest history,
so short histories do not pay for the longest one.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor
from tqdm import tqdm

from training.generator.beam import PrefixTrie, constrained_beam_search
from training.generator.model import SidrecGenerator

__all__ = [
    "ORDERINGS",
    "RankingInputs",
    "available_orderings",
    "full_ranking_top",
    "prefix_survival",
    "sample_negatives",
    "sampled_scores",
]

#: every ordering ``full_ranking_top`` can produce, by name (see the module docstring)
ORDERINGS = ("beam", "dot", "reranked", "fused")


@dataclass
class RankingInputs:
    """The model and its lookup tables, on one device."""

    model: SidrecGenerator
    sid_table: Tensor  # (n_items + 1, D): token -> codes, row 0 = padding
    trie: PrefixTrie | None  # None for a non-generative model


def available_orderings(model: SidrecGenerator, head_trained: bool) -> tuple[str, ...]:
    """What a model can rank by: a generator without a trained dot-product head only by its beam."""
    if not model.config.generative:
        return ("dot",)
    return ORDERINGS if head_trained else ("beam",)


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


def _encode(inputs: RankingInputs, batch: list[np.ndarray]) -> tuple[Tensor, Tensor]:
    """Left-padded tokens (B, T) of a batch of histories and the model's memory (B, T, d)."""
    tokens = left_pad(batch, inputs.model.config.max_len).to(inputs.sid_table.device)
    return tokens, inputs.model.encode(tokens, inputs.sid_table[tokens])


def _seen(histories: list[np.ndarray], n_items: int, device: torch.device) -> Tensor:
    """(B, n_items) bool: the items of each full history (not only the encoded window)."""
    seen = torch.zeros(len(histories), n_items, dtype=torch.bool, device=device)
    for row, history in enumerate(histories):
        seen[row, torch.from_numpy(np.asarray(history, np.int64))] = True
    return seen


def _top(scores: Tensor, k: int) -> np.ndarray:
    """Indices of the ``k`` best scores per row; -1 where the score is -inf."""
    values, order = scores.topk(min(k, scores.shape[1]), dim=1)  # a full sort costs 10x at 10^4 items
    return torch.where(torch.isfinite(values), order, -1).cpu().numpy()


@torch.no_grad()
def full_ranking_top(
    inputs: RankingInputs,
    histories: list[np.ndarray],
    *,
    k: int,
    beam: int,
    orderings: Sequence[str] = ("beam",),
    exclude_seen: bool = True,
    batch_size: int = 256,
    label: str = "ranking",
) -> dict[str, np.ndarray]:
    """Top-``k`` item indices per user (N, k) for each of ``orderings`` (-1 where fewer than k items
    were reachable); one encoder pass and at most one beam search serve them all."""
    model = inputs.model
    model.eval()
    unknown = set(orderings) - set(ORDERINGS)
    if unknown or (not model.config.generative and set(orderings) != {"dot"}):
        raise ValueError(
            f"orderings {list(orderings)}: this model can rank by {available_orderings(model, True)}"
        )
    out = {name: np.full((len(histories), k), -1, np.int64) for name in orderings}
    device = inputs.sid_table.device
    n_items = inputs.sid_table.shape[0] - 1
    needs_beam = bool(set(orderings) & {"beam", "reranked", "fused"})
    for idx in _batches(histories, batch_size, label):
        batch = [histories[i] for i in idx]
        tokens, memory = _encode(inputs, batch)
        seen = _seen(batch, n_items, device) if exclude_seen else None
        dot = None
        if set(orderings) & {"dot", "reranked", "fused"}:
            dot = _dot_scores(inputs, memory).log_softmax(-1)  # (B, n_items)
            if seen is not None:
                dot = dot.masked_fill(seen, float("-inf"))
        if "dot" in orderings:
            assert dot is not None
            out["dot"][idx] = _top(dot, k)
        if not needs_beam:
            continue
        assert inputs.trie is not None
        result = constrained_beam_search(
            model, memory, tokens > 0, inputs.trie, beam=beam, k=beam, exclude=seen
        )
        items = result.items
        if "beam" in orderings:
            out["beam"][idx] = items[:, :k].cpu().numpy()
        for name in {"reranked", "fused"} & set(orderings):
            assert dot is not None
            head = dot.gather(1, items.clamp(min=0))  # (B, beam)
            scores = head + result.scores if name == "fused" else head
            scores = torch.where(items >= 0, scores, float("-inf"))
            order = torch.sort(-scores, dim=1, stable=True).indices
            out[name][idx] = (
                torch.where(torch.isfinite(scores.gather(1, order)), items.gather(1, order), -1)[:, :k]
                .cpu()
                .numpy()
            )
    return out


@torch.no_grad()
def prefix_survival(
    inputs: RankingInputs,
    histories: list[np.ndarray],
    targets: np.ndarray,
    *,
    beam: int,
    batch_size: int = 256,
) -> list[float]:
    """Share of targets whose ID prefix is still among the constrained beam's live beams after each
    level (D values; the last is the beam's recall): where the beam loses the next item."""
    model = inputs.model
    model.eval()
    assert inputs.trie is not None
    device = inputs.sid_table.device
    n_items = inputs.sid_table.shape[0] - 1
    alive = np.zeros((len(histories), inputs.trie.depth), bool)
    for idx in _batches(histories, batch_size, "prefix survival"):
        batch = [histories[i] for i in idx]
        tokens, memory = _encode(inputs, batch)
        result = constrained_beam_search(
            model,
            memory,
            tokens > 0,
            inputs.trie,
            beam=beam,
            k=beam,
            exclude=_seen(batch, n_items, device),
            targets=torch.from_numpy(targets[idx]).to(device),
        )
        assert result.survival is not None
        alive[idx] = result.survival.cpu().numpy()
    return [round(float(v), 4) for v in alive.mean(0)]


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
    by_dot: bool = False,
    label: str = "sampled",
) -> np.ndarray:
    """Score (N, C) of each candidate item: ID log-likelihood, or (``by_dot``, and always for SASRec)
    the dot-product head's score."""
    model = inputs.model
    model.eval()
    out = np.zeros(candidates.shape, np.float32)
    device = inputs.sid_table.device
    n_cand = candidates.shape[1]
    for idx in _batches(histories, batch_size, label):
        tokens, memory = _encode(inputs, [histories[i] for i in idx])
        items = torch.from_numpy(candidates[idx]).to(device)  # (B, C)
        if by_dot or not model.config.generative:
            out[idx] = _dot_scores(inputs, memory).gather(1, items).cpu().numpy()
            continue
        codes = inputs.sid_table[items + 1].flatten(0, 1)  # (B*C, D)
        logits = model.id_logits(
            memory.repeat_interleave(n_cand, 0), (tokens > 0).repeat_interleave(n_cand, 0), codes
        )  # (B*C, D, K)
        loglik = logits.float().log_softmax(-1).gather(-1, codes.unsqueeze(-1)).squeeze(-1).sum(-1)
        out[idx] = loglik.view(len(idx), n_cand).cpu().numpy()
    return out
