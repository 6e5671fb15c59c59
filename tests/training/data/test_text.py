import importlib.util

import numpy as np
import pytest

from training.data.text import (
    TFIDF_SVD_FIELDS,
    TfidfSvdEncoder,
    cache_key,
    embed_texts,
    fit_tfidf_svd,
    make_encoder,
)
from training.errors import ConfigError, DataError

TEXTS = [
    "hydrating face cream 50 ml Lumiera",
    "hydrating face cream travel size Lumiera",
    "stainless frying pan 24 cm Copperleaf",
    "non-stick frying pan 28 cm Copperleaf",
    "wireless earbuds black Sonora",
    "noise-cancelling headphones silver Sonora",
]


def test_tfidf_svd_shape_determinism_and_semantics():
    a = embed_texts(TEXTS, "tfidf-svd:16")
    b = embed_texts(TEXTS, "tfidf-svd:16")
    assert a.shape == (6, 16) and a.dtype == np.float32
    assert np.array_equal(a, b)
    np.testing.assert_allclose(np.linalg.norm(a, axis=1), 1.0, atol=1e-5)
    similarity = a @ a.T
    assert similarity[0, 1] > similarity[0, 2] and similarity[2, 3] > similarity[2, 4]


def test_cache_hit_reads_the_file_and_key_depends_on_texts_and_encoder(tmp_path):
    first = embed_texts(TEXTS, "tfidf-svd:8", cache_dir=tmp_path)
    files = list(tmp_path.glob("*.npy"))
    assert [f.name for f in files] == [f"{cache_key(TEXTS, 'tfidf-svd:8')}.npy"]
    np.save(files[0], first + 1.0, allow_pickle=False)  # a hit must come from the file, not a recompute
    np.testing.assert_array_equal(embed_texts(TEXTS, "tfidf-svd:8", cache_dir=tmp_path), first + 1.0)
    assert cache_key(TEXTS, "tfidf-svd:8") != cache_key(TEXTS, "tfidf-svd:16")
    assert cache_key(TEXTS, "tfidf-svd:8") != cache_key([*TEXTS[:-1], TEXTS[-1] + "!"], "tfidf-svd:8")
    assert cache_key(["ab", "c"], "x") != cache_key(["a", "bc"], "x")


def test_tiny_corpus_still_has_the_fixed_dimension():
    out = embed_texts(["one", "two"], "tfidf-svd:32")
    assert out.shape == (2, 32)


def test_errors():
    with pytest.raises(ConfigError, match="unknown text encoder"):
        make_encoder("word2vec")
    with pytest.raises(ConfigError, match="integer"):
        make_encoder("tfidf-svd:big")
    with pytest.raises(DataError, match="empty"):
        embed_texts(["", " "], "tfidf-svd:4")


@pytest.mark.skipif(
    importlib.util.find_spec("sentence_transformers") is not None,
    reason="sentence-transformers is installed; the missing-package message cannot occur",
)
def test_sentence_transformers_missing_is_a_clear_error():
    with pytest.raises(ConfigError, match="sentence-transformers"):
        embed_texts(TEXTS, "st:all-MiniLM-L6-v2")


def test_a_tfidf_fit_is_cached_beside_its_embeddings_and_read_back(tmp_path):
    encoder = TfidfSvdEncoder(8)
    embeddings = embed_texts(TEXTS, "tfidf-svd:8", cache_dir=tmp_path)
    fresh = encoder.fit(TEXTS)
    np.testing.assert_array_equal(embeddings, fresh.embeddings)
    cached = fit_tfidf_svd(TEXTS, encoder, tmp_path)
    assert sorted(cached.arrays) == sorted(TFIDF_SVD_FIELDS)
    for name in TFIDF_SVD_FIELDS:
        np.testing.assert_array_equal(cached.arrays[name], fresh.arrays[name])
    np.save(tmp_path / f"{cache_key(TEXTS, 'tfidf-svd:8')}.npy", embeddings + 1.0, allow_pickle=False)
    again = fit_tfidf_svd(TEXTS, encoder, tmp_path)  # read back, not fitted a second time
    np.testing.assert_array_equal(again.embeddings, embeddings + 1.0)
    assert cached.arrays["components"].shape[0] == 5  # the SVD's rank: 6 texts - 1
