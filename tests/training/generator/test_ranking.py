"""The orderings of the evaluation: with a beam that covers the catalogue, ``reranked`` and ``dot`` are
the dot-product head's own ranking and ``fused`` is the brute-force product of the two experts; no
ordering recommends an item of the user's history."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

from training.evaluate.ranking import ORDERINGS, RankingInputs, full_ranking_top, prefix_survival
from training.generator.beam import PrefixTrie
from training.generator.model import GeneratorConfig, SidrecGenerator

from .conftest import CODEBOOK, random_unique_ids
from .test_beam import exact_scores

N_ITEMS = 30


def _inputs(seed: int, ids_seed: int) -> tuple[SidrecGenerator, np.ndarray, torch.Tensor, RankingInputs]:
    """An untrained generator over random unique IDs, and what the ranking functions take."""
    torch.manual_seed(seed)
    config = GeneratorConfig(n_items=N_ITEMS, id_length=4, codebook_size=CODEBOOK, d_model=16, max_len=6)
    model = SidrecGenerator(config).eval()
    sids = random_unique_ids(N_ITEMS, seed=ids_seed)
    table = torch.cat([torch.zeros(1, 4, dtype=torch.long), torch.from_numpy(sids)])
    return model, sids, table, RankingInputs(model, table, PrefixTrie(sids, CODEBOOK))


def test_reorderings_match_brute_force_when_the_beam_covers_the_catalogue() -> None:
    model, sids, table, inputs = _inputs(seed=2, ids_seed=5)
    histories = [np.array([2, 7, 0, 19]), np.array([29]), np.array([3, 4, 5, 6, 7, 8])]
    tops = full_ranking_top(inputs, histories, k=10, beam=N_ITEMS, orderings=ORDERINGS)

    with torch.no_grad():
        tokens = torch.zeros(3, 6, dtype=torch.long)
        for row, history in enumerate(histories):
            tokens[row, 6 - len(history) :] = torch.from_numpy(history + 1)
        memory = model.encode(tokens, table[tokens])
        generative = exact_scores(model, memory, tokens > 0, sids)  # (3, n_items)
        dot = (model.user_vectors(memory[:, -1]) @ model.item_table(table[1:]).T).log_softmax(-1)
    seen = torch.zeros(3, N_ITEMS, dtype=torch.bool)
    for row, history in enumerate(histories):
        seen[row, torch.from_numpy(history)] = True
    expected = {"beam": generative, "dot": dot, "reranked": dot, "fused": generative + dot}
    assert set(tops) == set(ORDERINGS)
    for name, scores in expected.items():
        want = torch.sort(-scores.masked_fill(seen, float("-inf")), dim=1, stable=True).indices[:, :10]
        assert np.array_equal(tops[name], want.numpy()), name
        assert not any(set(top) & set(history) for top, history in zip(tops[name], histories, strict=True))


def test_prefix_survival_ends_at_the_beams_recall_and_never_comes_back() -> None:
    _, _, _, inputs = _inputs(seed=3, ids_seed=6)
    rng = np.random.default_rng(0)
    histories = [rng.choice(N_ITEMS, size=int(rng.integers(1, 6)), replace=False) for _ in range(40)]
    targets = np.array([next(i for i in rng.permutation(N_ITEMS) if i not in h) for h in histories])
    survival = prefix_survival(inputs, histories, targets, beam=5)
    top = full_ranking_top(inputs, histories, k=5, beam=5)["beam"]
    assert len(survival) == 4
    assert survival[-1] == pytest.approx(np.mean([t in row for t, row in zip(targets, top, strict=True)]))
    assert all(a >= b for a, b in itertools.pairwise(survival))
    assert survival[0] > survival[-1]  # a beam of 5 over 30 items loses most targets somewhere
