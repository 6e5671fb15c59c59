"""Evaluate generator runs: full ranking (constrained beam, Recall/NDCG@5/10), sampled-100 HR/NDCG@10,
head/tail and short/long breakdowns, and the beam re-ranked by the dot-product head (alone and fused).

  python -m training evaluate --run runs/beauty/gen-sidrec
  python -m training evaluate --run sidrec=runs/beauty/gen-sidrec --run tiger=runs/beauty/gen-tiger \\
      --run sasrec=runs/beauty/gen-sasrec --results benchmarks/results/beauty-cpu.json

Each run's metrics are merged into its metrics.json. With several runs one table is printed; --results
also writes the comparison JSON and a bar chart (same name, .png). The test split is the default: it is
the final report. Use --split valid while developing.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from training import provenance
from training.errors import ConfigError
from training.evaluate.report import MAIN_METRICS, evaluate_run, update_run_metrics

__all__ = ["add_arguments", "nest_metrics", "run"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--run",
        dest="runs",
        action="append",
        required=True,
        metavar="[NAME=]DIR",
        help="generator run folder, optionally named for the table (repeatable)",
    )
    parser.add_argument(
        "--split", choices=("test", "valid"), default="test", help="split to score (default test)"
    )
    parser.add_argument("--results", type=Path, default=None, help="write the comparison JSON (+ .png) here")
    parser.add_argument(
        "--cached",
        action="store_true",
        help="reuse a run's metrics.json when it already holds this split's evaluation",
    )
    parser.add_argument(
        "--beam",
        type=int,
        default=None,
        help="constrained beam width (default: each run's eval.beam); a wider beam gives the re-ranked "
        "orderings more candidates",
    )
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1 is fastest on shared CPUs)")


def _parse_runs(specs: list[str]) -> dict[str, Path]:
    runs: dict[str, Path] = {}
    for spec in specs:
        name, sep, path = spec.partition("=")
        run_dir = Path(path if sep else spec)
        name = name if sep else run_dir.name
        if name in runs:
            raise ConfigError(f"--run {spec!r}: the name {name!r} is used twice")
        runs[name] = run_dir
    return runs


def nest_metrics(flat: dict[str, Any]) -> dict[str, Any]:
    """``{"full.recall@5": x, "head": {...}}`` -> ``{"full": {"recall@5": x}, "head": {"full": {...}}}``."""
    out: dict[str, Any] = {}
    for key, value in flat.items():
        if isinstance(value, dict):
            out[key] = nest_metrics(value)
        elif "." in key and key.split(".", 1)[0] in ("full", "sampled"):
            group, name = key.split(".", 1)
            out.setdefault(group, {})[name] = value
        else:
            out[key] = value
    return out


def _table(results: dict[str, dict[str, Any]]) -> str:
    columns = [
        *MAIN_METRICS,
        "tail:full.recall@10",
        "head:full.recall@10",
        "reranked:full.recall@10",
        "fused:full.recall@10",
    ]
    labels = [c.replace("full.", "") for c in columns]
    widths = [max(11, len(label) + 2) for label in labels]
    header = f"{'model':<14}" + "".join(f"{label:>{w}}" for label, w in zip(labels, widths, strict=True))
    lines = [header, "-" * len(header)]
    for name, metrics in results.items():
        cells = []
        for column, width in zip(columns, widths, strict=True):
            group, _, key = column.rpartition(":")
            value = metrics.get(group, {}).get(key) if group else metrics.get(key)
            cells.append(f"{value:>{width}.4f}" if isinstance(value, float) else f"{'—':>{width}}")
        lines.append(f"{name:<14}" + "".join(cells))
    return "\n".join(lines)


def _bar_chart(results: dict[str, dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(results)
    width = 0.8 / max(1, len(names))
    fig, ax = plt.subplots(figsize=(10, 4))
    for i, name in enumerate(names):
        values = [results[name].get(metric, 0.0) for metric in MAIN_METRICS]
        ax.bar([j + i * width for j in range(len(MAIN_METRICS))], values, width, label=name)
    ax.set_xticks([j + 0.4 - width / 2 for j in range(len(MAIN_METRICS))], MAIN_METRICS, fontsize=8)
    ax.set_ylabel("score")
    ax.legend()
    ax.set_title(path.stem)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def run(args: argparse.Namespace) -> int:
    if args.beam is not None and args.beam < 10:
        raise ConfigError(f"--beam must be >= 10 to report @10 metrics, got {args.beam}")
    command = provenance.command()
    results: dict[str, dict[str, Any]] = {}
    for name, run_dir in _parse_runs(args.runs).items():
        cached = (
            json.loads((run_dir / "metrics.json").read_text()) if (run_dir / "metrics.json").is_file() else {}
        )
        same_beam = args.beam is None or cached.get("beam") == args.beam
        if args.cached and cached.get("split") == args.split and "full.recall@10" in cached and same_beam:
            results[name] = cached
            continue
        metrics = evaluate_run(run_dir, args.split, threads=args.threads, beam=args.beam)
        results[name] = update_run_metrics(run_dir, metrics, command)
    print(_table(results))
    if args.results is not None:
        args.results.parent.mkdir(parents=True, exist_ok=True)
        models = {
            name: nest_metrics({k: v for k, v in m.items() if k != "history"}) for name, m in results.items()
        }
        args.results.write_text(json.dumps({"command": command, "models": models}, indent=2) + "\n")
        _bar_chart(results, args.results.with_suffix(".png"))
        print(f"wrote {args.results} and {args.results.with_suffix('.png')}")
    return 0
