"""The reference constrained beam search (docs/CONTRACTS.md §3): the service must match its top-k exactly.

The catalogue's IDs are flattened into one dense child table per level (``PrefixTrie``): a beam carries an
integer trie node and one gather per level yields which codes lead to a real item — no per-beam Python
loop. Semantics, fixed by the contract:

* a level's score is the running sum of ``log_softmax`` over the full K codes;
* invalid codes (no real item under the prefix, or an excluded item at the last level) become ``-inf``
  *after* the log-softmax;
* all ``beam × K`` candidates of a request are ranked by a stable sort on ``-score`` (ties -> lower flat
  index ``beam_index * K + code``); the first level starts from one beam; ``-inf`` beams are dropped.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from training.generator.model import SidrecGenerator

__all__ = ["BeamResult", "PrefixTrie", "constrained_beam_search"]


@dataclass
class BeamResult:
    items: Tensor  # (N, k) int64 item indices, -1 where fewer than k items were reachable
    scores: Tensor  # (N, k) float32 total log-probabilities, -inf where items is -1
    survival: Tensor | None = None  # (N, D) bool: the target's prefix is live after each level


class PrefixTrie:
    """Dense per-level child tables over the catalogue's IDs.

    ``children[s][node, code]`` is the node reached at level ``s + 1`` (for the last level: the item
    index), or -1 when no item has that prefix. Level 0 has the single root node 0.
    """

    def __init__(self, sids: np.ndarray, codebook_size: int) -> None:
        if sids.ndim != 2 or len(np.unique(sids, axis=0)) != len(sids):
            raise ValueError("sids must be a 2-D table of unique IDs (one row per item)")
        if sids.min() < 0 or sids.max() >= codebook_size:
            raise ValueError(f"sids must hold codes in [0, {codebook_size})")
        n_items, depth = sids.shape
        nodes = [np.zeros(n_items, np.int64)]  # node of each item's prefix of length s
        for s in range(1, depth):
            _, inverse = np.unique(sids[:, :s], axis=0, return_inverse=True)
            nodes.append(inverse.reshape(-1).astype(np.int64))
        nodes.append(np.arange(n_items, dtype=np.int64))
        #: ``item_nodes[s][i]``: the node of item ``i``'s prefix of length ``s`` (the item itself at D)
        self.item_nodes = [torch.from_numpy(level) for level in nodes]
        self.children: list[Tensor] = []
        for s in range(depth):
            table = np.full((int(nodes[s].max()) + 1, codebook_size), -1, np.int64)
            table[nodes[s], sids[:, s]] = nodes[s + 1]
            self.children.append(torch.from_numpy(table))
        self.n_items = n_items
        self.depth = depth
        self.codebook_size = codebook_size

    def to(self, device: torch.device | str) -> PrefixTrie:
        self.children = [c.to(device) for c in self.children]
        self.item_nodes = [n.to(device) for n in self.item_nodes]
        return self


@torch.no_grad()
def constrained_beam_search(
    model: SidrecGenerator,
    memory: Tensor,
    memory_mask: Tensor,
    trie: PrefixTrie,
    *,
    beam: int,
    k: int,
    exclude: Tensor | None = None,
    targets: Tensor | None = None,
) -> BeamResult:
    """Top-``k`` real items per request: memory (N, T, d), mask (N, T), exclude (N, n_items) bool or None.

    With ``targets`` (N,) item indices, ``BeamResult.survival`` (N, D) tells whether each target's
    prefix was still among the live beams after each level (the prefix-survival diagnostic).
    """
    if k > beam:
        raise ValueError(f"k={k} cannot exceed beam={beam}")
    n = memory.shape[0]
    kk = trie.codebook_size
    device = memory.device
    neg_inf = torch.tensor(float("-inf"), device=device)
    node = torch.zeros(n, beam, dtype=torch.long, device=device)  # (N, beam)
    scores = torch.full((n, beam), float("-inf"), device=device)
    scores[:, 0] = 0.0  # one live beam to start
    prefix = torch.zeros(n, beam, 0, dtype=torch.long, device=device)  # (N, beam, S)
    survived: list[Tensor] = []
    memory_beams = memory.repeat_interleave(beam, 0)  # (N*beam, T, d)
    mask_beams = memory_mask.repeat_interleave(beam, 0)
    for s in range(trie.depth):
        if s == 0:  # every beam shares the empty prefix: one step per request is enough
            logits = model.step(memory, memory_mask, prefix[:, 0]).unsqueeze(1).expand(n, beam, kk)
        else:
            logits = model.step(memory_beams, mask_beams, prefix.reshape(n * beam, s)).view(n, beam, kk)
        logp = logits.float().log_softmax(-1)  # (N, beam, K)
        child = trie.children[s][node.clamp(min=0)]  # (N, beam, K)
        child = torch.where((node >= 0).unsqueeze(-1), child, -1)
        candidates = torch.where(child >= 0, scores.unsqueeze(-1) + logp, neg_inf)
        if exclude is not None and s == trie.depth - 1:
            banned = exclude.gather(1, child.clamp(min=0).view(n, -1)).view(n, beam, kk)
            candidates = torch.where(banned, neg_inf, candidates)
        flat = candidates.view(n, beam * kk)
        order = torch.sort(-flat, dim=1, stable=True).indices[:, :beam]  # (N, beam)
        scores = flat.gather(1, order)
        node = torch.where(torch.isfinite(scores), child.view(n, beam * kk).gather(1, order), -1)
        parent = order // kk
        code = order % kk
        prefix = torch.cat([prefix.gather(1, parent.unsqueeze(-1).expand(n, beam, s)), code.unsqueeze(-1)], 2)
        if targets is not None:
            survived.append((node == trie.item_nodes[s + 1][targets].unsqueeze(1)).any(1))
    return BeamResult(
        items=node[:, :k], scores=scores[:, :k], survival=torch.stack(survived, 1) if survived else None
    )
