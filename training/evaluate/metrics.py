"""Ranking metrics with one relevant item per user (leave-one-out).

A *rank* is the 0-based position of the held-out item in a model's ranking (``-1`` = not retrieved).
Recall@K = share of users with ``0 <= rank < K``; NDCG@K = mean of ``1 / log2(rank + 2)`` over those users
(0 for the others) — with a single relevant item the ideal DCG is 1.
"""

from __future__ import annotations

import numpy as np

__all__ = ["ranking_metrics", "sampled_ranks", "target_ranks"]


def target_ranks(top_items: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """Rank of each target in its row of ``top_items`` (N, k); -1 when absent."""
    hits = top_items == targets[:, None]  # (N, k)
    return np.where(hits.any(1), hits.argmax(1), -1)


def sampled_ranks(target_scores: np.ndarray, negative_scores: np.ndarray) -> np.ndarray:
    """Rank of the target among itself + negatives: the number of negatives scored strictly higher."""
    return (negative_scores > target_scores[:, None]).sum(1)


def ranking_metrics(ranks: np.ndarray, ks: tuple[int, ...], recall_name: str = "recall") -> dict[str, float]:
    """``{recall@K, ndcg@K}`` for each K; empty input gives NaN so nobody mistakes it for a zero."""
    out: dict[str, float] = {}
    ranks = np.asarray(ranks)
    for k in ks:
        hit = (ranks >= 0) & (ranks < k)
        gain = np.where(hit, 1.0 / np.log2(np.maximum(ranks, 0) + 2.0), 0.0)
        out[f"{recall_name}@{k}"] = float(hit.mean()) if len(ranks) else float("nan")
        out[f"ndcg@{k}"] = float(gain.mean()) if len(ranks) else float("nan")
    return out
