"""Would a second opinion re-rank the dual-branch head better? Two probes on a run's validation split.

  python -m benchmarks.rescoring --run runs/beauty/gen-sidrec --data runs/beauty/data \\
      --out benchmarks/results/rescoring-beauty.json

* ``decoder``: the head's top ``--candidates`` items re-ranked by head log-probability + lambda x the ID
  decoder's log-probability of each candidate's whole ID (teacher-forced, exact: what a beam restricted
  to those candidates would score), the product of the two experts at lambda = 1;
* ``popularity``: beta x log(training count + 1) added to the head's scores over every item.

lambda = 0 and beta = 0 are the head alone (the ``dot`` ordering the service answers with). Seen items
are excluded, as everywhere. Prints a table and writes JSON with the command.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from training.data import Dataset
from training.evaluate.metrics import ranking_metrics
from training.evaluate.ranking import left_pad
from training.generator.train import load_run

LAMBDAS = (0.0, 0.1, 0.25, 0.5, 1.0)
BETAS = (-0.2, -0.1, -0.05, 0.0, 0.05, 0.1)


def _metrics(ranks: Tensor) -> dict[str, float]:
    """R@10 and N@10 from 0-based ranks of the targets (a rank >= 10 misses), to 4 digits."""
    return {name: round(value, 4) for name, value in ranking_metrics(ranks.numpy(), (10,)).items()}


@torch.no_grad()
def probe(run: Path, data: Path, candidates: int, batch_size: int = 512) -> dict[str, dict[str, dict]]:
    model, _, _ = load_run(run)
    dataset = Dataset.load(data)
    split = dataset.split()
    sids = np.load(run / "sids.npy")
    table = torch.from_numpy(np.concatenate([np.zeros((1, sids.shape[1]), np.int64), sids]))
    items = model.item_table(table[1:])
    counts = np.bincount(np.concatenate(split.train), minlength=dataset.n_items) + 1
    log_popularity = torch.from_numpy(np.log(counts)).float()
    decoder: dict[float, list[Tensor]] = {lam: [] for lam in LAMBDAS}
    popularity: dict[float, list[Tensor]] = {beta: [] for beta in BETAS}
    for start in range(0, dataset.n_users, batch_size):
        users = range(start, min(start + batch_size, dataset.n_users))
        histories = [split.valid_history[u] for u in users]
        targets = torch.from_numpy(split.valid_target[start : start + len(histories)])
        tokens = left_pad(histories, model.config.max_len)
        memory = model.encode(tokens, table[tokens])
        head = (model.user_vectors(memory[:, -1]) @ items.T).log_softmax(-1)  # (B, n_items)
        for row, history in enumerate(histories):
            head[row, torch.from_numpy(np.asarray(history, np.int64))] = float("-inf")
        for beta in BETAS:
            scores = head + beta * log_popularity
            popularity[beta].append((scores > scores.gather(1, targets[:, None])).sum(1))
        top_scores, top = head.topk(candidates, 1)  # (B, N)
        b = len(histories)
        codes = table[top + 1].reshape(b * candidates, -1)  # (B*N, D)
        mask = (tokens > 0).repeat_interleave(candidates, 0)
        logp = model.id_logits(memory.repeat_interleave(candidates, 0), mask, codes).log_softmax(-1)
        id_logp = logp.gather(2, codes[:, :, None]).sum((1, 2)).view(b, candidates)
        is_target = top == targets[:, None]
        for lam in LAMBDAS:
            order = torch.sort(top_scores + lam * id_logp, dim=1, descending=True, stable=True).indices
            found = is_target.gather(1, order)
            decoder[lam].append(torch.where(found.any(1), found.float().argmax(1), candidates))
    return {
        "decoder": {f"lambda={lam}": _metrics(torch.cat(r)) for lam, r in decoder.items()},
        "popularity": {f"beta={beta}": _metrics(torch.cat(r)) for beta, r in popularity.items()},
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.rescoring",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--run", type=Path, required=True, help="generator run folder with a dot head")
    parser.add_argument("--data", type=Path, required=True, help="its prepared dataset")
    parser.add_argument("--out", type=Path, required=True, help="JSON to write")
    parser.add_argument("--candidates", type=int, default=50, help="head top-N the decoder re-ranks")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    report = probe(args.run, args.data, args.candidates)
    print(f"{'probe':<12} {'setting':<14} {'valid R@10':>10} {'valid N@10':>10}")
    for name, rows in report.items():
        for setting, row in rows.items():
            print(f"{name:<12} {setting:<14} {row['recall@10']:>10.4f} {row['ndcg@10']:>10.4f}")
    command = "python -m benchmarks.rescoring " + shlex.join(sys.argv[1:] if argv is None else argv)
    args.out.write_text(json.dumps({"command": command, "run": str(args.run), **report}, indent=2) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
