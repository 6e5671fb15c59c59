"""Export: the bundle verifies, and its ONNX graphs reproduce the torch models.

Tolerance: ONNX Runtime and torch run the same float32 graph with different kernels and operation
orders; the observed differences are ~1e-6 on logits of magnitude ~1-10 (a few ulps accumulated over
two attention layers). ``ATOL = 1e-4`` leaves two orders of magnitude of headroom for other CPUs,
while every real export fault we have met (a baked-in prefix length, dropout left on by the exporter)
moves logits by > 1e-1.

Beam parity: the service's numpy/ONNX beam search must return exactly the torch reference's
(``training.generator.beam``) items in the same order, on >= 200 histories, with and without
``exclude_seen``.
"""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch

from service.bundle import load_bundle
from service.errors import BundleError
from service.manifest import SCHEMA_VERSION
from service.recommender import Query, Recommender
from tests.training.export.tiny_run import HISTORY, TinyRun
from training.generator.beam import PrefixTrie, constrained_beam_search

ATOL = 1e-4
CPU = ["CPUExecutionProvider"]


@pytest.fixture(scope="module", params=[True, False], ids=["incremental", "reference-step"])
def recommender(tiny_run: TinyRun, request: pytest.FixtureRequest) -> Recommender:
    """Both decoding paths: the incremental (K/V-cached) graphs and the reference step graph."""
    return Recommender(load_bundle(tiny_run.bundle, CPU, threads=1), kv_cache=request.param)


def histories(tiny_run: TinyRun, n: int) -> list[list[int]]:
    split = tiny_run.dataset.split()
    return [split.test_history[u][-HISTORY:].tolist() for u in range(n)]


