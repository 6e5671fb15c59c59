"""The pure model: contract shapes, causality, padding without NaN, and step == teacher forcing."""

from __future__ import annotations

import pytest
import torch

from training.generator.model import Dropout, GeneratorConfig, SidrecGenerator

from .conftest import CODEBOOK, random_unique_ids


def make_model(**overrides: object) -> SidrecGenerator:
    torch.manual_seed(0)
    config = GeneratorConfig(
        n_items=40, id_length=4, codebook_size=CODEBOOK, d_model=16, max_len=8, **overrides
    )
    return SidrecGenerator(config).eval()


def history(sids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    tokens = torch.tensor([[0, 0, 0, 5, 9, 2, 30, 7], [0] * 8, [1, 2, 3, 4, 5, 6, 7, 8]])  # (3, 8)
    table = torch.cat([torch.zeros(1, 4, dtype=torch.long), sids])
    return tokens, table[tokens]


@pytest.mark.parametrize("variant", [{}, {"use_hash": False}, {"use_semantic": False}])
def test_encode_is_causal_and_finite_with_padding(variant: dict[str, bool]) -> None:
    model = make_model(**variant)
    sids = torch.from_numpy(random_unique_ids(40))
    tokens, codes = history(sids)
    memory = model.encode(tokens, codes)
    assert memory.shape == (3, 8, 16)
    assert torch.isfinite(memory).all()  # the all-padding row included
    changed = tokens.clone()
    changed[0, -1] = 11  # a different last item must not change any earlier position
    changed_codes = torch.cat([torch.zeros(1, 4, dtype=torch.long), sids])[changed]
    other = model.encode(changed, changed_codes)
    assert torch.allclose(memory[0, :-1], other[0, :-1], atol=1e-6)
    assert not torch.allclose(memory[0, -1], other[0, -1])


def test_step_matches_teacher_forcing_at_every_level() -> None:
    model = make_model()
    sids = torch.from_numpy(random_unique_ids(40))
    tokens, codes = history(sids)
    memory = model.encode(tokens, codes)
    mask = tokens > 0
    target = sids[[3, 4, 5]]  # (3, D)
    forced = model.id_logits(memory, mask, target)  # (3, D, K)
    for s in range(4):
        step = model.step(memory, mask, target[:, :s])  # S may be 0: a (N, 0) prefix
        assert step.shape == (3, CODEBOOK)
        assert torch.allclose(step, forced[:, s], atol=1e-5)


def test_sequence_logits_match_teacher_forcing_on_each_visible_history() -> None:
    """Training's one-row form (blockwise self-attention) gives what ``id_logits`` gives per position."""
    model = make_model()
    sids = torch.from_numpy(random_unique_ids(40))
    tokens, codes = history(sids)
    state = model.encode_state(tokens, codes)
    targets = torch.roll(codes, -1, dims=1)  # (3, 8, D): any next-item codes
    sequence = model.sequence_id_logits(state, targets)  # (3, 8, D, K)
    for t in range(tokens.shape[1]):
        visible = state.mask & (torch.arange(tokens.shape[1]) <= t)  # the memory up to position t
        forced = model.id_logits(state.memory, visible, targets[:, t])  # (3, D, K)
        real = tokens[:, t] > 0
        assert torch.allclose(sequence[real, t], forced[real], atol=1e-5)


@pytest.mark.parametrize("p", [0.1, 0.5])
def test_dropout_keeps_the_expected_share_and_the_mean(p: float) -> None:
    torch.manual_seed(0)
    dropout = Dropout(p)
    x = torch.ones(7, 30_001)  # an odd size: the last random word is cut
    out = dropout(x)
    kept = out > 0
    assert abs(kept.float().mean().item() - (1 - p)) < 0.005
    assert torch.allclose(out[kept], torch.full_like(out[kept], 1 / (1 - p)), rtol=1e-4)
    assert abs(out.mean().item() - 1.0) < 0.01
    assert not torch.equal(dropout(x), out)  # fresh draws every call
    assert torch.equal(dropout.eval()(x), x)
    with pytest.raises(ValueError, match="dropout"):
        Dropout(1.0)


def test_unseen_items_fall_back_to_the_reserved_hash_row() -> None:
    model = make_model()
    sids = torch.from_numpy(random_unique_ids(40))
    codes = sids[:2].unsqueeze(0)  # (1, 2, D)
    cold = model.encode(torch.tensor([[41, 500]]), codes)  # tokens past the catalogue
    unknown = model.encode(torch.tensor([[41, 41]]), codes)
    assert torch.allclose(cold, unknown)
    assert torch.isfinite(cold).all()


def test_config_rejects_a_model_without_branches() -> None:
    with pytest.raises(ValueError, match="use_hash"):
        GeneratorConfig(n_items=3, use_hash=False, use_semantic=False)
