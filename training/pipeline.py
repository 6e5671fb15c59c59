"""Run every offline stage in order: prepare -> tokenizer -> generator -> evaluate -> export.

The pipeline drives each stage through its own CLI (the same code a user runs by hand), so a pipeline run
and a stage-by-stage run can never drift apart. A profile (``--config``, see ``configs/pipeline/``) names
each stage's config file and extra ``--set`` overrides. The output folder holds one sub-folder per stage
(``data/``, ``tokenizer/``, ``generator/``, ``bundle/``) and ``pipeline.json`` with the command that ran,
each stage's command and timing, and what prepare and the tokenizer chose from the data (``choices``,
also printed under the summary table). Each stage's ``metrics.json`` records the stage's own command
(``"command"``, the one that reproduces it alone) and the command that ran the pipeline
(``"pipeline_command"``; the demo's, when the demo ran it).

Example:
  python -m training pipeline --source synthetic --out runs/demo --config configs/pipeline/demo.toml
"""

from __future__ import annotations

import argparse
import json
import shlex
import time
from dataclasses import dataclass, field
from pathlib import Path

from training import provenance
from training.config import load_config

__all__ = ["PipelineConfig", "StageConfig", "add_arguments", "choices", "run", "run_pipeline"]

REPO = Path(__file__).resolve().parents[1]
#: the folder (under the pipeline's output) whose ``metrics.json`` each stage writes or updates
METRICS_DIR = {
    "prepare": "data",
    "tokenizer": "tokenizer",
    "generator": "generator",
    "evaluate": "generator",
    "export": "bundle",
}


@dataclass(frozen=True)
class StageConfig:
    """One stage's config file (relative to the repo root or absolute) and its ``--set`` overrides."""

    config: str = ""
    set: tuple[str, ...] = ()


@dataclass(frozen=True)
class PipelineConfig:
    """A pipeline profile: which config each stage runs with."""

    prepare_args: tuple[str, ...] = ()
    tokenizer: StageConfig = field(default_factory=StageConfig)
    generator: StageConfig = field(default_factory=StageConfig)
    export: bool = True


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--source", default="synthetic", help="FORMAT:PATH as for prepare (default: synthetic)"
    )
    parser.add_argument("--out", type=Path, required=True, help="output folder (one sub-folder per stage)")
    parser.add_argument(
        "--config",
        type=Path,
        default=REPO / "configs" / "pipeline" / "demo.toml",
        help="pipeline profile TOML (default: configs/pipeline/demo.toml, seconds on a laptop)",
    )
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a profile key, e.g. --set tokenizer.config=configs/tokenizer/default.toml",
    )


def _config_args(stage: StageConfig) -> list[str]:
    args: list[str] = []
    if stage.config:
        path = Path(stage.config)
        args += ["--config", str(path if path.is_absolute() else REPO / path)]
    for override in stage.set:
        args += ["--set", override]
    return args


def stage_commands(source: str, out: Path, profile: PipelineConfig) -> list[tuple[str, list[str]]]:
    """The argv of each stage, in order, as the user would type them after ``python -m training``."""
    data, tok, gen = out / "data", out / "tokenizer", out / "generator"
    stages = [
        ("prepare", ["prepare", "--source", source, "--out", str(data), *profile.prepare_args]),
        (
            "tokenizer",
            ["tokenizer", "--data", str(data), "--out", str(tok), *_config_args(profile.tokenizer)],
        ),
        (
            "generator",
            [
                "generator",
                "--data",
                str(data),
                "--ids",
                str(tok),
                "--out",
                str(gen),
                *_config_args(profile.generator),
            ],
        ),
        ("evaluate", ["evaluate", "--run", str(gen)]),
    ]
    if profile.export:
        stages.append(("export", ["export", "--run", str(gen), "--out", str(out / "bundle")]))
    return stages


def run_pipeline(source: str, out: Path, profile: PipelineConfig) -> list[dict[str, object]]:
    """Run the stages; stop at the first failing one. Returns one timing row per stage run."""
    from training.__main__ import main as training_main

    out.mkdir(parents=True, exist_ok=True)
    pipeline_command = provenance.outermost_command()
    stages = stage_commands(source, out, profile)
    rows: list[dict[str, object]] = []
    for number, (name, argv) in enumerate(stages, start=1):
        command = shlex.join(["python", "-m", "training", *argv])
        print(f"\n=== [{number}/{len(stages)}] {name}: {command}", flush=True)
        start = time.perf_counter()
        status = training_main(argv)
        seconds = round(time.perf_counter() - start, 2)
        rows.append({"stage": name, "command": command, "seconds": seconds, "status": status})
        if status != 0:
            break
        _add_pipeline_command(out / METRICS_DIR[name] / "metrics.json", pipeline_command)
    record = {"command": pipeline_command, "stages": rows, "choices": choices(out)}
    (out / "pipeline.json").write_text(json.dumps(record, indent=2) + "\n")
    return rows


def choices(out: Path) -> list[str]:
    """What the stages chose from the data, and why: the comment lines atop their ``config.toml``."""
    lines: list[str] = []
    for stage in ("data", "tokenizer"):
        path = out / stage / "config.toml"
        if path.is_file():
            lines += [line[2:] for line in path.read_text().splitlines() if line.startswith("# ")]
    return lines


def _add_pipeline_command(path: Path, pipeline_command: str) -> None:
    """Record in a stage's ``metrics.json`` which pipeline ran it (before the next stage reads it:
    export copies the generator's and the tokenizer's metrics into the bundle manifest)."""
    if path.is_file():
        metrics = json.loads(path.read_text())
        metrics["pipeline_command"] = pipeline_command
        path.write_text(json.dumps(metrics, indent=2) + "\n")


def run(args: argparse.Namespace) -> int:
    profile = load_config(PipelineConfig, args.config, args.overrides)
    rows = run_pipeline(args.source, args.out, profile)
    print("\nstage       seconds  status")
    for row in rows:
        print(f"{row['stage']:<11} {row['seconds']:>7}  {'ok' if row['status'] == 0 else 'FAILED'}")
    chosen = choices(args.out)
    if chosen:
        print("\nchosen from the data (config.toml of each stage):")
        print("\n".join(f"  {line}" for line in chosen))
    failed = [row for row in rows if row["status"] != 0]
    return int(failed[0]["status"]) if failed else 0  # type: ignore[call-overload]
