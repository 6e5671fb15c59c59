"""Train the H2Rec-harmonised generator over a tokenizer's semantic IDs.

  python -m training generator --data runs/beauty/data --ids runs/beauty/tok-hidvae \\
      --out runs/beauty/gen-sidrec --config configs/generator/cpu.toml [--set train.epochs=5]

Baselines come from the same code through overrides:
  TIGER       --ids <rqvae tokenizer> --set model.use_hash=false
  HiD-VAE IDs --ids <hidvae tokenizer> --set model.use_hash=false
  SASRec      --set model.use_semantic=false   (hash IDs only, dot-product scoring of all items)

Selection and early stopping use validation NDCG@10 on a fixed subset of users; the test split is only
read by `python -m training evaluate --run OUT`. Runs unchanged under `torchrun --nproc_per_node=N`.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch.distributed as dist

from training import provenance
from training.config import load_config
from training.data import Dataset
from training.generator.train import GeneratorRunConfig, copy_ids_meta, load_ids, train_generator

__all__ = ["add_arguments", "run"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", type=Path, required=True, help="prepared dataset folder (prepare --out)")
    parser.add_argument(
        "--ids", type=Path, required=True, help="tokenizer folder holding sids.npy + sids.json"
    )
    parser.add_argument("--out", type=Path, required=True, help="run folder to write")
    parser.add_argument("--config", type=Path, default=None, help="TOML config (see configs/generator/)")
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config value, e.g. --set train.epochs=3 (repeatable)",
    )


def run(args: argparse.Namespace) -> int:
    config = load_config(GeneratorRunConfig, args.config, args.overrides)
    dataset = Dataset.load(args.data)
    sids, codebook_size = load_ids(args.ids, dataset.n_items)
    result = train_generator(dataset, sids, codebook_size, config, out_dir=args.out)
    if dist.is_initialized() and dist.get_rank() != 0:  # under torchrun only rank 0 writes
        return 0
    command = provenance.command()
    copy_ids_meta(args.ids, args.out)
    run_info = {"data": str(args.data.resolve()), "ids": str(args.ids.resolve()), "command": command}
    (args.out / "run.json").write_text(json.dumps(run_info, indent=2) + "\n")
    metrics = {**result.metrics, "command": command}
    (args.out / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    print(f"\n{'run':<14}{args.out}")
    print(f"{'best epoch':<14}{metrics['best_epoch']}")
    print(
        f"{'valid ndcg@10':<14}{metrics['valid.ndcg@10']:.4f}  ({metrics['valid_users']} users, full ranking)"
    )
    print(f"{'train time':<14}{metrics['train_seconds']:.0f} s")
    if metrics.get("prefix_survival"):
        levels = " / ".join(f"{v:.3f}" for v in metrics["prefix_survival"])
        print(f"{'survival':<14}{levels}  (validation targets still in the beam after each ID level)")
    print(f"next: python -m training evaluate --run {args.out}")
    return 0
