"""Evaluate a generator run on one split and compare runs: the numbers that go into results tables.

``evaluate_run`` returns flat metric names (``full.recall@10``, ``sampled.hr@10``, ...) overall plus the
same names per breakdown (``head``/``tail`` by the target's popularity, ``short``/``long`` by history
length). The top-level numbers are the run's own ordering (``eval.ranking``: what its bundle serves);
every other ordering the model can rank by (``beam``, ``dot``, ``reranked``, ``fused``; see
``training.evaluate.ranking``) gets a sub-dict of its own.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

from training.data import Dataset
from training.evaluate.metrics import ranking_metrics, sampled_ranks, target_ranks
from training.evaluate.ranking import (
    RankingInputs,
    available_orderings,
    full_ranking_top,
    prefix_survival,
    sample_negatives,
    sampled_scores,
)
from training.generator.beam import PrefixTrie
from training.generator.train import load_run

__all__ = ["MAIN_METRICS", "evaluate_run", "group_metrics"]

#: the columns of every table, in order
MAIN_METRICS = (
    "full.recall@5",
    "full.ndcg@5",
    "full.recall@10",
    "full.ndcg@10",
    "sampled.hr@10",
    "sampled.ndcg@10",
)


def group_metrics(full_ranks: np.ndarray, sampled: np.ndarray | None) -> dict[str, float]:
    """Full-ranking Recall/NDCG@5/10 and (when given) sampled HR/NDCG@10 for one group of users."""
    out = {f"full.{k}": v for k, v in ranking_metrics(full_ranks, (5, 10)).items()}
    if sampled is not None:
        out.update({f"sampled.{k}": v for k, v in ranking_metrics(sampled, (10,), recall_name="hr").items()})
    return out


def evaluate_run(
    run_dir: Path, split: Literal["valid", "test"] = "test", threads: int = 1, beam: int | None = None
) -> dict[str, Any]:
    """All metrics of the run in ``run_dir`` on ``split`` (the test split only for the final report),
    decoding with ``beam`` (default: the run's ``eval.beam``)."""
    torch.set_num_threads(threads)
    model, config, info = load_run(run_dir)
    beam = beam or config.eval.beam
    dataset = Dataset.load(Path(info["data"]))
    sids = np.load(run_dir / "sids.npy", allow_pickle=False)
    sid_table = torch.from_numpy(np.concatenate([np.zeros((1, sids.shape[1]), np.int64), sids]))
    trie = PrefixTrie(sids, model.config.codebook_size) if model.config.generative else None
    inputs = RankingInputs(model, sid_table, trie)
    data = dataset.split()
    histories = data.test_history if split == "test" else data.valid_history
    targets = data.test_target if split == "test" else data.valid_target

    head_trained = config.loss.dot_weight > 0 or not model.config.generative
    orderings = available_orderings(model, head_trained)
    tops = full_ranking_top(
        inputs,
        histories,
        k=10,
        beam=beam,
        orderings=orderings,
        batch_size=config.eval.batch_size,
        label=f"full ranking ({split})",
    )
    ranks = target_ranks(tops[config.eval.ranking], targets)
    # a small catalogue with a long history has fewer unseen items than the configured negatives
    unseen = dataset.n_items - max(len(set(s.tolist())) for s in dataset.sequences)
    n_negatives = max(1, min(config.eval.negatives, unseen))
    negatives = sample_negatives(dataset.sequences, dataset.n_items, n_negatives, config.eval.seed)
    candidates = np.concatenate([targets[:, None], negatives], 1)  # (U, 1 + n): target first
    scores = sampled_scores(
        inputs,
        histories,
        candidates,
        by_dot=config.eval.ranking != "beam",
        label=f"sampled-{n_negatives} ({split})",
    )
    s_ranks = sampled_ranks(scores[:, 0], scores[:, 1:])

    tail = dataset.tail_mask[targets]
    short = np.array([len(h) for h in histories]) <= config.eval.short_history
    groups = {"head": ~tail, "tail": tail, "short": short, "long": ~short}
    metrics: dict[str, Any] = {
        "split": split,
        "users": len(targets),
        "beam": beam,
        "ranking": config.eval.ranking,
        "negatives": n_negatives,
        **group_metrics(ranks, s_ranks),
    }
    for name, members in groups.items():
        metrics[name] = {"users": int(members.sum()), **group_metrics(ranks[members], s_ranks[members])}
    if model.config.generative:
        metrics["prefix_survival"] = prefix_survival(inputs, histories, targets, beam=beam)
    for ordering in orderings:
        if ordering == config.eval.ranking:
            continue
        re_ranks = target_ranks(tops[ordering], targets)
        metrics[ordering] = group_metrics(re_ranks, None)
        for name, members in groups.items():
            metrics[ordering][name] = group_metrics(re_ranks[members], None)
    return metrics


def update_run_metrics(run_dir: Path, metrics: dict[str, Any], command: str) -> dict[str, Any]:
    """Merge the evaluation into the run's ``metrics.json`` (keeps training's keys, e.g. train_seconds)."""
    path = run_dir / "metrics.json"
    merged = json.loads(path.read_text()) if path.is_file() else {}
    merged.update(metrics)
    merged["evaluate_command"] = command
    path.write_text(json.dumps(merged, indent=2) + "\n")
    return merged
