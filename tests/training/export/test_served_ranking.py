"""What the service answers equals what the torch evaluation scores: for a bundle that ranks by the
constrained beam and for one that ranks by the dual-branch dot-product head, on 200 test histories,
never recommending a seen item (the service's default). The head's graphs match torch, and a
cold-start item enters the head's item vectors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from service.bundle import load_bundle
from service.recommender import Query, Recommender
from tests.training.export.tiny_run import TinyRun
from training.evaluate.metrics import ranking_metrics, target_ranks
from training.evaluate.ranking import RankingInputs, full_ranking_top
from training.evaluate.served import evaluate_bundle, served_top
from training.export.cli import parity
from training.generator.beam import PrefixTrie

CPU = ["CPUExecutionProvider"]
USERS = 200


def torch_top(tiny_run: TinyRun, histories: list[np.ndarray], ordering: str, beam: int) -> np.ndarray:
    sids = tiny_run.sids
    table = torch.from_numpy(np.concatenate([np.zeros((1, sids.shape[1]), np.int64), sids]))
    trie = PrefixTrie(sids, tiny_run.tokenizer.config.codebook_size)
    inputs = RankingInputs(tiny_run.generator, table, trie)
    return full_ranking_top(inputs, histories, k=10, beam=beam, orderings=(ordering,))[ordering]


@pytest.mark.parametrize("ordering", ["beam", "dot"])
def test_served_top10_equals_the_torch_ranking(tiny_run: TinyRun, ordering: str) -> None:
    bundle = tiny_run.bundle if ordering == "beam" else tiny_run.dot_bundle
    assert load_bundle(bundle, CPU, threads=1).manifest.decoding.ranking == ordering
    split = tiny_run.dataset.split()
    histories = [split.test_history[u] for u in range(USERS)]
    beam = load_bundle(bundle, CPU, threads=1).manifest.decoding.beam
    served = served_top(bundle, histories)
    np.testing.assert_array_equal(served, torch_top(tiny_run, histories, ordering, beam))
    assert not any(set(top) & set(h.tolist()) for top, h in zip(served, histories, strict=True))


def test_evaluate_bundle_reports_the_served_ranking(tiny_run: TinyRun, tmp_path: Path) -> None:
    tiny_run.dataset.save(tmp_path / "data")
    metrics = evaluate_bundle(tiny_run.dot_bundle, tmp_path / "data", "test")
    split = tiny_run.dataset.split()
    top = torch_top(tiny_run, split.test_history, "dot", 20)
    expected = ranking_metrics(target_ranks(top, split.test_target), (5, 10))
    assert metrics["users"] == tiny_run.dataset.n_users
    assert metrics["full"] == pytest.approx(expected)
    assert metrics["head"]["users"] + metrics["tail"]["users"] == metrics["users"]


def test_head_graphs_match_torch(tiny_run: TinyRun) -> None:
    assert parity(tiny_run.dot_bundle, tiny_run.generator, tiny_run.dataset, tiny_run.sids) < 1e-4


def test_a_cold_item_is_scored_by_the_head(tiny_run: TinyRun) -> None:
    recommender = Recommender(load_bundle(tiny_run.dot_bundle, CPU, threads=1))
    codes, tags = recommender.tokenize(tiny_run.embeddings[0].astype(np.float64))
    sids, levels = recommender.snapshot.sids, recommender.levels
    taken = set(sids[(sids[:, :levels] == codes).all(axis=1), levels].tolist())
    sid = np.append(codes, min(set(range(recommender.codebook_size)) - taken))  # a free ID
    row = recommender.insert_item("brand-new", sid, "brand new", ["Shop"], tags)
    vectors = recommender.snapshot.item_vectors
    assert vectors is not None and vectors.shape[0] == row + 1
    np.testing.assert_allclose(vectors[row], recommender.cold_item_vectors(sid[None])[0])
    history = tiny_run.dataset.split().test_history[0].tolist()
    (hits,) = recommender.recommend([Query(history=history, k=recommender.snapshot.n_items, beam=20)])
    assert row in {hit.item for hit in hits}  # every unseen item is ranked, the new one included
