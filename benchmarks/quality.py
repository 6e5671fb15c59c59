"""One command, one table: sidrec against its baselines on a prepared dataset, same budget for all.

  python -m benchmarks.quality --data runs/beauty/data --work runs/beauty \\
      --results benchmarks/results/beauty-cpu.json
  python -m benchmarks.quality --data runs/beauty/data --work runs/beauty-ablation --epochs 6 --split valid \\
      --no-served --models sidrec,no-seq,no-item,no-id --results benchmarks/results/ablation-beauty.json

Runs the stages as docs/OPERATIONS.md documents them (``python -m training tokenizer|generator|export|
evaluate``), each model's generator with the same ``configs/generator/cpu.toml`` and the same time
budget, ``--jobs`` at a time (one torch thread each), exports every generative model to a bundle and
scores it through the service's decoder (``served``), then writes one JSON with every model (the
``training evaluate --results`` shape, plus ``budget_minutes`` and ``budget_epochs``) and its bar
chart. A stage whose output already holds a ``metrics.json`` is reused, so an interrupted run resumes
where it stopped.

Models (``MODELS``): ``sidrec`` (collaborative HiD-VAE IDs, dual branch, served by the ordering
validation picked), ``sasrec`` (hash IDs only, dot-product head with the same softmax and schedule),
``tiger`` (RQ-VAE IDs from the text alone, generative only: no hash branch, no dot head, beam),
``hidvae`` (sidrec's IDs without the hash branch), and the ablation rows, each one part of sidrec off.
"""

from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from training.evaluate.cli import bar_chart

ROOT = Path(__file__).resolve().parents[1]
GENERATOR_CONFIG = ROOT / "configs/generator/cpu.toml"
TOKENIZER_CONFIG = ROOT / "configs/tokenizer/default.toml"

#: tokenizer runs by name: extra arguments after ``--config configs/tokenizer/default.toml``
TOKENIZERS = {
    "tok-hidvae": [],
    "tok-rqvae": ["--mode", "rqvae", "--set", "collaborative_dims=0"],
    "tok-text": ["--set", "collaborative_dims=0"],
}


@dataclass(frozen=True)
class Model:
    tokenizer: str
    overrides: list[str] = field(default_factory=list)
    what: str = ""


#: the baselines keep improving long after sidrec's epochs (cpu.toml): they train until the time budget
LONG_SCHEDULE = "train.epochs=300"

MODELS = {
    "sidrec": Model("tok-hidvae", [], "collaborative HiD-VAE IDs + hash IDs, H2Rec dual branch"),
    "sasrec": Model(
        "tok-hidvae", ["model.use_semantic=false", LONG_SCHEDULE], "hash IDs only, dot-product head"
    ),
    "tiger": Model(
        "tok-rqvae",
        ["model.use_hash=false", "loss.dot_weight=0", "eval.ranking=beam", LONG_SCHEDULE],
        "RQ-VAE text IDs, generative only (beam)",
    ),
    "hidvae": Model("tok-hidvae", ["model.use_hash=false"], "sidrec's IDs without the hash branch"),
    "no-seq": Model("tok-hidvae", ["loss.seq_weight=0"], "sidrec without masked granularity"),
    "no-item": Model("tok-hidvae", ["loss.item_weight=0"], "sidrec without code-guided alignment"),
    "no-id": Model("tok-hidvae", ["loss.id_weight=0"], "sidrec without the ID decoder's loss"),
    "text-ids": Model("tok-text", [], "sidrec on HiD-VAE IDs from the text alone"),
}


def _run(command: list[str], log: Path) -> None:
    """Run one stage, its output in ``log``; stop everything with the log's tail when it fails."""
    print(f"  $ {shlex.join(command)}  > {log}", flush=True)
    with log.open("w") as handle:
        done = subprocess.run(command, stdout=handle, stderr=subprocess.STDOUT, cwd=ROOT)
    if done.returncode != 0:
        tail = log.read_text().splitlines()[-15:]
        sys.exit(f"failed ({done.returncode}): {shlex.join(command)}\n" + "\n".join(tail))


def _stage(out: Path, command: list[str]) -> None:
    if (out / "metrics.json").is_file():
        print(f"  reusing {out}", flush=True)
        return
    _run(command, out.with_name(out.name + ".log"))


def _kept_rows(results: Path, names: list[str]) -> dict[str, dict]:
    """The rows of ``names`` in an earlier ``results`` file, each marked with the run that made it."""
    if not names:
        return {}
    if not results.is_file():
        sys.exit(f"--keep {','.join(names)}: {results} does not exist")
    earlier = json.loads(results.read_text())
    missing = [name for name in names if name not in earlier["models"]]
    if missing:
        sys.exit(f"--keep: {results} has no row for {missing}")
    origin = earlier.get("benchmark_command", earlier["command"])
    return {name: {"kept_from": origin, **earlier["models"][name]} for name in names}


