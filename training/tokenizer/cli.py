"""Train the HiD-VAE tokenizer (or the RQ-VAE baseline) on a prepared dataset and assign unique IDs.

Reads PREPARED (from ``python -m training prepare``), embeds the item texts with the configured text
encoder (cached under PREPARED/cache), trains with held-out validation items, keeps the checkpoint with
the best validation score, and writes to OUT: sids.npy, sids.json, tokenizer.pt, metrics.json,
history.json, config.toml (see docs/CONTRACTS.md §2).

examples:
  python -m training tokenizer --data runs/demo/data --out runs/demo/tok-hidvae
  python -m training tokenizer --data runs/beauty/data --out runs/beauty/tok-rqvae --mode rqvae
  python -m training tokenizer --data D --out O --config configs/tokenizer/test.toml --set train.steps=200
"""

from __future__ import annotations

import argparse
import shlex
import sys
import time
from pathlib import Path
from typing import Any

from tqdm import tqdm

from training.config import load_config
from training.data import Dataset
from training.data.text import embed_texts
from training.tokenizer.artifacts import save_run
from training.tokenizer.collaborative import tokenizer_input
from training.tokenizer.defaults import adapt_to_data, explicit_keys
from training.tokenizer.train import TokenizerConfig, train

__all__ = ["add_arguments", "run"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", type=Path, required=True, help="prepared dataset folder (prepare --out)")
    parser.add_argument("--out", type=Path, required=True, help="output folder for IDs, model and metrics")
    parser.add_argument("--config", type=Path, help="TOML config (e.g. configs/tokenizer/default.toml)")
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config key, e.g. train.steps=500",
    )
    parser.add_argument(
        "--mode", choices=["hidvae", "rqvae"], help="hidvae (tag-supervised) or rqvae (unsupervised baseline)"
    )
    parser.add_argument("--cache-dir", type=Path, help="embedding cache (default: DATA/cache)")


def _command(args: argparse.Namespace) -> str:
    """The command line that reproduces this run, rebuilt from the parsed arguments."""
    parts = ["python", "-m", "training", "tokenizer", "--data", str(args.data), "--out", str(args.out)]
    if args.config:
        parts += ["--config", str(args.config)]
    for pair in args.set:
        parts += ["--set", pair]
    if args.mode:
        parts += ["--mode", args.mode]
    if args.cache_dir:
        parts += ["--cache-dir", str(args.cache_dir)]
    return shlex.join(parts)


def _summary(metrics: dict[str, Any]) -> str:
    def fmt(value: Any) -> str:
        if isinstance(value, list):
            return " / ".join(fmt(v) for v in value)
        return f"{value:.4f}" if isinstance(value, float) else str(value)

    keys = [
        "mode", "n_items", "collision_rate", "max_items_per_id", "unique_ids_after_resolution",
        "items_moved_by_disambiguation", "supervised_levels",
        "tag_accuracy", "tag_accuracy_train_items", "tag_accuracy_text_probe", "prefix_tag_purity",
        "codebook_usage", "codebook_perplexity", "reconstruction_mse", "selected_step", "train_seconds",
        "wall_seconds",
    ]  # fmt: skip
    width = max(len(k) for k in keys)
    lines = [f"  {k:<{width}}  {fmt(metrics[k])}" for k in keys]
    return "\n".join([*lines, *(f"  {line}" for line in metrics.get("shape_choices", []))])


def run(args: argparse.Namespace) -> int:
    started = time.perf_counter()
    overrides = list(args.set) + ([f"model.mode={args.mode}"] if args.mode else [])
    config = load_config(TokenizerConfig, args.config, overrides)
    dataset = Dataset.load(args.data)
    explicit = explicit_keys(args.config, overrides)
    config, choices = adapt_to_data(config, dataset.n_items, dataset.tag_ids, explicit)
    cache_dir = args.cache_dir or args.data / "cache"
    embeddings = tokenizer_input(
        dataset, config.encoder, config.collaborative_dims, config.collaborative_weight, cache_dir
    )  # (N, E [+ behaviour])
    tag_text = [embed_texts(names, config.encoder, cache_dir) for names in dataset.tags.levels]

    def report(record: dict[str, float]) -> None:
        accuracy = " ".join(f"{v:.3f}" for k, v in record.items() if k.startswith("tag_accuracy_"))
        tqdm.write(
            f"step {int(record['step'])}: loss {record['loss']:.4f}"
            f"  collisions {record['collision_rate']:.4f}"
            f"  held-out tag accuracy {accuracy}",
            file=sys.stderr,
        )

    bar = tqdm(
        total=config.train.steps, desc=f"tokenizer ({config.model.mode})", disable=not sys.stderr.isatty()
    )
    with bar:
        trained = train(
            embeddings, dataset.tag_ids, dataset.tags.classes_per_level, tag_text, config, bar.update, report
        )
    trained.metrics["wall_seconds"] = round(time.perf_counter() - started, 1)  # embedding + training
    trained.metrics["shape_choices"] = choices
    metrics = save_run(args.out, trained, config, _command(args))
    config_path = args.out / "config.toml"  # what was chosen from the data, and why, above the values
    config_path.write_text("".join(f"# {line}\n" for line in choices) + config_path.read_text())
    print(f"tokenizer run written to {args.out}\n{_summary(metrics)}")
    return 0
