"""Plot tokenizer runs side by side: items per ID (before disambiguation) and held-out tag accuracy.

    python -m training.tokenizer.plot runs/beauty/tok-hidvae runs/beauty/tok-rqvae --out tokenizer.png

Reads only each run's metrics.json, so the figure shows exactly the committed numbers.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from training.errors import DataError, SidrecError

__all__ = ["plot_runs"]


def _metrics(run_dir: Path) -> dict[str, Any]:
    path = run_dir / "metrics.json"
    if not path.is_file():
        raise DataError(f"{path} does not exist: is {run_dir} a tokenizer run folder?")
    metrics: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    return metrics


def plot_runs(run_dirs: list[Path], out: Path) -> None:
    """Two panels: bars of how many IDs hold 1, 2, 3, ... items, and per-level tag accuracy."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = [(run_dir.name, _metrics(run_dir)) for run_dir in run_dirs]
    fig, (hist_ax, acc_ax) = plt.subplots(1, 2, figsize=(11, 4))
    width = 0.8 / len(runs)
    for i, (name, metrics) in enumerate(runs):
        label = f"{name} ({metrics['mode']}, collisions {100 * metrics['collision_rate']:.1f} %)"
        histogram = {int(k): v for k, v in metrics["items_per_id_histogram"].items()}
        sizes = sorted(histogram)
        hist_ax.bar([s + (i - (len(runs) - 1) / 2) * width for s in sizes], [histogram[s] for s in sizes],
                    width=width, label=label)  # fmt: skip
        accuracy = metrics["tag_accuracy"]
        acc_ax.bar([level + 1 + (i - (len(runs) - 1) / 2) * width for level in range(len(accuracy))],
                   accuracy, width=width, label=name)  # fmt: skip
    probe = runs[0][1].get("tag_accuracy_text_probe")
    if probe:  # the same split for every mode: one reference line per level
        for level, value in enumerate(probe):
            acc_ax.hlines(value, level + 0.55, level + 1.45, colors="black", linestyles="dashed",
                          label="linear probe on the input text" if level == 0 else None)  # fmt: skip
    hist_ax.set(yscale="log", xlabel="items sharing one code tuple", ylabel="number of IDs",
                title="Items per ID before disambiguation")  # fmt: skip
    acc_ax.set(
        ylim=(0, 1), xlabel="tag level", ylabel="accuracy", title="Tag accuracy from codes (held-out items)"
    )
    acc_ax.set_xticks(range(1, 1 + max(len(m["tag_accuracy"]) for _, m in runs)))
    hist_ax.legend(fontsize=8)
    acc_ax.legend(fontsize=8)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m training.tokenizer.plot", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    parser.add_argument("runs", type=Path, nargs="+", help="tokenizer run folders (with metrics.json)")
    parser.add_argument("--out", type=Path, required=True, help="PNG file to write")
    args = parser.parse_args(argv)
    try:
        plot_runs(args.runs, args.out)
    except SidrecError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
