"""HiD-VAE: a residual-quantised autoencoder whose code levels are supervised by the tag hierarchy.

Encoder MLP -> L2-normalised latent -> ``ResidualQuantizer`` (L levels x K codes) -> decoder MLP.
With q_l the concatenation of the first l selected codewords, each level l adds
- tag alignment: InfoNCE between q_l and a vector of the level-l tag (projection of the tag name's text
  embedding + a learnable per-class vector, because TF-IDF gives near-zero vectors for unseen words);
- tag prediction: a head C_l(q_l) with focal loss and label smoothing.
A uniqueness loss pushes apart the latents of items whose full code tuples collide.

``mode="rqvae"`` is the TIGER / RQ-VAE baseline: the same network trained on reconstruction and the
quantiser loss only. Its tag heads still train, but as *probes* on detached codes, so the baseline's tag
accuracy says how much tag information unsupervised codes carry without the heads shaping them.

Pure library: no I/O. The trainer (``train.py``) feeds it; ``load_tokenizer`` rebuilds it.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

import torch
from torch import Tensor, nn

from training.tokenizer.losses import focal_loss, tag_alignment_loss, uniqueness_loss
from training.tokenizer.quantizer import ResidualQuantizer

__all__ = ["HiDVAE", "HiDVAEConfig", "TokenizerOutput"]

#: logit given to tag id 0 (``<unknown>``) so that no head ever predicts it; finite for ONNX.
UNKNOWN_LOGIT = -1e9


@dataclass
class HiDVAEConfig:
    """Architecture and loss weights. Each weight multiplies exactly one loss term, once."""

    mode: Literal["hidvae", "rqvae"] = "hidvae"
    hidden_dims: tuple[int, ...] = (256, 128)
    latent_dim: int = 32
    levels: int = 3
    codebook_size: int = 256
    #: a code unchosen for this many training steps is re-seeded onto a batch residual (0 = never)
    dead_after: int = 100
    tag_head_hidden: int = 256
    reconstruction_weight: float = 1.0
    #: beta: weight of the commitment term inside the quantiser loss (the codebook term has weight 1)
    commitment_weight: float = 0.25
    alignment_weight: float = 0.1
    tag_weight: float = 1.0
    uniqueness_weight: float = 20.0
    temperature: float = 0.1
    focal_gamma: float = 2.0
    label_smoothing: float = 0.1
    uniqueness_margin: float = 0.9

    def __post_init__(self) -> None:
        if self.latent_dim < 1 or self.levels < 1 or self.codebook_size < 2:
            raise ValueError("latent_dim and levels must be >= 1 and codebook_size >= 2")
        if self.temperature <= 0 or not 0 <= self.label_smoothing < 1:
            raise ValueError("temperature must be > 0 and label_smoothing in [0, 1)")


@dataclass(frozen=True)
class TokenizerOutput:
    """One training/validation pass: the total loss, its named terms, and the codes chosen."""

    loss: Tensor  # ()
    terms: dict[str, Tensor] = field(default_factory=dict)  # name -> () weighted term
    indices: Tensor | None = None  # (B, L)
    reconstruction: Tensor | None = None  # (B, input_dim)


def _mlp(dims: Sequence[int]) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i, (d_in, d_out) in enumerate(itertools.pairwise(dims)):
        layers.append(nn.Linear(d_in, d_out))
        if i < len(dims) - 2:
            layers.append(nn.SiLU())
    return nn.Sequential(*layers)


class TagEmbedding(nn.Module):
    """Level-l tag vectors: a projection of each tag name's text embedding plus a learnable vector."""

    def __init__(self, n_classes: int, text_dim: int, out_dim: int) -> None:
        super().__init__()
        self.text: Tensor  # (C, E) tag-name text embeddings, filled by the trainer
        self.register_buffer("text", torch.zeros(n_classes, text_dim))
        self.project = nn.Linear(text_dim, out_dim)
        self.learned = nn.Embedding(n_classes, out_dim)
        nn.init.normal_(self.learned.weight, std=0.02)

    def forward(self) -> Tensor:
        return self.project(self.text) + self.learned.weight  # (C, out_dim)


class TagHead(nn.Module):
    """C_l: code prefix q_l -> logits over the level's tag ids; id 0 (unknown) is never predicted."""

    def __init__(self, in_dim: int, hidden: int, n_classes: int) -> None:
        super().__init__()
        self.net = _mlp([in_dim, hidden, n_classes - 1])

    def forward(self, prefix: Tensor) -> Tensor:
        known = self.net(prefix)  # (N, C-1)
        unknown = known.new_full((known.shape[0], 1), UNKNOWN_LOGIT)
        return torch.cat([unknown, known], dim=-1)  # (N, C)


