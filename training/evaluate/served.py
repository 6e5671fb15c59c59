"""Quality as served: full-ranking metrics computed through a bundle and the service's own decoder.

What users get is not the torch model but the exported graphs run by ``service.recommender`` on
onnxruntime, with the bundle's own ranking (``decoding.ranking``: the constrained beam or the
dot-product head), its default beam and the service's default of never recommending a seen item.
This module asks that code for the top 10 of every user of a split and scores it like
``training.evaluate.report`` scores a run (Recall/NDCG@5/10, overall and per head/tail and
short/long history), so the two can be compared line by line.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

import numpy as np
from tqdm import tqdm

from training.data import Dataset
from training.errors import DataError
from training.evaluate.metrics import ranking_metrics, target_ranks

__all__ = ["evaluate_bundle", "served_top"]


def served_top(
    bundle_dir: Path, histories: list[np.ndarray], k: int = 10, batch_size: int = 64
) -> np.ndarray:
    """Top-``k`` catalogue rows (N, k) the service answers for each history (-1 where fewer)."""
    from service.bundle import load_bundle
    from service.recommender import Query, Recommender

    bundle = load_bundle(bundle_dir, ["CPUExecutionProvider"], threads=1)
    recommender = Recommender(bundle)
    beam = max(k, bundle.manifest.decoding.beam)
    top = np.full((len(histories), k), -1, np.int64)
    order = np.argsort([len(h) for h in histories], kind="stable")  # similar lengths batch together
    for start in tqdm(range(0, len(order), batch_size), desc="served", leave=False, disable=None):
        rows = order[start : start + batch_size]
        queries = [Query(history=histories[i].tolist(), k=k, beam=beam, explain=False) for i in rows]
        for row, hits in zip(rows, recommender.recommend(queries), strict=True):
            items = [hit.item for hit in hits]
            top[row, : len(items)] = items
    return top


def evaluate_bundle(
    bundle_dir: Path, data_dir: Path, split: Literal["valid", "test"] = "test", batch_size: int = 64
) -> dict[str, Any]:
    """Served metrics of ``bundle_dir`` on ``split`` of the prepared dataset ``data_dir``."""
    dataset = Dataset.load(data_dir)
    lines = (bundle_dir / "catalogue.jsonl").read_text(encoding="utf-8").splitlines()
    served_ids = [json.loads(line)["item_id"] for line in lines if line]
    if served_ids != [item.item_id for item in dataset.items]:
        raise DataError(
            f"{bundle_dir}: its catalogue is not the item table of {data_dir} (ids or order differ)"
        )
    data = dataset.split()
    histories = data.test_history if split == "test" else data.valid_history
    targets = data.test_target if split == "test" else data.valid_target
    ranks = target_ranks(served_top(bundle_dir, histories, batch_size=batch_size), targets)
    tail = dataset.tail_mask[targets]
    short = np.array([len(h) for h in histories]) <= 5
    metrics: dict[str, Any] = {"split": split, "users": len(targets), "bundle": str(bundle_dir)}
    metrics["full"] = ranking_metrics(ranks, (5, 10))
    for name, members in {"head": ~tail, "tail": tail, "short": short, "long": ~short}.items():
        metrics[name] = {"users": int(members.sum()), "full": ranking_metrics(ranks[members], (5, 10))}
    return metrics
