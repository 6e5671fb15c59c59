"""Residual vector quantiser (RQ-VAE, Zeghidour et al. 2021; Lee et al. 2022) with k-means init.

Each level quantises what the previous levels left over, so a code tuple is a coarse-to-fine path.
Design choices, each for a known failure of plain VQ:
- **k-means initialisation per level on the residuals** (``initialise``): random codebooks leave most codes
  unused from the first step; k-means puts every code where data is.
- **straight-through gradients** (van den Oord et al. 2017): the decoder's input takes the value of the
  codewords and the gradient of the latent. The per-level codewords handed to the tag losses carry the
  gradient to *both* the codeword and the residual that chose it, so tag supervision shapes the codebook
  and moves items between cells.
- **dead-code re-seeding**: a code unused for ``dead_after`` training steps is moved onto a residual of the
  current batch, so codebook usage cannot collapse.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

__all__ = ["QuantizerOutput", "ResidualQuantizer", "kmeans"]


@dataclass(frozen=True)
class QuantizerOutput:
    """What one quantiser pass returns."""

    quantized: Tensor  # (B, D) sum of the selected codewords, straight-through to the latent
    indices: Tensor  # (B, L) int64 code per level
    loss: Tensor  # () codebook + commitment loss summed over levels, mean over the batch
    codewords: Tensor  # (B, L, D) selected codeword per level (gradient to codeword and residual)


def kmeans(points: Tensor, k: int, *, iterations: int = 25, seed: int = 0) -> Tensor:
    """Lloyd's k-means with k-means++ seeding; returns (k, D) centroids. Deterministic for a seed.

    With fewer distinct points than ``k``, surplus centroids repeat existing points (they are then
    dead codes that re-seeding can move later) instead of failing.
    """
    generator = torch.Generator().manual_seed(seed)
    n = points.shape[0]
    first = int(torch.randint(n, (1,), generator=generator))
    centroids = [points[first]]
    closest = ((points - points[first]) ** 2).sum(-1)  # (N,)
    for _ in range(1, k):
        total = closest.sum()
        if total <= 0:
            pick = int(torch.randint(n, (1,), generator=generator))
        else:
            pick = int(torch.multinomial(closest / total, 1, generator=generator))
        centroids.append(points[pick])
        closest = torch.minimum(closest, ((points - points[pick]) ** 2).sum(-1))
    centers = torch.stack(centroids)  # (K, D)
    for _ in range(iterations):
        assign = torch.cdist(points, centers).argmin(-1)  # (N,)
        sums = torch.zeros_like(centers).index_add_(0, assign, points)
        counts = torch.bincount(assign, minlength=k).unsqueeze(-1).to(points.dtype)  # (K, 1)
        centers = torch.where(counts > 0, sums / counts.clamp(min=1), centers)
    return centers


class ResidualQuantizer(nn.Module):
    """``levels`` codebooks of ``codebook_size`` codes of dimension ``dim``, applied to residuals."""

    def __init__(
        self, *, dim: int, levels: int, codebook_size: int, commitment_weight: float, dead_after: int
    ) -> None:
        super().__init__()
        if levels < 1 or codebook_size < 2 or dim < 1:
            raise ValueError(
                f"need levels >= 1, codebook_size >= 2, dim >= 1; got {levels}, {codebook_size}, {dim}"
            )
        self.levels = levels
        self.codebook_size = codebook_size
        self.commitment_weight = commitment_weight
        self.dead_after = dead_after
        self.codebooks = nn.Parameter(torch.randn(levels, codebook_size, dim) * 0.1)  # (L, K, D)
        self.steps_unused: Tensor  # (L, K) training steps since each code was last chosen
        self.register_buffer("steps_unused", torch.zeros(levels, codebook_size, dtype=torch.long))

    @torch.no_grad()
    def initialise(self, latents: Tensor, *, seed: int = 0) -> None:
        """k-means each level on the residuals the previous (already initialised) levels leave."""
        residual = latents.detach()
        for level in range(self.levels):
            self.codebooks.data[level] = kmeans(residual, self.codebook_size, seed=seed + level)
            chosen = torch.cdist(residual, self.codebooks[level]).argmin(-1)  # (N,)
            residual = residual - self.codebooks[level][chosen]
        self.steps_unused.zero_()

    def codewords_from_indices(self, indices: Tensor) -> Tensor:
        """(N, l) codes of the first ``l`` levels -> (N, l, D) codewords: the way back from an ID."""
        levels = indices.shape[1]
        if levels > self.levels:
            raise ValueError(f"{levels} code levels given, the quantiser has {self.levels}")
        rows = [self.codebooks[level][indices[:, level]] for level in range(levels)]
        return torch.stack(rows, dim=1) if rows else indices.new_zeros((indices.shape[0], 0, 0)).float()

    def forward(self, latents: Tensor) -> QuantizerOutput:
        residual = latents  # (B, D)
        indices, codewords = [], []
        loss = latents.new_zeros(())
        for level in range(self.levels):
            codebook = self.codebooks[level]  # (K, D)
            chosen = torch.cdist(residual.detach(), codebook.detach()).argmin(-1)  # (B,)
            word = codebook[chosen]  # (B, D)
            codebook_term = ((residual.detach() - word) ** 2).sum(-1).mean()
            commitment_term = ((residual - word.detach()) ** 2).sum(-1).mean()
            loss = loss + codebook_term + self.commitment_weight * commitment_term
            # value = codeword; gradient flows to the codeword and (straight-through) to the residual
            codewords.append(word + residual - residual.detach())
            indices.append(chosen)
            if self.training:
                self._reseed_dead(level, chosen, residual.detach())
            residual = residual - word.detach()
        quantized_value = torch.stack([w.detach() for w in codewords]).sum(0)  # (B, D)
        quantized = latents + (quantized_value - latents).detach()
        return QuantizerOutput(
            quantized=quantized,
            indices=torch.stack(indices, dim=1),
            loss=loss,
            codewords=torch.stack(codewords, dim=1),
        )

    @torch.no_grad()
    def _reseed_dead(self, level: int, chosen: Tensor, residual: Tensor) -> None:
        """Count steps since each code was last chosen; move codes dead too long onto batch residuals."""
        if self.dead_after <= 0:
            return
        unused = self.steps_unused[level]
        unused += 1
        unused[chosen] = 0
        dead = (unused > self.dead_after).nonzero().squeeze(-1)  # (n_dead,)
        if dead.numel() == 0:
            return
        picks = torch.randint(residual.shape[0], (dead.numel(),), device=residual.device)
        self.codebooks.data[level, dead] = residual[picks]
        unused[dead] = 0
