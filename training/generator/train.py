"""Training loop for the generator: one process, or many under ``torchrun`` (DDP, gloo/nccl).

Model selection and early stopping use full-ranking NDCG@10 on a fixed subset of *validation* users;
the test split is never touched here (``python -m training evaluate`` reports it). The run folder gets
``generator.pt`` (plain state_dict + config, loadable with ``weights_only=True``), a copy of the IDs
(``sids.npy`` / ``sids.json``), ``run.json`` (where data and IDs came from), ``config.toml`` and
``metrics.json``.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import sys
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import Tensor
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

from training.config import config_to_dict, dump_toml
from training.data import Dataset
from training.errors import ConfigError, DataError
from training.evaluate.metrics import ranking_metrics, target_ranks
from training.evaluate.ranking import ORDERINGS, RankingInputs, full_ranking_top, prefix_survival
from training.generator.beam import PrefixTrie
from training.generator.cooccurrence import alignment_positives
from training.generator.losses import GeneratorObjective, LossConfig, PositiveTables
from training.generator.model import GeneratorConfig, SidrecGenerator

__all__ = [
    "EvalConfig",
    "GeneratorRunConfig",
    "TrainConfig",
    "TrainedRun",
    "load_ids",
    "load_run",
    "train_generator",
    "training_chunks",
]


@dataclass
class TrainConfig:
    epochs: int = 30
    batch_size: int = 256
    lr: float = 1e-3
    weight_decay: float = 0.0
    #: share of history items whose hash token is swapped for the "unknown item" row, so that the
    #: model learns to serve cold items from their semantic views alone
    hash_dropout: float = 0.1
    #: validations without improvement before stopping
    patience: int = 4
    #: validate every this many epochs
    eval_every: int = 1
    #: wall-clock budget for training in minutes (0 = none): the epoch that crosses it is validated
    #: and training stops, so a config can promise "<= 60 min on this machine"
    max_minutes: float = 0.0
    #: optimiser steps after which training stops (0 = none), mid-epoch: the cut epoch is validated.
    #: Bounds a run whose single epoch is already too long (benchmarks/scale.py at 10^6 items)
    max_steps: int = 0
    #: torch intra-op threads; 1 is fastest on small shared CPUs (2 threads spin against other work)
    threads: int = 1
    seed: int = 0
    #: share of training spent warming the learning rate up linearly; then it follows a cosine to 0
    warmup: float = 0.05

    def __post_init__(self) -> None:
        if self.max_steps < 0:
            raise ConfigError(f"train.max_steps must be >= 0 (0 = no cap), got {self.max_steps}")


def learning_rate_factor(progress: float, warmup: float) -> float:
    """Warmup + cosine at ``progress`` in [0, 1] of training.

    Progress is the larger of the share of steps done and the share of the time budget spent, so a run
    cut by ``max_minutes`` still anneals instead of stopping at its peak rate.
    """
    progress = min(max(progress, 0.0), 1.0)
    if progress < warmup:
        return max(progress / warmup, 1e-3)
    return 0.5 * (1.0 + math.cos(math.pi * (progress - warmup) / max(1e-9, 1.0 - warmup)))


@dataclass
class EvalConfig:
    beam: int = 20
    #: the ordering that selects the checkpoint and that the service answers with (``ORDERINGS``):
    #: ``dot`` (the dual-branch head scores every item) or ``beam`` (the constrained beam's order), ...
    ranking: str = "beam"
    #: validation users used for model selection (fixed, seeded subset; 0 = all)
    valid_users: int = 0
    negatives: int = 100
    seed: int = 0
    batch_size: int = 256
    #: histories up to this many items count as "short" in the breakdown
    short_history: int = 5


@dataclass
class GeneratorRunConfig:
    model: GeneratorConfig = field(default_factory=GeneratorConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)

    def __post_init__(self) -> None:
        if self.eval.beam < 10:
            raise ConfigError(f"eval.beam must be >= 10 to report @10 metrics, got {self.eval.beam}")
        if not self.model.generative:  # SASRec: the dot-product head is its only way to rank
            self.eval = replace(self.eval, ranking="dot")
        possible = ORDERINGS if self.loss.dot_weight > 0 else ("beam",)
        if self.eval.ranking not in possible:
            raise ConfigError(
                f"eval.ranking = {self.eval.ranking!r}: this model can rank by {', '.join(possible)} "
                "(dot needs loss.dot_weight > 0; a model without semantic IDs ranks by dot only)"
            )


@dataclass
class TrainedRun:
    model: SidrecGenerator
    config: GeneratorRunConfig
    sids: np.ndarray  # (n_items, D)
    metrics: dict[str, Any]


def load_ids(ids_dir: Path, n_items: int) -> tuple[np.ndarray, int]:
    """Read ``sids.npy`` + ``sids.json`` (CONTRACTS §2) and check them against the dataset."""
    sids_path, meta_path = ids_dir / "sids.npy", ids_dir / "sids.json"
    for path in (sids_path, meta_path):
        if not path.is_file():
            raise DataError(f"{path} does not exist (run `python -m training tokenizer --out {ids_dir}`)")
    sids = np.load(sids_path, allow_pickle=False)
    meta = json.loads(meta_path.read_text())
    codebook_size = int(meta.get("codebook_size", 0))
    if sids.ndim != 2 or sids.shape[0] != n_items:
        raise DataError(f"{sids_path}: shape {sids.shape}, expected ({n_items}, id_length) for this dataset")
    if sids.shape[1] != meta.get("id_length"):
        raise DataError(
            f"{meta_path}: id_length {meta.get('id_length')} != {sids.shape[1]} columns in sids.npy"
        )
    if sids.min() < 0 or sids.max() >= codebook_size:
        raise DataError(f"{sids_path}: codes must lie in [0, {codebook_size}) (codebook_size in sids.json)")
    if len(np.unique(sids, axis=0)) != n_items:
        raise DataError(f"{sids_path}: IDs are not unique; every item needs its own ID")
    return sids.astype(np.int64), codebook_size


def training_chunks(sequences: list[np.ndarray], max_len: int) -> np.ndarray:
    """Left-padded token windows (N, max_len + 1) covering every transition of every sequence once."""
    rows = []
    for sequence in sequences:
        tokens = sequence + 1
        end = len(tokens)
        while end >= 2:
            start = max(0, end - (max_len + 1))
            row = np.zeros(max_len + 1, np.int64)
            row[max_len + 1 - (end - start) :] = tokens[start:end]
            rows.append(row)
            end = start + 1  # the next window ends where this one's first input was
    return np.stack(rows) if rows else np.zeros((0, max_len + 1), np.int64)


def length_bucketed_batches(lengths: Tensor, batch_size: int, generator: torch.Generator) -> list[Tensor]:
    """Row indices of the batches of one epoch, each of chunks of similar length, in random order.

    Histories are mostly far shorter than ``max_len`` and a batch is padded to its longest chunk, so
    random batches would spend most of a step on padding. Rows are shuffled, sorted by length within
    pools of 50 batches (so batches still mix users at random) and the batches shuffled again. Only
    whole batches are kept (the remainder joins the next epoch's draw).
    """
    order = torch.randperm(len(lengths), generator=generator)
    pool = 50 * batch_size
    batches = []
    for start in range(0, len(order) - batch_size + 1, pool):
        rows = order[start : start + pool]
        rows = rows[torch.sort(lengths[rows], stable=True).indices]
        batches += [rows[i : i + batch_size] for i in range(0, len(rows) - batch_size + 1, batch_size)]
    return [batches[i] for i in torch.randperm(len(batches), generator=generator).tolist()]


def _distributed() -> tuple[int, int]:
    """(rank, world size); joins the process group when launched by torchrun."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    return (dist.get_rank(), world) if world > 1 else (0, 1)


def _device(rank: int) -> torch.device:
    if torch.cuda.is_available():
        local = int(os.environ.get("LOCAL_RANK", rank))
        torch.cuda.set_device(local)
        return torch.device("cuda", local)
    return torch.device("cpu")


def _sid_table(sids: np.ndarray, device: torch.device) -> torch.Tensor:
    """Token -> codes (n_items + 1, D); row 0 (padding) is all zeros."""
    table = np.concatenate([np.zeros((1, sids.shape[1]), np.int64), sids])
    return torch.from_numpy(table).to(device)


def validate(
    inputs: RankingInputs, histories: list[np.ndarray], targets: np.ndarray, config: EvalConfig
) -> dict[str, float]:
    tops = full_ranking_top(
        inputs, histories, k=10, beam=config.beam, orderings=(config.ranking,), label="validate"
    )
    return ranking_metrics(target_ranks(tops[config.ranking], targets), (5, 10))


def train_generator(
    dataset: Dataset,
    sids: np.ndarray,
    codebook_size: int,
    config: GeneratorRunConfig,
    *,
    out_dir: Path | None = None,
) -> TrainedRun:
    """Train on ``dataset.split().train``; select by validation NDCG@10; rank 0 writes ``out_dir``."""
    rank, world = _distributed()
    device = _device(rank)
    torch.set_num_threads(max(1, config.train.threads))
    torch.manual_seed(config.train.seed)
    config = replace(
        config,
        model=replace(
            config.model, n_items=dataset.n_items, id_length=sids.shape[1], codebook_size=codebook_size
        ),
    )
    model = SidrecGenerator(config.model).to(device)
    split = dataset.split()
    sid_table = _sid_table(sids, device)
    chunks = torch.from_numpy(training_chunks(split.train, config.model.max_len))  # (N, T+1)
    positives = None
    if config.model.use_hash and config.model.use_semantic and config.loss.item_weight > 0:
        found = alignment_positives(split.train, sids[:, : config.model.levels])
        positives = PositiveTables(
            torch.from_numpy(found.neighbours).to(device),
            torch.from_numpy(found.weights).to(device),
            torch.from_numpy(found.tuple_ids).to(device),
        )
    trie = PrefixTrie(sids, codebook_size).to(device) if config.model.generative else None
    inputs = RankingInputs(model, sid_table, trie)
    rng = np.random.default_rng(config.eval.seed)
    n_valid = config.eval.valid_users or dataset.n_users
    valid_users = np.sort(rng.permutation(dataset.n_users)[: min(n_valid, dataset.n_users)])
    valid_histories = [split.valid_history[u] for u in valid_users]
    valid_targets = split.valid_target[valid_users]

    objective: torch.nn.Module = GeneratorObjective(model, sid_table, positives, config.loss)
    if world > 1:
        objective = DistributedDataParallel(objective, find_unused_parameters=True, broadcast_buffers=False)
    optimizer = torch.optim.AdamW(
        model.parameters(), lr=config.train.lr, weight_decay=config.train.weight_decay
    )
    generator = torch.Generator().manual_seed(config.train.seed)
    best: dict[str, Any] = {"ndcg@10": -1.0, "epoch": 0, "state": None}
    history: list[dict[str, float]] = []
    stale, step = 0, 0
    start = time.perf_counter()
    n_batches = max(1, len(chunks) // config.train.batch_size // world)
    max_steps = config.train.max_steps
    total_steps = n_batches * config.train.epochs
    if max_steps:
        total_steps = min(total_steps, max_steps)  # the learning rate anneals within the cap
    budget_seconds = 60 * config.train.max_minutes
    lengths = (chunks > 0).sum(1)
    for epoch in range(1, config.train.epochs + 1):
        model.train()
        batches = length_bucketed_batches(lengths, config.train.batch_size, generator)
        batches = batches[: len(batches) // world * world][rank::world]  # as many on every rank
        totals: dict[str, float] = {}  # summed over the epoch's steps
        epoch_start = step
        bar = tqdm(batches, desc=f"epoch {epoch}", leave=False, disable=None if rank == 0 else True)
        for rows in bar:
            batch = chunks[rows].to(device)
            batch = batch[:, int((batch > 0).any(0).float().argmax()) :]  # drop all-padding columns
            inputs_tok, targets = batch[:, :-1], batch[:, 1:]
            if config.model.use_hash and config.train.hash_dropout > 0:
                drop = (torch.rand(inputs_tok.shape, generator=generator) < config.train.hash_dropout).to(
                    device
                )
                hashed = torch.where(drop & (inputs_tok > 0), model.unknown_token, inputs_tok)
            else:
                hashed = None
            elapsed = time.perf_counter() - start
            progress = max(step / total_steps, elapsed / budget_seconds if budget_seconds else 0.0)
            for group in optimizer.param_groups:
                group["lr"] = config.train.lr * learning_rate_factor(progress, config.train.warmup)
            total, parts = objective(inputs_tok, targets, hashed)
            optimizer.zero_grad(set_to_none=True)
            total.backward()
            optimizer.step()
            for name, value in parts.items():
                totals[name] = totals.get(name, 0.0) + value
            bar.set_postfix({k: f"{v:.3f}" for k, v in parts.items()})
            step += 1
            if step == max_steps:
                break
        steps = max(1, step - epoch_start)  # fewer than len(batches) in an epoch cut by max_steps
        record: dict[str, float] = {"epoch": epoch, **{f"loss.{k}": v / steps for k, v in totals.items()}}
        stop = torch.zeros(1)
        budget = config.train.max_minutes
        out_of_time = budget > 0 and time.perf_counter() - start > 60 * budget
        capped = step == max_steps
        last = epoch == config.train.epochs or out_of_time or capped
        if rank == 0 and (epoch % config.train.eval_every == 0 or last):
            scores = validate(inputs, valid_histories, valid_targets, config.eval)
            record.update({f"valid.{k}": v for k, v in scores.items()})
            if scores["ndcg@10"] > best["ndcg@10"]:
                best = {"ndcg@10": scores["ndcg@10"], "epoch": epoch, "state": _cpu_state(model)}
                stale = 0
            else:
                stale += 1
            stop[0] = float(stale >= config.train.patience or out_of_time or capped)
            tqdm.write(_format_record(record))
            sys.stdout.flush()  # a log file sees each validation as it happens
        history.append(record)
        if world > 1:
            dist.broadcast(stop, 0)
        if stop[0] > 0:
            break
    train_seconds = time.perf_counter() - start
    if rank == 0 and best["state"] is not None:
        model.load_state_dict(best["state"])
    survival = (
        prefix_survival(inputs, valid_histories, valid_targets, beam=config.eval.beam)
        if rank == 0 and config.model.generative
        else None
    )
    metrics: dict[str, Any] = {
        "prefix_survival": survival,
        "train_seconds": round(train_seconds, 1),
        "steps": step,
        "best_epoch": best["epoch"],
        "valid.ndcg@10": best["ndcg@10"],
        "valid_users": len(valid_users),
        "history": history,
    }
    if rank == 0 and out_dir is not None:
        save_run(out_dir, model, config, sids, metrics)
    return TrainedRun(model, config, sids, metrics)


def _cpu_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}


def _format_record(record: dict[str, float]) -> str:
    return "  ".join(f"{k}={v:.4f}" if isinstance(v, float) else f"{k}={v}" for k, v in record.items())


def save_run(
    out_dir: Path,
    model: SidrecGenerator,
    config: GeneratorRunConfig,
    sids: np.ndarray,
    metrics: dict[str, Any],
) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    torch.save(
        {"config": config_to_dict(config.model), "state_dict": _cpu_state(model)}, out_dir / "generator.pt"
    )
    np.save(out_dir / "sids.npy", sids, allow_pickle=False)
    (out_dir / "config.toml").write_text(dump_toml(config_to_dict(config)))
    (out_dir / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")


def load_run(
    run_dir: Path, device: str = "cpu"
) -> tuple[SidrecGenerator, GeneratorRunConfig, dict[str, Any]]:
    """Model (eval mode), its run config and ``run.json`` from a generator run folder."""
    from training.config import load_config

    for name in ("generator.pt", "config.toml", "run.json", "sids.npy"):
        if not (run_dir / name).is_file():
            raise DataError(f"{run_dir / name} does not exist; is {run_dir} a generator run folder?")
    checkpoint = torch.load(run_dir / "generator.pt", map_location=device, weights_only=True)
    config = load_config(GeneratorRunConfig, run_dir / "config.toml")
    model = SidrecGenerator(GeneratorConfig(**checkpoint["config"])).to(device)
    model.load_state_dict(checkpoint["state_dict"])
    model.eval()
    return model, config, json.loads((run_dir / "run.json").read_text())


def copy_ids_meta(ids_dir: Path, out_dir: Path) -> None:
    """Keep the tokenizer's ``sids.json`` beside the copied ``sids.npy`` so the run is self-contained."""
    shutil.copyfile(ids_dir / "sids.json", out_dir / "sids.json")
