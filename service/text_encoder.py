"""Item text -> the embedding the tokenizer was trained on, for cold start by text (``PUT /items``).

A bundle exported from a run whose tokenizer read ``tfidf-svd:DIM`` embeddings carries the fitted
encoder as arrays (``text_encoder.npz``, written by ``training.export.text_encoder``): the two TF-IDF
vocabularies (word 1–2-grams, character 3–4-grams within words) with their idf weights, the SVD
components and the sign fixed for each. ``TfidfSvdTextEncoder`` repeats scikit-learn's analysers
and weighting with numpy alone (the service never imports scikit-learn or training): lower-cased
text, sublinear term frequency times idf, each block L2-normalised, projected on the components,
signed, zero-padded to ``DIM`` and L2-normalised, which is ``training.data.text.TfidfSvdEncoder``.
Training fitted the SVD on the catalogue and kept its ``U·Σ``; projecting a text on the components
gives the same up to the randomized solver's residual, which the export measures and records
(``manifest.metrics.text_encoder``) and a test bounds.
"""

from __future__ import annotations

import itertools
import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from service.errors import BundleError

__all__ = ["TfidfSvdTextEncoder"]

_TOKEN = re.compile(r"(?u)\b\w\w+\b")  # scikit-learn's default token_pattern
_SPACES = re.compile(r"\s\s+")

#: the arrays of ``text_encoder.npz``
FIELDS = ("word_vocab", "word_idf", "char_vocab", "char_idf", "components", "signs", "dim")


def _word_ngrams(text: str) -> list[str]:
    tokens = _TOKEN.findall(text)
    return tokens + [f"{a} {b}" for a, b in itertools.pairwise(tokens)]


def _char_wb_ngrams(text: str, low: int = 3, high: int = 4) -> list[str]:
    """scikit-learn's ``char_wb`` analyser: n-grams inside space-padded words; a word shorter than
    ``n`` counts once, whole."""
    grams: list[str] = []
    for word in _SPACES.sub(" ", text).split():
        padded = f" {word} "
        for n in range(low, high + 1):
            grams.extend(padded[i : i + n] for i in range(max(1, len(padded) - n + 1)))
            if len(padded) <= n:
                break
    return grams


def _tfidf(grams: list[str], vocabulary: dict[str, int], idf: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The row's non-zero TF-IDF entries: columns int64 (M,) ascending and their L2-normalised
    values float64 (M,). Only the text's own n-grams are touched: the vocabulary runs to millions of
    n-grams on a large catalogue, so a dense row would make every text cost the whole vocabulary."""
    counts = Counter(column for gram in grams if (column := vocabulary.get(gram)) is not None)
    columns = np.array(sorted(counts), dtype=np.int64)  # (M,)
    values = np.array([counts[c] for c in columns.tolist()], dtype=np.float64)  # (M,) term counts
    values = (1.0 + np.log(values)) * idf[columns]  # sublinear tf × idf
    norm = np.linalg.norm(values)
    return columns, values / norm if norm > 0 else values


@dataclass(frozen=True)
class TfidfSvdTextEncoder:
    words: dict[str, int]
    word_idf: np.ndarray  # float64 (F_w,)
    chars: dict[str, int]
    char_idf: np.ndarray  # float64 (F_c,)
    components: np.ndarray  # float32 (rank, F_w + F_c)
    signs: np.ndarray  # float64 (rank,)
    dim: int

    @classmethod
    def load(cls, path: Path) -> TfidfSvdTextEncoder:
        try:
            with np.load(path, allow_pickle=False) as arrays:
                data = {name: arrays[name] for name in FIELDS}
        except (OSError, ValueError, KeyError) as exc:
            raise BundleError(f"{path}: unreadable text encoder ({exc})") from exc
        encoder = cls(
            {str(g): i for i, g in enumerate(data["word_vocab"])},
            data["word_idf"].astype(np.float64),
            {str(g): i for i, g in enumerate(data["char_vocab"])},
            data["char_idf"].astype(np.float64),
            data["components"].astype(np.float32, copy=False),
            data["signs"].astype(np.float64),
            int(data["dim"]),
        )
        width = len(encoder.words) + len(encoder.chars)
        rank = encoder.components.shape[0]
        if encoder.components.shape[1] != width or encoder.signs.shape != (rank,) or rank > encoder.dim:
            raise BundleError(f"{path}: the text encoder's arrays do not fit together")
        return encoder

    def encode(self, text: str) -> np.ndarray:
        """One text -> float32 (dim,), unit length (zero when no n-gram of it is in the vocabulary)."""
        lowered = text.lower()
        word_columns, word_values = _tfidf(_word_ngrams(lowered), self.words, self.word_idf)
        char_columns, char_values = _tfidf(_char_wb_ngrams(lowered), self.chars, self.char_idf)
        present = np.concatenate([word_columns, char_columns + len(self.words)])  # (M,) of F_w + F_c
        features = np.concatenate([word_values, char_values])  # (M,): a few dozen of the many n-grams
        out = np.zeros(self.dim, dtype=np.float64)
        out[: self.components.shape[0]] = (self.components[:, present] @ features) * self.signs
        norm = np.linalg.norm(out)
        return (out / norm if norm > 0 else out).astype(np.float32)
