"""Item text -> fixed-size embedding, behind one small interface, cached on disk by content.

The tokenizer only needs *some* semantic embedding per item. The offline default (TF-IDF + truncated SVD)
needs no download and is deterministic, so the demo, the tests and CI run anywhere; for real runs any
sentence-transformers model is one spec away (``"st:all-MiniLM-L6-v2"`` or ``"st:/path/to/model"``),
imported only when asked for. Embeddings are cached under a hash of the encoder spec and the exact texts,
so a changed catalogue or encoder can never be served a stale file.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Protocol

import numpy as np

from training.errors import ConfigError, DataError

__all__ = [
    "DEFAULT_ENCODER",
    "SentenceTransformerEncoder",
    "TextEncoder",
    "TfidfSvdEncoder",
    "cache_key",
    "embed_texts",
    "make_encoder",
]

DEFAULT_ENCODER = "tfidf-svd:256"


class TextEncoder(Protocol):
    """Anything that turns N texts into a float32 (N, dim) array."""

    spec: str

    def encode(self, texts: Sequence[str]) -> np.ndarray: ...


class TfidfSvdEncoder:
    """TF-IDF over word uni/bigrams and character n-grams, reduced by truncated SVD, L2-normalised.

    Character n-grams matter because catalogue titles are short and full of brand names and codes.
    Fitted on the texts it encodes (transductive): the catalogue *is* the corpus. When the corpus has
    fewer features than ``dim`` the missing dimensions are zero, so the output shape is always fixed.
    """

    def __init__(self, dim: int = 256, seed: int = 0) -> None:
        if dim < 1:
            raise ConfigError(f"tfidf-svd dimension must be >= 1, got {dim}")
        self.dim = dim
        self.seed = seed
        self.spec = f"tfidf-svd:{dim}"

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        from scipy.sparse import hstack
        from sklearn.decomposition import TruncatedSVD
        from sklearn.feature_extraction.text import TfidfVectorizer

        if not any(t.strip() for t in texts):
            raise DataError("tfidf-svd: every text is empty; nothing to embed")
        words = TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True, min_df=1)
        chars = TfidfVectorizer(analyzer="char_wb", ngram_range=(3, 4), sublinear_tf=True, min_df=2)
        blocks = [words.fit_transform(texts)]
        # min_df=2 can leave no character n-gram in a tiny corpus: words alone will do then.
        with contextlib.suppress(ValueError):
            blocks.append(chars.fit_transform(texts))
        features = hstack(blocks).tocsr()  # (N, F) sparse
        out = np.zeros((len(texts), self.dim), dtype=np.float32)  # (N, dim)
        rank = min(self.dim, features.shape[0] - 1, features.shape[1] - 1)
        if rank >= 1:
            svd = TruncatedSVD(n_components=rank, algorithm="randomized", n_iter=5, random_state=self.seed)
            reduced = svd.fit_transform(features)  # (N, rank)
            # Fix each component's sign so that the result does not depend on the solver's choice.
            signs = np.sign(reduced[np.abs(reduced).argmax(axis=0), np.arange(rank)])
            out[:, :rank] = reduced * np.where(signs == 0, 1.0, signs)
        else:
            dense = features.toarray()
            out[:, : min(self.dim, dense.shape[1])] = dense[:, : self.dim]
        norms = np.linalg.norm(out, axis=1, keepdims=True)
        return np.divide(out, norms, out=np.zeros_like(out), where=norms > 0)


class SentenceTransformerEncoder:
    """A sentence-transformers model by hub name or local directory (normalised embeddings)."""

    def __init__(self, model: str, batch_size: int = 128) -> None:
        self.model = model
        self.batch_size = batch_size
        self.spec = f"st:{model}"

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        try:
            from sentence_transformers import SentenceTransformer
        except ImportError as exc:
            raise ConfigError(
                f"encoder {self.spec!r} needs the sentence-transformers package "
                "(pip install sentence-transformers), or use the offline default "
                f"{DEFAULT_ENCODER!r}"
            ) from exc
        try:
            model = SentenceTransformer(self.model)
        except OSError as exc:
            raise ConfigError(f"encoder {self.spec!r}: cannot load the model ({exc})") from exc
        embeddings = model.encode(
            list(texts),
            batch_size=self.batch_size,
            normalize_embeddings=True,
            show_progress_bar=len(texts) > 10_000,
            convert_to_numpy=True,
        )
        return np.asarray(embeddings, dtype=np.float32)  # (N, dim)


def make_encoder(spec: str) -> TextEncoder:
    """``"tfidf-svd:DIM"`` or ``"st:MODEL"`` -> an encoder; anything else is a ConfigError."""
    kind, _, arg = spec.partition(":")
    if kind == "tfidf-svd":
        try:
            return TfidfSvdEncoder(int(arg) if arg else 256)
        except ValueError:
            raise ConfigError(f"encoder {spec!r}: the dimension must be an integer") from None
    if kind == "st" and arg:
        return SentenceTransformerEncoder(arg)
    raise ConfigError(f"unknown text encoder {spec!r}; use 'tfidf-svd:256' or 'st:<model name or dir>'")


def cache_key(texts: Sequence[str], encoder_spec: str) -> str:
    """sha256 over the encoder spec and every text (length-prefixed, so boundaries are unambiguous)."""
    digest = hashlib.sha256()
    for part in (encoder_spec, *texts):
        data = part.encode("utf-8")
        digest.update(len(data).to_bytes(8, "little"))
        digest.update(data)
    return digest.hexdigest()


def embed_texts(
    texts: Sequence[str], encoder_spec: str = DEFAULT_ENCODER, cache_dir: Path | None = None
) -> np.ndarray:
    """Embeddings float32 (N, dim) of ``texts``, read from / written to ``cache_dir`` when given."""
    encoder = make_encoder(encoder_spec)
    path = None
    if cache_dir is not None:
        path = Path(cache_dir) / f"{cache_key(texts, encoder.spec)}.npy"
        if path.is_file():
            cached = np.load(path, allow_pickle=False)
            if cached.shape[0] == len(texts):
                return cached
    embeddings = np.ascontiguousarray(encoder.encode(texts), dtype=np.float32)  # (N, dim)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{os.getpid()}.tmp.npy")
        np.save(tmp, embeddings, allow_pickle=False)
        tmp.replace(path)  # atomic: a concurrent reader sees the whole file or none
    return embeddings
