"""Cold start by text: the bundle's text encoder (``service.text_encoder``, written by
``training.export.text_encoder``) embeds an item's text as training did, so ``PUT /items`` with the
text gives the ID the tokenizer gives the training embedding."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from sklearn.feature_extraction.text import TfidfVectorizer

from service.app import create_app
from service.bundle import load_bundle
from service.recommender import Recommender
from service.text_encoder import TfidfSvdTextEncoder, _char_wb_ngrams, _word_ngrams
from tests.service.conftest import API_KEY, settings_for
from tests.training.export.tiny_run import TEXT_ENCODER, TinyRun
from training.export.text_encoder import PARITY_ATOL

KEY = {"X-API-Key": API_KEY}
AWKWARD = [
    "Serum  Vitamin-C 30ml",
    "a b cd",
    "Crème brûlée — ÉDITION 2",
    "x",
    "tab\tand\nnewline   spaces",
    "",
    "日本語 テキスト",
]


@pytest.mark.parametrize("text", AWKWARD)
def test_analysers_cut_text_as_scikit_learn_does(text: str) -> None:
    words = TfidfVectorizer(ngram_range=(1, 2)).build_analyzer()
    chars = TfidfVectorizer(analyzer="char_wb", ngram_range=(3, 4)).build_analyzer()
    assert _word_ngrams(text.lower()) == words(text)
    assert _char_wb_ngrams(text.lower()) == chars(text)


def test_the_served_embedding_is_the_training_embedding(tiny_run: TinyRun) -> None:
    """Every catalogue text, embedded by the bundle's encoder, is within ``PARITY_ATOL`` of the
    training embedding and tokenises to the same codes (the tokenizer graph on both)."""
    bundle = load_bundle(tiny_run.bundle, ["CPUExecutionProvider"], threads=1)
    assert bundle.text_encoder is not None
    recorded = bundle.manifest.metrics["text_encoder"]
    assert recorded["encoder"] == TEXT_ENCODER and recorded["parity_max_abs"] <= PARITY_ATOL
    texts = tiny_run.dataset.item_texts()
    served = np.stack([bundle.text_encoder.encode(t) for t in texts])  # (N, E)
    assert np.abs(served - tiny_run.embeddings).max() <= PARITY_ATOL
    recommender = Recommender(bundle)
    same = [
        (recommender.tokenize(a.astype(np.float64))[0] == recommender.tokenize(b.astype(np.float64))[0]).all()
        for a, b in zip(served, tiny_run.embeddings, strict=True)
    ]
    assert all(same)


def test_put_by_text_gets_the_id_training_would_have(tiny_run: TinyRun) -> None:
    item = tiny_run.dataset.items[42]
    with TestClient(create_app(settings_for(tiny_run.bundle))) as client:
        by_text = client.put("/items/by-text", json={"text": item.text(), "title": "t"}, headers=KEY)
        assert by_text.status_code == 200, by_text.text
        by_embedding = client.put(
            "/items/by-embedding", json={"embedding": tiny_run.embeddings[42].tolist()}, headers=KEY
        )
        codes = by_text.json()["codes"]
        assert codes[:-1] == by_embedding.json()["codes"][:-1]  # same tuple; the next free code after it
        assert codes[-1] != by_embedding.json()["codes"][-1]
        by_title = client.put("/items/by-title", json={"title": item.title}, headers=KEY)
        assert by_title.status_code == 200, by_title.text
        empty = client.put("/items/nothing", json={}, headers=KEY)
        assert empty.status_code == 422 and "embedding" in empty.text


def test_a_bundle_without_a_text_encoder_refuses_text(tiny_run: TinyRun, tmp_path: Path) -> None:
    copy = tmp_path / "bundle"
    shutil.copytree(tiny_run.bundle, copy)
    manifest = json.loads((copy / "manifest.json").read_text())
    (copy / manifest["tables"].pop("text_encoder")["file"]).unlink()
    (copy / "manifest.json").write_text(json.dumps(manifest))
    with TestClient(create_app(settings_for(copy))) as client:
        refused = client.put("/items/x", json={"text": "new serum"}, headers=KEY)
        assert refused.status_code == 422 and "no text encoder" in refused.text


def test_a_text_encoder_that_does_not_fit_the_tokenizer_is_refused(tiny_run: TinyRun, tmp_path: Path) -> None:
    path = tmp_path / "text_encoder.npz"
    with np.load(tiny_run.bundle / "text_encoder.npz", allow_pickle=False) as arrays:
        np.savez(path, **{**dict(arrays), "signs": np.ones(1)})
    with pytest.raises(Exception, match="do not fit together"):
        TfidfSvdTextEncoder.load(path)
