"""Evaluate generator runs and bundles: full ranking (Recall/NDCG@5/10), sampled-100 HR/NDCG@10,
head/tail and short/long breakdowns, every ordering a run can rank by, and quality as served.

  python -m training evaluate --run runs/beauty/gen-sidrec
  python -m training evaluate --bundle runs/beauty/bundle --data runs/beauty/data
  python -m training evaluate --run sidrec=runs/beauty/gen-sidrec --bundle sidrec=runs/beauty/bundle \
      --run sasrec=runs/beauty/gen-sasrec --results benchmarks/results/beauty-cpu.json

``--run`` scores the torch model (merged into the run's metrics.json); ``--bundle`` scores what the
service answers from a bundle (``training.evaluate.served``), reported as ``served`` beside the run of
the same name. With several models one table is printed; --results also writes the comparison JSON
and a bar chart (same name, .png). The test split is the default: it is the final report. Use
--split valid while developing.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from training import provenance
from training.errors import ConfigError
from training.evaluate.report import MAIN_METRICS, evaluate_run, update_run_metrics
from training.evaluate.served import evaluate_bundle

__all__ = ["add_arguments", "nest_metrics", "run"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--run",
        dest="runs",
        action="append",
        default=[],
        metavar="[NAME=]DIR",
        help="generator run folder, optionally named for the table (repeatable)",
    )
    parser.add_argument(
        "--bundle",
        dest="bundles",
        action="append",
        default=[],
        metavar="[NAME=]DIR",
        help="bundle folder scored through the service's decoder, as served (repeatable; needs --data "
        "unless a run of the same name says where its data is)",
    )
    parser.add_argument("--data", type=Path, default=None, help="prepared dataset of the bundles")
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


def _parse_runs(specs: list[str], flag: str = "--run") -> dict[str, Path]:
    runs: dict[str, Path] = {}
    for spec in specs:
        name, sep, path = spec.partition("=")
        run_dir = Path(path if sep else spec)
        name = name if sep else run_dir.name
        if name in runs:
            raise ConfigError(f"{flag} {spec!r}: the name {name!r} is used twice")
        runs[name] = run_dir
    return runs


def _train_minutes(run_dir: Path) -> float | None:
    """Tokenizer + generator wall minutes of a run (from their metrics.json), when both are recorded."""
    try:
        generator = json.loads((run_dir / "metrics.json").read_text())
        ids = Path(json.loads((run_dir / "run.json").read_text())["ids"])
        tokenizer = json.loads((ids / "metrics.json").read_text())
        seconds = float(generator["train_seconds"]) + float(
            tokenizer.get("wall_seconds", tokenizer["train_seconds"])
        )
    except (OSError, KeyError, ValueError):
        return None
    return round(seconds / 60, 1)


def flatten_groups(group: dict[str, Any]) -> dict[str, Any]:
    """``{"full": {"recall@10": x}, "users": n}`` -> ``{"full.recall@10": x, "users": n}`` (as runs
    store their metrics)."""
    out: dict[str, Any] = {}
    for key, value in group.items():
        if key == "full" and isinstance(value, dict):
            out.update({f"full.{name}": v for name, v in value.items()})
        else:
            out[key] = value
    return out


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
        "served:full.recall@10",
        "served:full.ndcg@10",
        "served.tail:full.recall@10",
        "beam:full.recall@10",
        "dot:full.recall@10",
        "train_minutes",
    ]
    labels = [c.replace("full.", "") for c in columns]
    widths = [max(11, len(label) + 2) for label in labels]
    header = f"{'model':<14}" + "".join(f"{label:>{w}}" for label, w in zip(labels, widths, strict=True))
    lines = [header, "-" * len(header)]
    for name, metrics in results.items():
        cells = []
        for column, width in zip(columns, widths, strict=True):
            group, _, key = column.rpartition(":")
            scope: Any = metrics
            for part in group.split(".") if group else []:
                scope = scope.get(part, {}) if isinstance(scope, dict) else {}
            value = scope.get(key) if isinstance(scope, dict) else None
            cells.append(f"{value:>{width}.4f}" if isinstance(value, float) else f"{'—':>{width}}")
        lines.append(f"{name:<14}" + "".join(cells))
    return "\n".join(lines)


def bar_chart(results: dict[str, dict[str, Any]], path: Path) -> None:
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
    if not args.runs and not args.bundles:
        raise ConfigError("give at least one --run or --bundle")
    results: dict[str, dict[str, Any]] = {}
    runs = _parse_runs(args.runs)
    for name, run_dir in runs.items():
        cached = (
            json.loads((run_dir / "metrics.json").read_text()) if (run_dir / "metrics.json").is_file() else {}
        )
        same_beam = args.beam is None or cached.get("beam") == args.beam
        if args.cached and cached.get("split") == args.split and "full.recall@10" in cached and same_beam:
            results[name] = cached
            continue
        metrics = evaluate_run(run_dir, args.split, threads=args.threads, beam=args.beam)
        results[name] = update_run_metrics(run_dir, metrics, command)
    for name, run_dir in runs.items():
        minutes = _train_minutes(run_dir)
        if minutes is not None:
            results[name]["train_minutes"] = minutes
    for name, bundle_dir in _parse_runs(args.bundles, "--bundle").items():
        data_dir = args.data
        if data_dir is None and name in runs:
            data_dir = Path(json.loads((runs[name] / "run.json").read_text())["data"])
        if data_dir is None:
            raise ConfigError(f"--bundle {name}={bundle_dir}: say where its prepared data is with --data")
        served = evaluate_bundle(bundle_dir, data_dir, args.split)
        groups = {
            k: flatten_groups(v) if isinstance(v, dict) and k != "full" else v for k, v in served.items()
        }
        results.setdefault(name, {})["served"] = flatten_groups(groups)
    print(_table(results))
    if args.results is not None:
        args.results.parent.mkdir(parents=True, exist_ok=True)
        models = {
            name: nest_metrics({k: v for k, v in m.items() if k != "history"}) for name, m in results.items()
        }
        args.results.write_text(json.dumps({"command": command, "models": models}, indent=2) + "\n")
        bar_chart(results, args.results.with_suffix(".png"))
        print(f"wrote {args.results} and {args.results.with_suffix('.png')}")
    return 0
