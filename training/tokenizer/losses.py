"""The HiD-VAE auxiliary losses (arXiv 2508.04618), as plain functions of tensors.

Tag id 0 is ``<unknown>`` (the category path is too short): every loss here ignores it, so an item
without a level-l tag is neither a target nor a negative at that level.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["focal_loss", "tag_alignment_loss", "uniqueness_loss"]


def focal_loss(logits: Tensor, targets: Tensor, *, gamma: float, smoothing: float) -> Tensor:
    """Focal loss (Lin et al. 2017) against label-smoothed targets; class 0 (unknown) is not a class.

    ``logits`` (B, C) are over all tag ids including 0; column 0 is dropped here, targets 0 are ignored,
    and smoothing spreads over the C-1 real classes only.
    Focal weighting keeps the many easy items of big classes from drowning the rare ones.
    """
    known = targets > 0
    if not bool(known.any()):
        return logits.new_zeros(())
    log_p = F.log_softmax(logits[known][:, 1:], dim=-1)  # (b, C-1)
    n_classes = log_p.shape[1]
    target = F.one_hot(targets[known] - 1, n_classes).to(log_p.dtype)  # (b, C-1)
    target = target * (1.0 - smoothing) + smoothing / n_classes
    weight = (1.0 - log_p.exp()) ** gamma
    return -(target * weight * log_p).sum(-1).mean()


def tag_alignment_loss(codes: Tensor, tag_vectors: Tensor, tags: Tensor, *, temperature: float) -> Tensor:
    """InfoNCE between each item's code prefix and its tag's vector, against the batch's other tags.

    ``codes`` (B, E) are the items' q_l, ``tag_vectors`` (C, E) all level-l tag vectors, ``tags`` (B,).
    The candidates are the *distinct* known tags of the batch, so items sharing a tag are never
    negatives of each other (the authors' in-batch version pushed same-tag items apart).
    """
    known = tags > 0
    if not bool(known.any()):
        return codes.new_zeros(())
    distinct, target = torch.unique(tags[known], return_inverse=True)  # (U,), (b,)
    query = F.normalize(codes[known], dim=-1)  # (b, E)
    keys = F.normalize(tag_vectors[distinct], dim=-1)  # (U, E)
    return F.cross_entropy(query @ keys.T / temperature, target)


def uniqueness_loss(latents: Tensor, partners: Tensor, *, margin: float) -> Tensor:
    """Mean of max(0, cos(z_i, z_j) - margin) over pairs of items whose full code tuples are equal.

    The pairs come from the whole catalogue's current code table (drawn by the trainer), not only
    from the batch: that is what lets the loss remove collisions between items that rarely share one.
    """
    if latents.shape[0] == 0:
        return latents.new_zeros(())
    cosine = F.cosine_similarity(latents, partners, dim=-1)  # (P,)
    return F.relu(cosine - margin).mean()
