"""Honest semantic-ID metrics, computed from code tables and tag ids (tag 0 = unknown is excluded).

Collision rate follows the HiD-VAE paper: 1 - distinct code tuples / items, over the whole catalogue,
before disambiguation.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from training.tokenizer.ids import group_sizes

__all__ = ["codebook_stats", "collision_stats", "prefix_tag_purity", "tag_accuracy", "text_probe_accuracy"]

#: items (of the training side and of the held-out side each) the text probe is fitted and read on
PROBE_ITEMS = 20_000


def collision_stats(codes: np.ndarray) -> dict[str, Any]:
    """collision_rate, max_items_per_id and the histogram {items per ID: number of IDs}."""
    sizes = group_sizes(codes)
    values, counts = np.unique(sizes, return_counts=True)
    return {
        "collision_rate": float(1.0 - len(sizes) / codes.shape[0]),
        "max_items_per_id": int(sizes.max()),
        "items_per_id_histogram": {str(int(v)): int(c) for v, c in zip(values, counts, strict=True)},
    }


def codebook_stats(codes: np.ndarray, codebook_size: int) -> dict[str, list[float]]:
    """Per level: share of the K codes in use, and perplexity exp(entropy) of the code distribution."""
    usage, perplexity = [], []
    for level in range(codes.shape[1]):
        counts = np.bincount(codes[:, level], minlength=codebook_size).astype(np.float64)
        p = counts[counts > 0] / counts.sum()
        usage.append(float((counts > 0).mean()))
        perplexity.append(float(np.exp(-(p * np.log(p)).sum())))
    return {"codebook_usage": usage, "codebook_perplexity": perplexity}


def tag_accuracy(predicted: np.ndarray, tags: np.ndarray) -> list[float]:
    """Per level: share of items with a known tag whose predicted tag id is right (nan if none known)."""
    accuracy = []
    for level in range(predicted.shape[1]):
        known = tags[:, level] > 0
        hits = predicted[known, level] == tags[known, level]
        accuracy.append(float(hits.mean()) if known.any() else float("nan"))
    return accuracy


def prefix_tag_purity(codes: np.ndarray, tags: np.ndarray) -> list[float]:
    """Per level l: share of items (known level-l tag) carrying the majority tag of their l+1 code prefix."""
    purity = []
    for level in range(min(codes.shape[1], tags.shape[1])):
        known = tags[:, level] > 0
        if not known.any():
            purity.append(float("nan"))
            continue
        _, prefix = np.unique(codes[known, : level + 1], axis=0, return_inverse=True)
        pairs = np.stack([prefix.reshape(-1), tags[known, level]], axis=1)
        distinct_pairs, pair_counts = np.unique(pairs, axis=0, return_counts=True)  # (P, 2), (P,)
        majority = np.zeros(prefix.max() + 1, dtype=np.int64)  # (n_prefixes,)
        np.maximum.at(majority, distinct_pairs[:, 0], pair_counts)
        purity.append(float(majority.sum() / known.sum()))
    return purity


def text_probe_accuracy(embeddings: np.ndarray, tags: np.ndarray, valid: np.ndarray) -> list[float]:
    """Per level: held-out accuracy of a logistic regression fitted on the *input* embeddings.

    The reference for ``tag_accuracy``: how much of an item's tags its text embedding reveals at all
    (same items, same split, unknown excluded). The tag heads read 32-d quantised codes, so they can
    approach this figure but have no way above it.
    """
    from sklearn.linear_model import LogisticRegression

    # A probe fitted on at most PROBE_ITEMS items of each side: the same figure on Beauty (12,101 items),
    # minutes instead of hours on a 10^6-item catalogue (benchmarks/scale.py).
    rng = np.random.default_rng(0)
    sample = np.zeros(len(tags), dtype=bool)
    for side in (valid, ~valid):
        members = np.flatnonzero(side)
        sample[
            members if len(members) <= PROBE_ITEMS else rng.choice(members, PROBE_ITEMS, replace=False)
        ] = True
    accuracy = []
    for level in range(tags.shape[1]):
        train = sample & ~valid & (tags[:, level] > 0)
        test = sample & valid & (tags[:, level] > 0)
        if not test.any() or len(np.unique(tags[train, level])) < 2:
            accuracy.append(float("nan"))
            continue
        probe = LogisticRegression(C=10.0, max_iter=300).fit(embeddings[train], tags[train, level])
        accuracy.append(float((probe.predict(embeddings[test]) == tags[test, level]).mean()))
    return accuracy
