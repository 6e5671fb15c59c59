"""The generator's two hand-written training kernels against torch's own, in the same run.

  python -m benchmarks.train_step --out benchmarks/results/train-step.json

``catalogue_cross_entropy`` (training/generator/losses.py) against
``F.cross_entropy(users @ items.T, label_smoothing=...)``, forward and backward (ours in float32, and
in bfloat16 as ``loss.dot_bf16`` runs it where the CPU multiplies bfloat16 natively, which the report
records), and ``Dropout``
(training/generator/model.py) against ``nn.Dropout``, forward and backward, at the sizes of a step of
the ``cpu`` config (one torch thread, as it trains): the defaults are Sports' catalogue and a full
batch of 256 histories. The two ways alternate, ``--repeats`` rounds of each, so that a slow spell
of the machine falls on both; the median of each is reported with their ratio. Prints a table and
writes the JSON with the command.
"""

from __future__ import annotations

import argparse
import json
import platform
import shlex
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from training.generator.losses import catalogue_cross_entropy, native_bf16
from training.generator.model import Dropout


def seconds(work: Callable[[], None]) -> float:
    start = time.perf_counter()
    work()
    return time.perf_counter() - start


def cross_entropy_cases(
    rows: int, items: int, dim: int, smoothing: float, dtype: torch.dtype | None = None
) -> dict[str, Callable[[], None]]:
    users = torch.randn(rows, dim, requires_grad=True)
    table = torch.randn(items, dim, requires_grad=True)
    targets = torch.randint(0, items, (rows,))

    def ours() -> None:
        catalogue_cross_entropy(users, table, targets, smoothing, dtype).backward()

    def torchs() -> None:
        F.cross_entropy(users @ table.T, targets, label_smoothing=smoothing).backward()

    return {"sidrec": ours, "torch": torchs}


def dropout_cases(shape: tuple[int, ...], p: float) -> dict[str, Callable[[], None]]:
    x = torch.randn(*shape, requires_grad=True)
    ours, torchs = Dropout(p).train(), nn.Dropout(p).train()
    return {"sidrec": lambda: ours(x).sum().backward(), "torch": lambda: torchs(x).sum().backward()}


def compare(cases: dict[str, Callable[[], None]], repeats: int) -> dict[str, float]:
    for work in cases.values():  # warm-up: allocator and first-call costs
        work()
    times: dict[str, list[float]] = {name: [] for name in cases}
    for _ in range(repeats):
        for name, work in cases.items():
            times[name].append(seconds(work))
    result = {f"{name}_ms": round(1000 * statistics.median(t), 2) for name, t in times.items()}
    result["speedup"] = round(result["torch_ms"] / result["sidrec_ms"], 2)
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.train_step",
        description="Time the generator's fused catalogue cross-entropy and its dropout against torch's.",
    )
    parser.add_argument("--items", type=int, default=18357, help="catalogue size (default: Sports')")
    parser.add_argument(
        "--rows", type=int, default=2048, help="predicted positions in a step (default: %(default)s)"
    )
    parser.add_argument("--dim", type=int, default=64, help="item vector size (default: %(default)s)")
    parser.add_argument("--smoothing", type=float, default=0.1, help="label smoothing (default: %(default)s)")
    parser.add_argument("--dropout", type=float, default=0.5, help="dropout rate (default: %(default)s)")
    parser.add_argument("--repeats", type=int, default=20, help="rounds of each way (default: %(default)s)")
    parser.add_argument("--out", type=Path, default=None, help="JSON report (default: print only)")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    torch.manual_seed(0)
    activations = (256, 32, args.dim)  # one block's input: 256 histories of 32 positions
    results = {
        "catalogue cross-entropy": compare(
            cross_entropy_cases(args.rows, args.items, args.dim, args.smoothing), args.repeats
        ),
        "catalogue cross-entropy, bfloat16": compare(
            cross_entropy_cases(args.rows, args.items, args.dim, args.smoothing, torch.bfloat16), args.repeats
        ),
        "dropout": compare(dropout_cases(activations, args.dropout), args.repeats * 5),
    }
    width = max(map(len, results))
    print(f"{'forward + backward':<{width}}  {'sidrec ms':>9}  {'torch ms':>9}  {'speedup':>7}")
    for name, r in results.items():
        print(f"{name:<{width}}  {r['sidrec_ms']:>9}  {r['torch_ms']:>9}  {r['speedup']:>6}x")
    if args.out is not None:
        report = {
            "command": "python -m benchmarks.train_step "
            + shlex.join(argv if argv is not None else sys.argv[1:]),
            "sizes": {
                "items": args.items,
                "rows": args.rows,
                "dim": args.dim,
                "dropout_activations": list(activations),
            },
            "threads": 1,
            "results": results,
            "machine": {
                "platform": platform.platform(),
                "torch": torch.__version__,
                "native_bfloat16": native_bf16(torch.device("cpu")),
            },
        }
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
