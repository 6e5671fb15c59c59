"""Behaviour for the tokenizer's input: item vectors from PPMI-SVD of training co-occurrence.

IDs built from short titles alone leave the top code levels without behavioural signal, so a beam loses
the next item after its first code. Concatenating each item's text embedding with a low-rank factor of
the positive PMI of items bought near each other (training sequences only: never a validation or test
target) gives the quantiser behaviour to split on, while the tag heads keep every level readable.
Cold-start items, which have no behaviour yet, get zeros in this part (``TokenizerGraph`` pads them).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from scipy.sparse import coo_matrix
from sklearn.decomposition import TruncatedSVD

from training.data import Dataset
from training.data.text import embed_texts
from training.generator.cooccurrence import pair_counts

__all__ = ["collaborative_input", "ppmi_svd", "tokenizer_input"]


def ppmi_svd(
    sequences: list[np.ndarray], n_items: int, dims: int, window: int = 3, seed: int = 0
) -> np.ndarray:
    """Unit-length item vectors (n_items, dims) from the positive PMI of pairs within ±``window``.

    Items with no co-occurrence (or fewer factors than ``dims``) get zero rows/columns.
    """
    i, j, counts = pair_counts(sequences, window)
    out = np.zeros((n_items, dims), np.float32)
    if counts.size == 0:
        return out
    total = counts.sum()
    marginal = np.bincount(i, weights=counts, minlength=n_items)
    pmi = np.log(counts * total / (marginal[i] * marginal[j]))
    keep = pmi > 0
    matrix = coo_matrix((pmi[keep], (i[keep], j[keep])), shape=(n_items, n_items)).tocsr()
    rank = min(dims, n_items - 1)
    svd = TruncatedSVD(n_components=rank, algorithm="randomized", n_iter=7, random_state=seed)
    factors = svd.fit_transform(matrix)  # U * S
    factors /= np.sqrt(np.maximum(svd.singular_values_, 1e-12))  # U * sqrt(S): symmetric split
    norms = np.linalg.norm(factors, axis=1, keepdims=True)
    out[:, :rank] = np.where(norms > 0, factors / np.maximum(norms, 1e-12), 0.0)
    return out


def collaborative_input(text: np.ndarray, behaviour: np.ndarray, weight: float) -> np.ndarray:
    """[unit text ; weight × unit behaviour] (N, E + dims): the tokenizer's training input."""
    norms = np.linalg.norm(text, axis=1, keepdims=True)
    unit_text = text / np.maximum(norms, 1e-12)
    return np.concatenate([unit_text, weight * behaviour], axis=1).astype(np.float32)


def tokenizer_input(dataset: Dataset, encoder: str, dims: int, weight: float, cache_dir: Path) -> np.ndarray:
    """What the tokenizer trains on (N, E [+ dims]): the items' text embeddings (``encoder``, cached in
    ``cache_dir``), with ``dims`` > 0 beside their behaviour in the training split."""
    text = embed_texts(dataset.item_texts(), encoder, cache_dir)
    if dims <= 0:
        return text
    return collaborative_input(text, ppmi_svd(dataset.split().train, dataset.n_items, dims), weight)
