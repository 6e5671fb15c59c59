"""The tokenizer's text encoder, frozen into the bundle so that the service embeds a new item's text
the way training embedded the catalogue (``service.text_encoder`` reads it; cold start by text).

For a ``tfidf-svd:DIM`` encoder the fit of ``training.data.text.TfidfSvdEncoder`` on the catalogue's
texts (vocabularies, idf, components: ``TfidfSvdFit``) is written as plain arrays; it is the
tokenizer's own fit, read back from its embedding cache (``fit_tfidf_svd``), or the same fit done
again when the cache is gone. Before they are kept, the service's own encoder reads them back and
embeds every catalogue text (at most ``PARITY_SAMPLE``); the fit's embeddings are the reference. The
largest difference is recorded (``manifest.metrics.text_encoder``), and beyond ``PARITY_ATOL``
nothing is written: a bundle without a text encoder refuses ``text`` (422) rather than serving a
wrong embedding. Other encoders (``st:``) are not exported yet.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from service.text_encoder import TfidfSvdTextEncoder
from training.data.text import TfidfSvdEncoder, fit_tfidf_svd, make_encoder

__all__ = ["PARITY_ATOL", "PARITY_SAMPLE", "TEXT_ENCODER_FILE", "export_text_encoder"]

TEXT_ENCODER_FILE = "text_encoder.npz"
#: catalogue texts embedded by both sides at export
PARITY_SAMPLE = 2000
#: largest |served - training| embedding entry accepted. The randomized SVD leaves a residual between
#: the catalogue's U·Σ (what training kept) and the projection on the components (all a new text can
#: get); on unit vectors it stays far below what moves a code (see the parity test).
PARITY_ATOL = 1e-3


def export_text_encoder(
    texts: Sequence[str], spec: str, out: Path, cache_dir: Path | None = None
) -> dict[str, Any] | None:
    """Write ``out/text_encoder.npz`` for the encoder ``spec`` fitted on the catalogue ``texts``;
    ``cache_dir``: where the tokenizer's run cached its embeddings and fit (``embed_texts``), read
    instead of fitting the encoder a second time.

    Returns what goes into the manifest's metrics: the spec, the file (None when the served embedding
    would differ by more than ``PARITY_ATOL``: then nothing is written) and the parity measured; None
    for an encoder that cannot be exported (not TF-IDF + SVD)."""
    encoder = make_encoder(spec)
    if not isinstance(encoder, TfidfSvdEncoder):
        return None
    fitted = fit_tfidf_svd(texts, encoder, cache_dir)
    path = out / TEXT_ENCODER_FILE
    np.savez(path, **fitted.arrays)  # type: ignore[arg-type]  # arrays only, no pickle
    served = TfidfSvdTextEncoder.load(path)
    step = max(1, len(texts) // PARITY_SAMPLE)
    sample = list(texts[::step])
    reference = fitted.embeddings[::step]  # what the tokenizer was trained on
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
