"""The reference constrained beam search: only real items, exact top-k when the beam covers the catalogue,
``exclude`` honoured, deterministic."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from training.generator.beam import PrefixTrie, constrained_beam_search
from training.generator.model import GeneratorConfig, SidrecGenerator

from .conftest import CODEBOOK, random_unique_ids

N_ITEMS = 30


@pytest.fixture(scope="module")
def setup() -> tuple[SidrecGenerator, torch.Tensor, torch.Tensor, np.ndarray]:
    torch.manual_seed(1)
    config = GeneratorConfig(n_items=N_ITEMS, id_length=4, codebook_size=CODEBOOK, d_model=16, max_len=6)
    model = SidrecGenerator(config).eval()
    sids = random_unique_ids(N_ITEMS, seed=4)
    table = torch.cat([torch.zeros(1, 4, dtype=torch.long), torch.from_numpy(sids)])
    tokens = torch.tensor([[0, 0, 3, 8, 1, 20], [0, 0, 0, 0, 0, 30], [4, 5, 6, 7, 8, 9]])  # (3, 6)
    with torch.no_grad():
        memory = model.encode(tokens, table[tokens])
    return model, memory, tokens > 0, sids


def exact_scores(
    model: SidrecGenerator, memory: torch.Tensor, mask: torch.Tensor, sids: np.ndarray
) -> torch.Tensor:
    """Log-likelihood of every item's full ID for every request: (N, n_items), brute force."""
    n, n_items = memory.shape[0], len(sids)
    codes = torch.from_numpy(sids).repeat(n, 1)  # (N*n_items, D)
    with torch.no_grad():
        logits = model.id_logits(
            memory.repeat_interleave(n_items, 0), mask.repeat_interleave(n_items, 0), codes
        )
    loglik = logits.log_softmax(-1).gather(-1, codes.unsqueeze(-1)).squeeze(-1).sum(-1)
    return loglik.view(n, n_items)


def test_beam_covering_the_catalogue_returns_the_exact_top_k(setup) -> None:
    model, memory, mask, sids = setup
    trie = PrefixTrie(sids, CODEBOOK)
    result = constrained_beam_search(model, memory, mask, trie, beam=N_ITEMS, k=10)
    exact = exact_scores(model, memory, mask, sids)
    expected = torch.sort(-exact, dim=1, stable=True).indices[:, :10]
    assert torch.equal(result.items, expected)
    assert torch.allclose(result.scores, exact.gather(1, expected), atol=1e-4)


def test_beam_returns_only_real_items_in_score_order(setup) -> None:
    model, memory, mask, sids = setup
    result = constrained_beam_search(model, memory, mask, PrefixTrie(sids, CODEBOOK), beam=5, k=5)
    assert ((result.items >= 0) & (result.items < N_ITEMS)).all()
    assert (result.scores[:, :-1] >= result.scores[:, 1:]).all()
    for row in result.items:
        assert len(set(row.tolist())) == len(row)
    again = constrained_beam_search(model, memory, mask, PrefixTrie(sids, CODEBOOK), beam=5, k=5)
    assert torch.equal(result.items, again.items) and torch.equal(result.scores, again.scores)


def test_excluded_items_never_come_back(setup) -> None:
    model, memory, mask, sids = setup
    trie = PrefixTrie(sids, CODEBOOK)
    first = constrained_beam_search(model, memory, mask, trie, beam=N_ITEMS, k=3)
    exclude = torch.zeros(3, N_ITEMS, dtype=torch.bool)
    exclude.scatter_(1, first.items, True)
    second = constrained_beam_search(model, memory, mask, trie, beam=N_ITEMS, k=3, exclude=exclude)
    assert not exclude.gather(1, second.items).any()


def test_small_catalogue_pads_with_minus_one() -> None:
    torch.manual_seed(0)
    model = SidrecGenerator(
        GeneratorConfig(n_items=3, id_length=2, codebook_size=4, d_model=8, max_len=2)
    ).eval()
    sids = np.array([[0, 0], [0, 1], [2, 0]])
    tokens = torch.tensor([[1, 2]])
    memory = model.encode(tokens, torch.from_numpy(sids)[tokens - 1])
    result = constrained_beam_search(model, memory, tokens > 0, PrefixTrie(sids, 4), beam=5, k=5)
    assert sorted(result.items[0, :3].tolist()) == [0, 1, 2]
    assert result.items[0, 3:].tolist() == [-1, -1]
    assert torch.isinf(result.scores[0, 3:]).all()


def test_trie_rejects_duplicate_ids() -> None:
    with pytest.raises(ValueError, match="unique"):
        PrefixTrie(np.array([[0, 1], [0, 1]]), 4)
