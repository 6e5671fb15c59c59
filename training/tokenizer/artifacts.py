"""The tokenizer's run folder (docs/CONTRACTS.md §2): write it, and rebuild the model from it.

``tokenizer.pt`` holds only plain dicts, lists, numbers, strings and tensors, so it loads with
``torch.load(weights_only=True)``: nothing is ever unpickled.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch

from training.config import config_to_dict, dump_toml
from training.errors import DataError
from training.tokenizer.model import HiDVAE, HiDVAEConfig
from training.tokenizer.train import TokenizerConfig, TrainConfig, TrainedTokenizer

__all__ = ["load_tokenizer", "save_run"]


def save_run(
    out_dir: Path, trained: TrainedTokenizer, config: TokenizerConfig, command: str
) -> dict[str, Any]:
    """Write sids.npy, sids.json, tokenizer.pt, metrics.json, history.json and config.toml; return metrics."""
    out_dir.mkdir(parents=True, exist_ok=True)
    model = trained.model
    levels = model.config.levels
    np.save(out_dir / "sids.npy", trained.sids, allow_pickle=False)
    spec = {
        "levels": levels,
        "codebook_size": model.config.codebook_size,
        "id_length": levels + 1,
        "disambiguation_level": levels,
        "mode": model.config.mode,
    }
    (out_dir / "sids.json").write_text(json.dumps(spec, indent=2) + "\n", encoding="utf-8")
    checkpoint = {
        "config": config_to_dict(config),
        "input_dim": model.input_dim,
        "tag_classes": model.tag_classes,
        "tag_text_dim": model.tag_text_dim,
        "state_dict": model.state_dict(),
    }
    torch.save(checkpoint, out_dir / "tokenizer.pt")
    metrics = {**trained.metrics, "mode": model.config.mode, "command": command}
    (out_dir / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n", encoding="utf-8")
    (out_dir / "history.json").write_text(json.dumps(trained.history, indent=1) + "\n", encoding="utf-8")
    (out_dir / "config.toml").write_text(dump_toml(config_to_dict(config)), encoding="utf-8")
    return metrics


def load_tokenizer(run_dir: Path) -> tuple[HiDVAE, TokenizerConfig]:
    """Rebuild the trained tokenizer (in eval mode) and its config from a run folder."""
    path = Path(run_dir) / "tokenizer.pt"
    if not path.is_file():
        raise DataError(f"{path} does not exist: is {run_dir} a tokenizer run folder?")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
        raw = checkpoint["config"]
        model_config = HiDVAEConfig(**{**raw["model"], "hidden_dims": tuple(raw["model"]["hidden_dims"])})
        # a checkpoint from before behaviour was part of the input was trained on the text alone
        extra = {"collaborative_dims": raw.get("collaborative_dims", 0)}
        if "collaborative_weight" in raw:
            extra["collaborative_weight"] = raw["collaborative_weight"]
        config = TokenizerConfig(
            model=model_config, train=TrainConfig(**raw["train"]), encoder=raw["encoder"], **extra
        )
        model = HiDVAE(
            model_config,
            input_dim=checkpoint["input_dim"],
            tag_classes=checkpoint["tag_classes"],
            tag_text_dim=checkpoint["tag_text_dim"],
        )
        model.load_state_dict(checkpoint["state_dict"])
    except (KeyError, TypeError, RuntimeError) as exc:
        raise DataError(f"{path}: not a readable tokenizer checkpoint ({exc})") from exc
    model.eval()
    return model, config