def torch_memory(tiny_run: TinyRun, batch: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
    tokens = torch.zeros(len(batch), HISTORY, dtype=torch.long)  # (B, T)
    for row, history in enumerate(batch):
        tokens[row, HISTORY - len(history) :] = torch.tensor(history) + 1
    codes = torch.from_numpy(tiny_run.sids)[(tokens - 1).clamp(min=0)]  # (B, T, D)
    codes[tokens == 0] = 0
    with torch.no_grad():
        return tiny_run.generator.encode(tokens, codes), tokens > 0


def test_manifest_and_graphs_verify(tiny_run: TinyRun) -> None:
    bundle = load_bundle(tiny_run.bundle, CPU, threads=1)
    manifest = json.loads((tiny_run.bundle / "manifest.json").read_text())
    assert manifest["id_spec"]["id_length"] == tiny_run.sids.shape[1]
    assert bundle.provider == "CPUExecutionProvider"
    assert {g: len(spec.inputs) for g, spec in bundle.manifest.graphs.items()} == {
        "tokenizer": 1,
        "tag_heads": 1,
        "generator_encoder": 2,
        "generator_step": 3,
        "generator_cross_kv": 1,
        "generator_step_incremental": 4,
    }
    assert bundle.manifest.schema_version == SCHEMA_VERSION and bundle.manifest.has_kv_cache
    np.testing.assert_array_equal(bundle.sids, tiny_run.sids)


def test_encoder_and_step_match_torch(tiny_run: TinyRun, recommender: Recommender) -> None:
    """The grouped encoder (real positions; padding is masked) and every decoding level (the empty
    prefix too) with several beams per request that continue *shuffled* parents, so an incremental
    decoder that fed a beam another beam's cache would fail."""
    batch, width = [*histories(tiny_run, 40), []], 3  # lengths 1..T and an empty history
    memory, mask = recommender.encode(batch, tiny_run.sids)  # grouped by length, (B, T_b, d)
    ref_memory, ref_mask = torch_memory(tiny_run, batch)  # (B, T, d), every history padded to T
    assert memory.shape[1] == HISTORY  # the empty history keeps every position
    np.testing.assert_allclose(memory[mask], ref_memory.numpy()[ref_mask.numpy()], atol=ATOL)
    np.testing.assert_array_equal(mask, ref_mask.numpy())
    np.testing.assert_allclose(memory[-1], ref_memory[-1].numpy(), atol=ATOL)  # all padding, but read
    rng = np.random.default_rng(0)
    decoder = recommender.decoder(memory, mask)
    prefix = np.zeros((len(batch), 1, 0), dtype=np.int64)  # (B, W, S)
    parent = np.zeros((len(batch), 1), dtype=np.int64)  # (B, W)
    for s in range(tiny_run.sids.shape[1]):
        with torch.no_grad():
            expected = tiny_run.generator.step(
                ref_memory.repeat_interleave(prefix.shape[1], 0),
                ref_mask.repeat_interleave(prefix.shape[1], 0),
                torch.from_numpy(prefix.reshape(len(batch) * prefix.shape[1], s)),
            ).numpy()  # (N, K)
        got = decoder.step(prefix, parent)  # (B, W, K)
        np.testing.assert_allclose(got.reshape(expected.shape), expected, atol=ATOL)
        parent = rng.integers(0, prefix.shape[1], size=(len(batch), width))  # (B, W)
        codes = rng.integers(0, recommender.codebook_size, size=(len(batch), width, 1))
        prefix = np.concatenate([np.take_along_axis(prefix, parent[:, :, None], axis=1), codes], axis=2)


def test_tokenizer_graphs_match_torch(tiny_run: TinyRun, recommender: Recommender) -> None:
    tokenizer = recommender.bundle.sessions["tokenizer"]
    x = tiny_run.embeddings[:64]
    codes, *tag_logits = tokenizer.run(None, {"embedding": x})
    sids = tiny_run.sids[:64, :-1]
    np.testing.assert_array_equal(codes, sids)
    probs = recommender.bundle.sessions["tag_heads"].run(None, {"codes": sids})
    assert len(probs) == len(tag_logits) == recommender.bundle.manifest.n_tag_levels
    for logits, p in zip(tag_logits, probs, strict=True):
        np.testing.assert_allclose(torch.from_numpy(logits).softmax(-1).numpy(), p, atol=ATOL)


@pytest.mark.parametrize("exclude_seen", [False, True])
def test_service_beam_search_equals_torch_reference(
    tiny_run: TinyRun, recommender: Recommender, exclude_seen: bool
) -> None:
    batch = histories(tiny_run, 240)  # encoded in groups of similar length
    batch[7] = []  # a user without history: decoded from an all-padding memory
    beam, k = 10, 5
    queries = [Query(history=h, k=k, beam=beam, exclude_seen=exclude_seen, explain=False) for h in batch]
    served = recommender.recommend(queries)
    memory, mask = torch_memory(tiny_run, batch)
    exclude = None
    if exclude_seen:
        exclude = torch.zeros(len(batch), len(tiny_run.sids), dtype=torch.bool)
        for row, history in enumerate(batch):
            exclude[row, history] = True
    trie = PrefixTrie(tiny_run.sids, recommender.codebook_size)
    reference = constrained_beam_search(
        tiny_run.generator, memory, mask, trie, beam=beam, k=k, exclude=exclude
    )
    assert all(len(hits) == k for hits in served)
    for row, hits in enumerate(served):
        expected = [int(i) for i in reference.items[row] if i >= 0]
        assert [h.item for h in hits] == expected, f"history {row}"
        np.testing.assert_allclose(
            [h.score for h in hits], reference.scores[row, : len(hits)].numpy(), atol=1e-3
        )


def test_tampered_bundle_is_refused(tiny_run: TinyRun, tmp_path) -> None:
    copy = tmp_path / "bundle"
    shutil.copytree(tiny_run.bundle, copy)
    with (copy / "sids.npy").open("r+b") as handle:
        handle.seek(-1, 2)
        handle.write(b"\x01")
    with pytest.raises(BundleError, match=r"sids\.npy: sha256"):
        load_bundle(copy, CPU)
    shutil.copy(tiny_run.bundle / "sids.npy", copy / "sids.npy")
    (copy / "tags.json").unlink()
    with pytest.raises(BundleError, match=r"tags\.json: missing"):
        load_bundle(copy, CPU)


def test_version_1_bundle_is_served_by_the_reference_step(tiny_run: TinyRun, tmp_path) -> None:
    """A bundle exported before the incremental fast path (schema 1: ``generator_step_cached``, a fixed
    history axis) still loads; it decodes with the reference step graph and full padding, and gives
    the same answers. A schema-2 manifest naming the old graph is refused."""
    copy = tmp_path / "bundle"
    shutil.copytree(tiny_run.bundle, copy)
    manifest = json.loads((copy / "manifest.json").read_text())
    manifest["schema_version"] = 1
    manifest["graphs"]["generator_step_cached"] = manifest["graphs"].pop("generator_step_incremental")
    manifest["graphs"]["generator_encoder"]["inputs"][0]["shape"][1] = HISTORY
    (copy / "manifest.json").write_text(json.dumps(manifest))
    old = Recommender(load_bundle(copy, CPU, threads=1))
    assert not old.kv_cache and not old.trim_history
    queries = [Query(history=h, k=5, beam=10) for h in histories(tiny_run, 32)]
    current = Recommender(load_bundle(tiny_run.bundle, CPU, threads=1))
    assert [[h.item for h in r] for r in old.recommend(queries)] == [
        [h.item for h in r] for r in current.recommend(queries)
    ]
    manifest["schema_version"] = SCHEMA_VERSION
    (copy / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(BundleError, match="unknown entries"):
        load_bundle(copy, CPU)


def test_version_2_bundle_is_served_by_the_reference_step(tiny_run: TinyRun, tmp_path) -> None:
    """A schema-2 bundle's incremental step returned the whole cache (``present``), not this
    service's ``newest``: it loads, its fast path is not used, and it gives the same answers."""
    copy = tmp_path / "bundle"
    shutil.copytree(tiny_run.bundle, copy)
    manifest = json.loads((copy / "manifest.json").read_text())
    manifest["schema_version"] = 2
    (copy / "manifest.json").write_text(json.dumps(manifest))
    old = Recommender(load_bundle(copy, CPU, threads=1))
    assert not old.kv_cache
    queries = [Query(history=h, k=5, beam=10) for h in histories(tiny_run, 32)]
    current = Recommender(load_bundle(tiny_run.bundle, CPU, threads=1))
    assert current.kv_cache
    assert [[h.item for h in r] for r in old.recommend(queries)] == [
        [h.item for h in r] for r in current.recommend(queries)
    ]
