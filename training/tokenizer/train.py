"""Training loop of the tokenizer: held-out validation items, catalogue-wide collision partners,
checkpoint selection by validation, then unique IDs and the metrics of the selected checkpoint.

Validation items keep their embeddings in training (reconstruction and uniqueness need no labels) but
their tags are hidden (set to 0 = unknown, which every loss ignores), so ``tag_accuracy`` measures how
well the codes predict tags of items whose tags the model never saw.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from training.errors import DataError
from training.tokenizer.ids import assign_unique_ids
from training.tokenizer.metrics import (
    codebook_stats,
    collision_stats,
    prefix_tag_purity,
    tag_accuracy,
    text_probe_accuracy,
)
from training.tokenizer.model import HiDVAE, HiDVAEConfig

__all__ = [
    "TokenizerConfig",
    "TrainConfig",
    "TrainedTokenizer",
    "check_inputs",
    "evaluate",
    "held_out_items",
    "supervised_levels",
    "train",
]


@dataclass
class TrainConfig:
    """Optimisation and validation schedule."""

    steps: int = 3000
    batch_size: int = 512
    learning_rate: float = 1e-3
    weight_decay: float = 0.0
    #: share of items whose tags are held out for validation (tag accuracy, checkpoint selection)
    valid_fraction: float = 0.1
    #: validate (catalogue codes, collisions, held-out tag accuracy) every this many steps
    eval_every: int = 250
    #: recompute the catalogue's code table (source of uniqueness pairs) every this many steps
    code_table_every: int = 50
    #: colliding items drawn per step from the whole catalogue's code table for the uniqueness loss
    uniqueness_pairs: int = 256
    seed: int = 0
    #: torch CPU threads; 1 by default because on shared cores 2 threads oversubscribe (measured: 0.14 s
    #: vs 4 s per step with another job running)
    threads: int = 1

    def __post_init__(self) -> None:
        if self.steps < 1 or self.batch_size < 2 or self.eval_every < 1 or self.code_table_every < 1:
            raise ValueError("steps, eval_every, code_table_every must be >= 1 and batch_size >= 2")
        if not 0 < self.valid_fraction < 1:
            raise ValueError(f"valid_fraction must be in (0, 1), got {self.valid_fraction}")


@dataclass
class TokenizerConfig:
    """The whole tokenizer experiment: model, training, and the text encoder of the item embeddings."""

    model: HiDVAEConfig = field(default_factory=HiDVAEConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    #: ``training.data.text`` encoder spec for item texts and tag names
    encoder: str = "tfidf-svd:1024"
    #: dimensions of behaviour (PPMI-SVD of training co-occurrence) appended to the text; 0 = text only
    collaborative_dims: int = 128
    #: length of the behaviour part relative to the (unit) text part of the input
    collaborative_weight: float = 1.5


@dataclass
class TrainedTokenizer:
    """The selected model, its unique IDs and the metrics of the selected checkpoint."""

    model: HiDVAE
    sids: np.ndarray  # (N, L+1) int64
    metrics: dict[str, Any]
    history: list[dict[str, float]]


def check_inputs(
    embeddings: np.ndarray, tags: np.ndarray, tag_classes: list[int], config: TokenizerConfig
) -> None:
    """Refuse data the model cannot learn from, with a message that says what to change."""
    if embeddings.ndim != 2 or embeddings.shape[0] == 0:
        raise DataError(f"the catalogue is empty: item embeddings have shape {embeddings.shape}")
    bad = np.flatnonzero(~np.isfinite(embeddings).all(axis=1))
    if bad.size:
        raise DataError(f"item embeddings contain NaN/inf for {bad.size} items (first: item index {bad[0]})")
    if tags.shape != (embeddings.shape[0], len(tag_classes)):
        raise DataError(
            f"tag ids have shape {tags.shape}, expected ({embeddings.shape[0]}, {len(tag_classes)})"
        )
    if len(tag_classes) == 0 or tags.shape[1] == 0:
        raise DataError("tags.json has no tag level; prepare always writes at least one (re-run prepare)")


def supervised_levels(tags: np.ndarray) -> int:
    """Leading tag levels (columns of ``tags`` (N, n_tag_levels)) with at least two known classes.

    Only these get tag heads: a level where every item is ``<unknown>``, or all known items share one
    class (``<other>`` included), has nothing to teach. The code levels below them train without tags.
    """
    count = 0
    for level in range(tags.shape[1]):
        if np.unique(tags[:, level][tags[:, level] > 0]).size < 2:
            break
        count += 1
    return count


def _catalogue_codes(model: HiDVAE, x: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """Codes (N, L) of every item and the distance of each latent to its quantised vector (N,)."""
    latents, codes = model.latents_and_codes(x)
    with torch.no_grad():
        quantized = model.quantizer.codewords_from_indices(codes).sum(dim=1)  # (N, D)
    distances = (latents - quantized).norm(dim=-1)
    return codes.numpy(), distances.numpy()


def _nearest_last_codes(model: HiDVAE, x: torch.Tensor) -> Callable[[np.ndarray], np.ndarray]:
    """For ``assign_unique_ids``: items -> their last-level codes, nearest codeword to the residual
    the earlier levels leave first, (len(items), K)."""

    def order(items: np.ndarray) -> np.ndarray:
        index = torch.from_numpy(items)
        latents, codes = model.latents_and_codes(x[index])
        with torch.no_grad():
            earlier = model.quantizer.codewords_from_indices(codes[:, :-1]).sum(dim=1)  # (n, D)
            residual = latents - earlier if codes.shape[1] > 1 else latents
            distances = torch.cdist(residual, model.quantizer.codebooks[-1].detach())  # (n, K)
        return torch.argsort(distances, dim=1, stable=True).numpy()

    return order


def _collision_partners(codes: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """For each item, another item with the same full code tuple (-1 when its tuple is unique).

    Members of each colliding group are shuffled into a cycle, so every colliding item gets a partner
    and, over refreshes, meets the others of its group.
    """
    _, group = np.unique(codes, axis=0, return_inverse=True)
    group = group.reshape(-1)
    order = np.lexsort((rng.random(len(group)), group))  # grouped, random order inside each group
    sorted_group = group[order]
    starts = np.r_[0, np.flatnonzero(np.diff(sorted_group)) + 1]
    sizes = np.diff(np.r_[starts, len(group)])
    start_of = np.repeat(starts, sizes)  # (N,) sorted order
    size_of = np.repeat(sizes, sizes)
    position = np.arange(len(group)) - start_of
    partner_sorted = order[start_of + (position + 1) % size_of]
    partners = np.full(len(group), -1, dtype=np.int64)
    partners[order] = np.where(size_of > 1, partner_sorted, -1)
    return partners


def evaluate(model: HiDVAE, x: torch.Tensor, tags: np.ndarray, valid: np.ndarray) -> dict[str, Any]:
    """ID metrics over the whole catalogue; tag accuracy on the held-out items ``valid`` (bool mask)."""
    codes, _ = _catalogue_codes(model, x)
    was_training = model.training
    model.eval()
    with torch.no_grad():
        logits = model.tag_logits_from_codes(torch.from_numpy(codes))
        reconstruction = model.decode_codes(torch.from_numpy(codes))  # (N, input_dim)
    model.train(was_training)
    predicted = np.zeros((len(codes), len(logits)), dtype=np.int64)  # (N, n_heads)
    for level, level_logits in enumerate(logits):
        predicted[:, level] = level_logits.argmax(-1).numpy()
    n_heads = predicted.shape[1]
    mse = ((reconstruction - x) ** 2).mean(dim=-1).numpy()
    return {
        **collision_stats(codes),
        "tag_accuracy": tag_accuracy(predicted[valid], tags[valid, :n_heads]),
        "tag_accuracy_train_items": tag_accuracy(predicted[~valid], tags[~valid, :n_heads]),
        **codebook_stats(codes, model.config.codebook_size),
        "reconstruction_mse": float(mse.mean()),
        "valid_reconstruction_mse": float(mse[valid].mean()),
        "prefix_tag_purity": prefix_tag_purity(codes, tags),
    }


def selection_score(metrics: dict[str, Any]) -> float:
    """Higher is better: mean held-out tag accuracy minus the collision rate (no test data involved)."""
    accuracy = [a for a in metrics["tag_accuracy"] if a == a]
    return float(np.mean(accuracy) if accuracy else 0.0) - float(metrics["collision_rate"])


def held_out_items(n: int, fraction: float, rng: np.random.Generator) -> np.ndarray:
    """Bool mask (n,) of the validation items whose tags training never sees (at least one).

    Drawn first from the run's seeded generator, so ``benchmarks/text_probe.py`` can rebuild the very
    split a tokenizer run used.
    """
    valid = np.zeros(n, dtype=bool)
    valid[rng.permutation(n)[: max(1, round(fraction * n))]] = True
    return valid


def train(
    embeddings: np.ndarray,
    tags: np.ndarray,
    tag_classes: list[int],
    tag_text: list[np.ndarray],
    config: TokenizerConfig,
    progress: Callable[[int], object] | None = None,
    report: Callable[[dict[str, float]], object] | None = None,
) -> TrainedTokenizer:
    """Train on ``embeddings`` (N, E) with tag ids ``tags`` (N, n_tag_levels); ``tag_text[l]`` (C_l, E')
    are the text embeddings of the level-l tag names. ``progress(n)`` is told about each step,
    ``report(record)`` about each validation."""
    check_inputs(embeddings, tags, tag_classes, config)
    cfg = config.train
    torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    n = embeddings.shape[0]
    started = time.perf_counter()

    valid = held_out_items(n, cfg.valid_fraction, rng)
    train_tags = torch.from_numpy(np.where(valid[:, None], 0, tags)).long()  # (N, n_tag_levels)
    x = torch.from_numpy(embeddings).float()  # (N, E)

    supervised = min(config.model.levels, supervised_levels(tags))  # code levels with a tag head
    # At least one head, so that every bundle has its tag-heads graph: with no supervisable level it
    # learns nothing (its losses are 0) and predicts <other>, which explanations never show.
    model = HiDVAE(
        config.model,
        input_dim=x.shape[1],
        tag_classes=tag_classes[: max(supervised, 1)],
        tag_text_dim=tag_text[0].shape[1],
    )
    model.set_tag_text([torch.from_numpy(t) for t in tag_text])
    with torch.no_grad():
        model.quantizer.initialise(model.encode(x), seed=cfg.seed)
    optimiser = torch.optim.AdamW(model.parameters(), lr=cfg.learning_rate, weight_decay=cfg.weight_decay)

    history: list[dict[str, float]] = []
    best: tuple[float, int, dict[str, torch.Tensor]] | None = None
    partners = np.full(n, -1, dtype=np.int64)
    colliding = np.zeros(0, dtype=np.int64)
    order = rng.permutation(n)
    cursor = 0
    for step in range(1, cfg.steps + 1):
        if (step - 1) % cfg.code_table_every == 0 and config.model.mode == "hidvae":
            partners = _collision_partners(_catalogue_codes(model, x)[0], rng)
            colliding = np.flatnonzero(partners >= 0)
        if cursor + cfg.batch_size > n:
            order, cursor = rng.permutation(n), 0
        batch = order[cursor : cursor + cfg.batch_size]
        cursor += cfg.batch_size
        chosen = rng.choice(colliding, min(cfg.uniqueness_pairs, colliding.size), replace=False)
        output = model(x[batch], train_tags[batch], pairs=(x[chosen], x[partners[chosen]]))
        optimiser.zero_grad(set_to_none=True)
        output.loss.backward()
        optimiser.step()
        if progress is not None:
            progress(1)
        if step % cfg.eval_every == 0 or step == cfg.steps:
            metrics = evaluate(model, x, tags, valid)
            score = selection_score(metrics)
            record = {"step": float(step), "loss": float(output.loss.detach()), "score": score}
            record.update({k: float(v.detach()) for k, v in output.terms.items()})
            record["collision_rate"] = float(metrics["collision_rate"])
            record.update({f"tag_accuracy_{i}": a for i, a in enumerate(metrics["tag_accuracy"])})
            history.append(record)
            if report is not None:
                report(record)
            if best is None or score > best[0]:
                best = (score, step, copy.deepcopy(model.state_dict()))
    assert best is not None  # the last step always validates
    model.load_state_dict(best[2])
    model.eval()
    codes, distances = _catalogue_codes(model, x)
    sids = assign_unique_ids(codes, distances, config.model.codebook_size, _nearest_last_codes(model, x))
    metrics = evaluate(model, x, tags, valid)
    metrics.update(
        {
            "unique_ids_after_resolution": len(np.unique(sids, axis=0)),
            "items_moved_by_disambiguation": int((sids[:, :-1] != codes).any(axis=1).sum()),
            "supervised_levels": supervised,
            "n_items": n,
            "n_valid_items": int(valid.sum()),
            "selected_step": best[1],
            "selection_score": best[0],
            "train_seconds": time.perf_counter() - started,
        }
    )
    metrics["tag_accuracy_text_probe"] = text_probe_accuracy(embeddings, tags, valid)
    return TrainedTokenizer(model=model, sids=sids, metrics=metrics, history=history)
