"""The tokenizer's text encoder, frozen into the bundle so that the service embeds a new item's text
the way training embedded the catalogue (``service.text_encoder`` reads it; cold start by text).

For a ``tfidf-svd:DIM`` encoder the fit of ``training.data.text.TfidfSvdEncoder`` is repeated on the
catalogue's texts (same analysers, same seed: the same vocabularies, idf and components) and its
pieces are written as plain arrays. Before they are kept, the service's own encoder reads them back
and embeds every catalogue text (at most ``PARITY_SAMPLE``); ``embed_texts`` is the reference. The
largest difference is recorded (``manifest.metrics.text_encoder``), and beyond ``PARITY_ATOL``
nothing is written: a bundle without a text encoder refuses ``text`` (422) rather than serving a
wrong embedding. Other encoders (``st:``) are not exported yet.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from service.text_encoder import TfidfSvdTextEncoder
from training.data.text import TfidfSvdEncoder, embed_texts, make_encoder

__all__ = ["PARITY_ATOL", "PARITY_SAMPLE", "TEXT_ENCODER_FILE", "export_text_encoder"]

TEXT_ENCODER_FILE = "text_encoder.npz"
#: catalogue texts embedded by both sides at export
PARITY_SAMPLE = 2000
#: largest |served - training| embedding entry accepted. The randomized SVD leaves a residual between
#: the catalogue's U·Σ (what training kept) and the projection on the components (all a new text can
#: get); on unit vectors it stays far below what moves a code (see the parity test).
PARITY_ATOL = 1e-3


def _fit(encoder: TfidfSvdEncoder, texts: Sequence[str]) -> dict[str, np.ndarray]:
    """The arrays of ``encoder`` fitted on ``texts``, exactly as ``TfidfSvdEncoder.encode`` fits."""
    from scipy.sparse import hstack
    from sklearn.decomposition import TruncatedSVD
    from sklearn.feature_extraction.text import TfidfVectorizer

    words = TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True, min_df=1)
    chars = TfidfVectorizer(analyzer="char_wb", ngram_range=(3, 4), sublinear_tf=True, min_df=2)
    blocks = [words.fit_transform(texts)]
    char_vocab, char_idf = np.array([], dtype=str), np.zeros(0)
    with contextlib.suppress(ValueError):
        blocks.append(chars.fit_transform(texts))
        char_vocab, char_idf = chars.get_feature_names_out().astype(str), chars.idf_
    features = hstack(blocks).tocsr()  # (N, F) sparse
    rank = min(encoder.dim, features.shape[0] - 1, features.shape[1] - 1)
    if rank >= 1:
        svd = TruncatedSVD(n_components=rank, algorithm="randomized", n_iter=5, random_state=encoder.seed)
        reduced = svd.fit_transform(features)  # (N, rank)
        signs = np.sign(reduced[np.abs(reduced).argmax(axis=0), np.arange(rank)])
        components, signs = svd.components_, np.where(signs == 0, 1.0, signs)
    else:  # a corpus too small for an SVD: the features themselves, cut to ``dim``
        width = min(encoder.dim, features.shape[1])
        components, signs = np.eye(width, features.shape[1]), np.ones(width)
    return {
        "word_vocab": words.get_feature_names_out().astype(str),
        "word_idf": words.idf_,
        "char_vocab": char_vocab,
        "char_idf": char_idf,
        "components": components.astype(np.float32),  # (rank, F): most of the file
        "signs": signs,
        "dim": np.array(encoder.dim),
    }


def export_text_encoder(
    texts: Sequence[str], spec: str, out: Path, cache_dir: Path | None = None
) -> dict[str, Any] | None:
    """Write ``out/text_encoder.npz`` for the encoder ``spec`` fitted on the catalogue ``texts``;
    ``cache_dir``: where the tokenizer's run cached its embeddings (``embed_texts``), read as the
    reference instead of fitting the encoder a second time.

    Returns what goes into the manifest's metrics: the spec, the file (None when the served embedding
    would differ by more than ``PARITY_ATOL``: then nothing is written) and the parity measured; None
    for an encoder that cannot be exported (not TF-IDF + SVD)."""
    encoder = make_encoder(spec)
    if not isinstance(encoder, TfidfSvdEncoder):
        return None
    path = out / TEXT_ENCODER_FILE
    np.savez(path, **_fit(encoder, texts))  # type: ignore[arg-type]  # arrays only, no pickle
    served = TfidfSvdTextEncoder.load(path)
    step = max(1, len(texts) // PARITY_SAMPLE)
    sample = list(texts[::step])
    reference = embed_texts(texts, spec, cache_dir)[::step]  # what the tokenizer was trained on
    ours = np.stack([served.encode(text) for text in sample])  # (S, dim)
    drift = float(np.abs(ours - reference).max())
    kept = drift <= PARITY_ATOL
    if not kept:
        path.unlink()
    return {
        "encoder": spec,
        "file": TEXT_ENCODER_FILE if kept else None,
        "parity_max_abs": drift,
        "parity_texts": len(sample),
    }
