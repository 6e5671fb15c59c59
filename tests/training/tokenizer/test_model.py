"""The pure model on random arrays: quantiser round trip, k-means, dead codes, losses, tag heads."""

from __future__ import annotations

import pytest
import torch

from training.tokenizer.losses import focal_loss, tag_alignment_loss, uniqueness_loss
from training.tokenizer.model import UNKNOWN_LOGIT, HiDVAE, HiDVAEConfig
from training.tokenizer.quantizer import ResidualQuantizer, kmeans

torch.set_num_threads(1)


def small_model(mode: str = "hidvae") -> HiDVAE:
    config = HiDVAEConfig(mode=mode, hidden_dims=(32,), latent_dim=8, codebook_size=8)  # type: ignore[arg-type]
    return HiDVAE(config, input_dim=16, tag_classes=[4, 6, 9], tag_text_dim=5)


def test_indices_to_codewords_round_trip() -> None:
    torch.manual_seed(0)
    quantizer = ResidualQuantizer(dim=4, levels=3, codebook_size=8, commitment_weight=0.25, dead_after=0)
    latents = torch.randn(64, 4)
    quantizer.initialise(latents)
    out = quantizer(latents)
    assert out.indices.shape == (64, 3) and out.codewords.shape == (64, 3, 4)
    back = quantizer.codewords_from_indices(out.indices)  # (64, 3, 4)
    assert torch.allclose(back, out.codewords)
    assert torch.allclose(back.sum(1), out.quantized, atol=1e-6)


def test_residual_levels_reduce_the_error() -> None:
    torch.manual_seed(0)
    quantizer = ResidualQuantizer(dim=6, levels=3, codebook_size=16, commitment_weight=0.25, dead_after=0)
    latents = torch.randn(500, 6)
    quantizer.initialise(latents)
    words = quantizer(latents).codewords
    errors = [float(((latents - words[:, : level + 1].sum(1)) ** 2).sum(-1).mean()) for level in range(3)]
    assert errors[0] > errors[1] > errors[2]


def test_kmeans_is_deterministic_and_fits_clusters() -> None:
    centers = torch.tensor([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0]])
    points = (centers[:, None, :] + 0.1 * torch.randn(3, 50, 2)).reshape(-1, 2)
    found = kmeans(points, 3, seed=1)
    assert torch.equal(found, kmeans(points, 3, seed=1))
    assert torch.cdist(centers, found).min(dim=1).values.max() < 0.5


def test_dead_codes_are_reseeded_onto_batch_residuals() -> None:
    quantizer = ResidualQuantizer(dim=2, levels=1, codebook_size=4, commitment_weight=0.25, dead_after=2)
    quantizer.codebooks.data[0] = torch.tensor([[0.0, 0.0], [100.0, 100.0], [-100.0, 100.0], [100.0, -100.0]])
    latents = torch.randn(32, 2) * 0.1
    quantizer.train()
    for _ in range(3):
        quantizer(latents)
    far = quantizer.codebooks[0, 1:].norm(dim=-1)
    assert bool((far < 1.0).all()), "codes never chosen should have moved onto the data"


def test_forward_terms_and_gradients() -> None:
    torch.manual_seed(0)
    model = small_model()
    x = torch.randn(40, 16)
    tags = torch.randint(0, 4, (40, 3))
    model.quantizer.initialise(model.encode(x).detach())
    out = model(x, tags, pairs=(x[:10], x[10:20]))
    assert {"reconstruction", "quantizer", "tag_0", "align_0", "tag_2", "align_2", "uniqueness"} <= set(
        out.terms
    )
    out.loss.backward()
    assert model.encoder[0].weight.grad is not None and model.quantizer.codebooks.grad is not None
    assert model.tag_embeddings[0].learned.weight.grad is not None