class HiDVAE(nn.Module):
    """The tokenizer. ``tag_classes[l]`` counts the level-l tag ids including 0 = unknown.

    Code levels past ``len(tag_classes)`` get no tag head: they train on reconstruction, the quantiser
    and the uniqueness loss alone (a flat or missing hierarchy still gives IDs of full length).
    """

    def __init__(
        self, config: HiDVAEConfig, *, input_dim: int, tag_classes: Sequence[int], tag_text_dim: int
    ) -> None:
        super().__init__()
        self.config = config
        self.input_dim = input_dim
        self.tag_classes = list(tag_classes)
        self.tag_text_dim = tag_text_dim
        d = config.latent_dim
        self.encoder = _mlp([input_dim, *config.hidden_dims, d])
        self.decoder = _mlp([d, *reversed(config.hidden_dims), input_dim])
        self.quantizer = ResidualQuantizer(
            dim=d,
            levels=config.levels,
            codebook_size=config.codebook_size,
            commitment_weight=config.commitment_weight,
            dead_after=config.dead_after,
        )
        n_heads = min(config.levels, len(tag_classes))
        self.tag_heads = nn.ModuleList(
            TagHead((level + 1) * d, config.tag_head_hidden, tag_classes[level]) for level in range(n_heads)
        )
        self.tag_embeddings = nn.ModuleList(
            TagEmbedding(tag_classes[level], tag_text_dim, (level + 1) * d) for level in range(n_heads)
        )

    @torch.no_grad()
    def set_tag_text(self, tag_text: Sequence[Tensor]) -> None:
        """Load the text embeddings of the tag names, (C_l, tag_text_dim) per supervised level."""
        for embedding, text in zip(self.tag_embeddings, tag_text, strict=False):
            embedding.text.copy_(text)  # type: ignore[operator]

    def encode(self, x: Tensor) -> Tensor:
        return nn.functional.normalize(self.encoder(x), dim=-1)  # (B, D)

    def forward(self, x: Tensor, tags: Tensor, pairs: tuple[Tensor, Tensor] | None = None) -> TokenizerOutput:
        """Losses for a batch ``x`` (B, input_dim) with tag ids ``tags`` (B, n_tag_levels).

        ``pairs`` = two (P, input_dim) embedding tensors: row p of each is one of two catalogue items
        whose current full code tuples are equal (the uniqueness loss pushes their latents apart).
        """
        cfg = self.config
        supervised = cfg.mode == "hidvae"
        latents = self.encode(x)  # (B, D)
        quantized = self.quantizer(latents)
        reconstruction = self.decoder(quantized.quantized)  # (B, input_dim)
        terms = {
            "reconstruction": cfg.reconstruction_weight * ((reconstruction - x) ** 2).sum(-1).mean(),
            "quantizer": quantized.loss,
        }
        batch = x.shape[0]
        for level, head in enumerate(self.tag_heads):
            prefix = quantized.codewords[:, : level + 1].reshape(batch, -1)  # (B, (l+1)*D)
            if not supervised:
                prefix = prefix.detach()
            terms[f"tag_{level}"] = cfg.tag_weight * focal_loss(
                head(prefix), tags[:, level], gamma=cfg.focal_gamma, smoothing=cfg.label_smoothing
            )
            if supervised:
                vectors = self.tag_embeddings[level]()  # (C, (l+1)*D)
                terms[f"align_{level}"] = cfg.alignment_weight * tag_alignment_loss(
                    prefix, vectors, tags[:, level], temperature=cfg.temperature
                )
        if supervised and pairs is not None and pairs[0].shape[0] > 0:
            first, second = self.encode(pairs[0]), self.encode(pairs[1])  # (P, D) each
            terms["uniqueness"] = cfg.uniqueness_weight * uniqueness_loss(
                first, second, margin=cfg.uniqueness_margin
            )
        return TokenizerOutput(
            loss=torch.stack(list(terms.values())).sum(),
            terms=terms,
            indices=quantized.indices,
            reconstruction=reconstruction,
        )

    @torch.no_grad()
    def latents_and_codes(self, embeddings: Tensor, batch_size: int = 4096) -> tuple[Tensor, Tensor]:
        """(N, input_dim) -> latents (N, D) and codes (N, L), in eval mode, batched."""
        was_training = self.training
        self.eval()
        latents, codes = [], []
        for start in range(0, embeddings.shape[0], batch_size):
            z = self.encode(embeddings[start : start + batch_size])
            latents.append(z)
            codes.append(self.quantizer(z).indices)
        self.train(was_training)
        return torch.cat(latents), torch.cat(codes)

    def encode_codes(self, embeddings: Tensor) -> Tensor:
        """Item embeddings (N, input_dim) -> code tuples (N, L) (before disambiguation)."""
        return self.latents_and_codes(embeddings)[1]

    def tag_logits_from_codes(self, codes: Tensor) -> list[Tensor]:
        """Codes of any prefix length l (N, l) -> per-level tag logits [(N, C_0), ..., (N, C_{l-1})].

        The heads read only codewords, so a generated ID prefix can be explained without an item.
        Levels beyond the tag hierarchy (e.g. the disambiguation code) are ignored.
        """
        levels = min(codes.shape[1], len(self.tag_heads), self.config.levels)
        codewords = self.quantizer.codewords_from_indices(codes[:, :levels])  # (N, l, D)
        n = codes.shape[0]
        return [self.tag_heads[level](codewords[:, : level + 1].reshape(n, -1)) for level in range(levels)]

    def decode_codes(self, codes: Tensor) -> Tensor:
        """Full code tuples (N, L) -> codewords -> decoder -> reconstructed embeddings (N, input_dim)."""
        return self.decoder(self.quantizer.codewords_from_indices(codes).sum(dim=1))
