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
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np

from training.errors import ConfigError, DataError

__all__ = [
    "DEFAULT_ENCODER",
    "TFIDF_SVD_FIELDS",
    "SentenceTransformerEncoder",
    "TextEncoder",
    "TfidfSvdEncoder",
    "TfidfSvdFit",
    "cache_key",
    "embed_texts",
    "fit_tfidf_svd",
    "make_encoder",
]

DEFAULT_ENCODER = "tfidf-svd:256"


class TextEncoder(Protocol):
    """Anything that turns N texts into a float32 (N, dim) array."""

    spec: str

    def encode(self, texts: Sequence[str]) -> np.ndarray: ...


@dataclass(frozen=True)
class TfidfSvdFit:
    """A ``TfidfSvdEncoder`` fitted on a corpus: the corpus's embeddings, and the fit as plain arrays
    (``TFIDF_SVD_FIELDS``), all that embeds a new text the same way (``service.text_encoder``)."""

    embeddings: np.ndarray  # float32 (N, dim), unit rows
    arrays: dict[str, np.ndarray]


#: the arrays of a ``TfidfSvdFit``: vocabularies and idf of both analysers, the SVD components
#: (rank, F_w + F_c) float32 with the sign fixed for each, and the output dimension
TFIDF_SVD_FIELDS = ("word_vocab", "word_idf", "char_vocab", "char_idf", "components", "signs", "dim")


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
        return self.fit(texts).embeddings

    def fit(self, texts: Sequence[str]) -> TfidfSvdFit:
        """Fit on ``texts``: their embeddings and the arrays that embed any text alike."""
        from scipy.sparse import hstack
        from sklearn.decomposition import TruncatedSVD
        from sklearn.feature_extraction.text import TfidfVectorizer

        if not any(t.strip() for t in texts):
            raise DataError("tfidf-svd: every text is empty; nothing to embed")
        words = TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True, min_df=1)
        chars = TfidfVectorizer(analyzer="char_wb", ngram_range=(3, 4), sublinear_tf=True, min_df=2)
        blocks = [words.fit_transform(texts)]
        char_vocab, char_idf = np.array([], dtype=str), np.zeros(0)
        # min_df=2 can leave no character n-gram in a tiny corpus: words alone will do then.
        with contextlib.suppress(ValueError):
            blocks.append(chars.fit_transform(texts))
            char_vocab, char_idf = chars.get_feature_names_out().astype(str), chars.idf_
        features = hstack(blocks).tocsr()  # (N, F) sparse
        out = np.zeros((len(texts), self.dim), dtype=np.float32)  # (N, dim)
        rank = min(self.dim, features.shape[0] - 1, features.shape[1] - 1)
        if rank >= 1:
            svd = TruncatedSVD(n_components=rank, algorithm="randomized", n_iter=5, random_state=self.seed)
            reduced = svd.fit_transform(features)  # (N, rank)
            # Fix each component's sign so that the result does not depend on the solver's choice.
            signs = np.sign(reduced[np.abs(reduced).argmax(axis=0), np.arange(rank)])
            signs = np.where(signs == 0, 1.0, signs)
            out[:, :rank] = reduced * signs
            components = svd.components_
        else:  # a corpus too small for an SVD: the features themselves, cut to ``dim``
            width = min(self.dim, features.shape[1])
            out[:, :width] = features[:, :width].toarray()
            components, signs = np.eye(width, features.shape[1]), np.ones(width)
        norms = np.linalg.norm(out, axis=1, keepdims=True)
        arrays = {
            "word_vocab": words.get_feature_names_out().astype(str),
            "word_idf": words.idf_,
            "char_vocab": char_vocab,
            "char_idf": char_idf,
            "components": components.astype(np.float32),  # (rank, F): most of the bytes
            "signs": signs,
            "dim": np.array(self.dim),
        }
        return TfidfSvdFit(np.divide(out, norms, out=np.zeros_like(out), where=norms > 0), arrays)


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


def _cache_paths(cache_dir: Path, texts: Sequence[str], spec: str) -> tuple[Path, Path]:
    """Where the embeddings (``.npy``) and, for TF-IDF + SVD, the fit's arrays (``.npz``) are cached."""
    stem = Path(cache_dir) / cache_key(texts, spec)
    return stem.with_suffix(".npy"), stem.with_suffix(".fit.npz")


def _write_atomic(path: Path, write: Callable[[Path], None]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.stem}.{os.getpid()}.tmp{path.suffix}")
    write(tmp)
    tmp.replace(path)  # atomic: a concurrent reader sees the whole file or none


def _save_embeddings(path: Path, embeddings: np.ndarray) -> None:
    _write_atomic(path, lambda tmp: np.save(tmp, embeddings, allow_pickle=False))


def embed_texts(
    texts: Sequence[str], encoder_spec: str = DEFAULT_ENCODER, cache_dir: Path | None = None
) -> np.ndarray:
    """Embeddings float32 (N, dim) of ``texts``, read from / written to ``cache_dir`` when given (for
    TF-IDF + SVD with the fit's arrays beside them: ``fit_tfidf_svd`` reads them back)."""
    encoder = make_encoder(encoder_spec)
    path = None
    if cache_dir is not None:
        path = _cache_paths(cache_dir, texts, encoder.spec)[0]
        if path.is_file():
            cached = np.load(path, allow_pickle=False)
            if cached.shape[0] == len(texts):
                return cached
    if isinstance(encoder, TfidfSvdEncoder):
        return fit_tfidf_svd(texts, encoder, cache_dir).embeddings
    embeddings = np.ascontiguousarray(encoder.encode(texts), dtype=np.float32)  # (N, dim)
    if path is not None:
        _save_embeddings(path, embeddings)
    return embeddings


def fit_tfidf_svd(
    texts: Sequence[str], encoder: TfidfSvdEncoder, cache_dir: Path | None = None
) -> TfidfSvdFit:
    """``encoder`` fitted on ``texts``, read from ``cache_dir`` when an earlier fit on the same texts
    left it there (``embed_texts`` does), else fitted and, with a ``cache_dir``, left there. The
    export reads the tokenizer's fit back so: on a large catalogue the fit is minutes."""
    paths = _cache_paths(cache_dir, texts, encoder.spec) if cache_dir is not None else None
    if paths is not None and all(path.is_file() for path in paths):
        embeddings = np.load(paths[0], allow_pickle=False)
        with np.load(paths[1], allow_pickle=False) as data:
            arrays = {name: data[name] for name in TFIDF_SVD_FIELDS if name in data}
        if embeddings.shape[0] == len(texts) and len(arrays) == len(TFIDF_SVD_FIELDS):
            return TfidfSvdFit(embeddings, arrays)
    fitted = encoder.fit(texts)
    fitted = TfidfSvdFit(np.ascontiguousarray(fitted.embeddings, dtype=np.float32), fitted.arrays)
    if paths is not None:
        _write_atomic(paths[1], lambda tmp: np.savez(tmp, **fitted.arrays))  # type: ignore[arg-type]
        _save_embeddings(paths[0], fitted.embeddings)  # last: its presence means both are whole
    return fitted