def test_rqvae_mode_heads_are_probes_that_do_not_shape_the_codes() -> None:
    torch.manual_seed(0)
    model = small_model("rqvae")
    x = torch.randn(40, 16)
    model.quantizer.initialise(model.encode(x).detach())
    out = model(x, torch.randint(1, 4, (40, 3)))
    assert not any(name.startswith(("align", "uniqueness")) for name in out.terms)
    out.terms["tag_0"].backward()
    assert model.encoder[0].weight.grad is None and model.tag_heads[0].net[0].weight.grad is not None


def test_codes_to_codewords_to_decoder_matches_forward() -> None:
    torch.manual_seed(0)
    model = small_model().eval()
    x = torch.randn(30, 16)
    model.quantizer.initialise(model.encode(x).detach())
    codes = model.encode_codes(x)
    with torch.no_grad():
        # atol: forward adds the straight-through (q - z).detach() to z, a float32 rounding apart
        forward = model(x, torch.zeros(30, 3).long()).reconstruction
        assert torch.allclose(model.decode_codes(codes), forward, atol=1e-5)


def test_tag_logits_for_any_prefix_never_predict_unknown() -> None:
    model = small_model().eval()
    codes = torch.randint(0, 8, (5, 3))
    for length in range(4):
        logits = model.tag_logits_from_codes(codes[:, :length])
        assert [lg.shape for lg in logits] == [(5, c) for c in (4, 6, 9)[:length]]
        assert all(bool((lg[:, 0] == UNKNOWN_LOGIT).all()) for lg in logits)
    assert len(model.tag_logits_from_codes(torch.zeros(5, 4).long())) == 3  # disambiguation level ignored


def test_code_levels_past_the_tag_levels_train_without_heads() -> None:
    model = HiDVAE(HiDVAEConfig(levels=4, codebook_size=8), input_dim=8, tag_classes=[3], tag_text_dim=4)
    assert len(model.tag_heads) == 1
    output = model(torch.randn(6, 8), torch.ones(6, 1).long())
    assert set(output.terms) == {"reconstruction", "quantizer", "tag_0", "align_0"}
    assert output.indices is not None and output.indices.shape == (6, 4)
    bare = HiDVAE(HiDVAEConfig(levels=2, codebook_size=8), input_dim=8, tag_classes=[], tag_text_dim=4)
    assert bare.tag_logits_from_codes(torch.zeros(3, 3).long()) == []


def test_focal_loss_ignores_unknown_and_rewards_the_right_class() -> None:
    logits = torch.tensor([[0.0, 5.0, -5.0], [0.0, -5.0, 5.0]])
    assert float(focal_loss(logits, torch.tensor([0, 0]), gamma=2.0, smoothing=0.1)) == 0.0
    right = focal_loss(logits, torch.tensor([1, 2]), gamma=2.0, smoothing=0.1)
    wrong = focal_loss(logits, torch.tensor([2, 1]), gamma=2.0, smoothing=0.1)
    assert float(right) < float(wrong)


def test_alignment_does_not_treat_items_sharing_a_tag_as_negatives() -> None:
    vectors = torch.randn(5, 4)
    codes = torch.randn(6, 4)
    same_tag = torch.full((6,), 3)
    assert float(tag_alignment_loss(codes, vectors, same_tag, temperature=0.1)) == pytest.approx(0.0)
    aligned = tag_alignment_loss(vectors[[1, 2, 1]], vectors, torch.tensor([1, 2, 1]), temperature=0.1)
    swapped = tag_alignment_loss(vectors[[2, 1, 2]], vectors, torch.tensor([1, 2, 1]), temperature=0.1)
    assert float(aligned) < float(swapped)


def test_uniqueness_loss_counts_only_similarity_above_the_margin() -> None:
    z = torch.tensor([[1.0, 0.0], [1.0, 0.0]])
    partners = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    assert float(uniqueness_loss(z, partners, margin=0.9)) == pytest.approx(0.05)
    assert float(uniqueness_loss(z[:0], partners[:0], margin=0.9)) == 0.0