def _flat(metrics: dict) -> dict[str, float]:
    """A results row as the chart reads it: ``{"full": {"recall@10": x}}`` -> ``full.recall@10``."""
    return {f"{group}.{k}": v for group in ("full", "sampled") for k, v in metrics.get(group, {}).items()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.quality",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--data", type=Path, required=True, help="prepared dataset (training prepare --out)")
    parser.add_argument("--work", type=Path, required=True, help="folder for the runs, logs and bundles")
    parser.add_argument("--results", type=Path, required=True, help="comparison JSON to write (+ .png)")
    parser.add_argument(
        "--models",
        default="sidrec,sasrec,tiger",
        help=f"comma list of {', '.join(MODELS)} (default: %(default)s)",
    )
    parser.add_argument(
        "--minutes", type=float, default=None, help="generator budget for every model (default: the config's)"
    )
    parser.add_argument(
        "--epochs",
        type=int,
        default=None,
        help="epochs for every model, the schedule fitted to them (default: the config's; the "
        "baselines' long schedule too): the same number of updates, whatever each part costs",
    )
    parser.add_argument(
        "--no-served",
        dest="served",
        action="store_false",
        help="score the torch runs only, without exporting bundles: for ablations (the served "
        "ranking equals the torch one, which the reported tables check)",
    )
    parser.add_argument(
        "--jobs", type=int, default=2, help="generators trained at once (default: %(default)s)"
    )
    parser.add_argument("--split", choices=("test", "valid"), default="test", help="split to report")
    parser.add_argument(
        "--keep",
        default="",
        help="comma list of models whose rows are carried over from the existing RESULTS file instead "
        "of retrained (each marked with the file's command as `kept_from`)",
    )
    args = parser.parse_args(argv)
    kept = _kept_rows(args.results, [n.strip() for n in args.keep.split(",") if n.strip()])
    names = [n.strip() for n in args.models.split(",") if n.strip()]
    unknown = [n for n in names if n not in MODELS]
    if unknown:
        parser.error(f"--models: unknown {unknown}; choose from {list(MODELS)}")
    args.work.mkdir(parents=True, exist_ok=True)
    py = [sys.executable, "-m", "training"]
    budget = ["--set", f"train.max_minutes={args.minutes}"] if args.minutes else []
    budget += ["--set", f"train.epochs={args.epochs}"] if args.epochs else []
    started = time.perf_counter()

    for tok in sorted({MODELS[n].tokenizer for n in names}):
        out = args.work / tok
        config = ["--config", str(TOKENIZER_CONFIG), *TOKENIZERS[tok]]
        _stage(out, [*py, "tokenizer", "--data", str(args.data), "--out", str(out), *config])

    def generator(name: str) -> None:
        model, out = MODELS[name], args.work / f"gen-{name}"
        sets = [arg for pair in model.overrides for arg in ("--set", pair)]
        paths = ["--data", str(args.data), "--ids", str(args.work / model.tokenizer), "--out", str(out)]
        _stage(out, [*py, "generator", *paths, "--config", str(GENERATOR_CONFIG), *sets, *budget])

    with ThreadPoolExecutor(max_workers=max(1, args.jobs)) as pool:
        list(pool.map(generator, names))  # list(): re-raises a stage's failure

    evaluate = [*py, "evaluate", "--cached", "--split", args.split, "--results", str(args.results)]
    for name in names:
        evaluate += ["--run", f"{name}={args.work / f'gen-{name}'}"]
        if "model.use_semantic=false" in MODELS[name].overrides or not args.served:
            continue  # SASRec has no ID decoder to export; its torch ranking is what it would serve
        bundle = args.work / f"bundle-{name}"
        _stage(bundle, [*py, "export", "--run", str(args.work / f"gen-{name}"), "--out", str(bundle)])
        evaluate += ["--bundle", f"{name}={bundle}"]
    _run(evaluate, args.work / "evaluate.log")
    print((args.work / "evaluate.log").read_text())

    report = json.loads(args.results.read_text())
    if kept:  # the table and chart show every model, the kept ones too
        report["models"].update(kept)
        bar_chart({n: _flat(m) for n, m in report["models"].items()}, args.results.with_suffix(".png"))
    report["benchmark_command"] = "python -m benchmarks.quality " + shlex.join(
        sys.argv[1:] if argv is None else argv
    )
    report["budget_minutes"] = args.minutes
    report["budget_epochs"] = args.epochs
    report["what"] = {name: MODELS[name].what for name in [*names, *kept]}
    report["seconds"] = round(time.perf_counter() - started, 1)
    args.results.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.results}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
