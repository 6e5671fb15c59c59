"""A real (tiny) pipeline run records what actually ran: its own command, and each stage's."""

from __future__ import annotations

import json
import shlex
from pathlib import Path

from training.__main__ import main
from training.config import load_config
from training.pipeline import PipelineConfig, stage_commands

PROFILE = """
prepare_args = ["--min-tag-count", "5"]

[tokenizer]
config = "configs/tokenizer/test.toml"
set = ["train.steps=20", "train.eval_every=10", "model.levels=2", "encoder='tfidf-svd:32'"]

[generator]
config = "configs/generator/test.toml"
set = ["train.epochs=1", "eval.valid_users=50"]
"""


def test_a_pipeline_run_records_the_commands_that_ran(tmp_path: Path) -> None:
    profile = tmp_path / "profile.toml"
    profile.write_text(PROFILE)
    out = tmp_path / "run"
    source = "synthetic:n_items=300,n_users=300,seed=1"
    argv = ["pipeline", "--source", source, "--out", str(out), "--config", str(profile)]
    assert main(argv) == 0
    pipeline_command = shlex.join(["python", "-m", "training", *argv])
    record = json.loads((out / "pipeline.json").read_text())
    assert record["command"] == pipeline_command

    stages = dict(stage_commands(source, out, load_config(PipelineConfig, profile)))
    ran = {name: shlex.join(["python", "-m", "training", *stage_argv]) for name, stage_argv in stages.items()}
    assert [(row["stage"], row["command"]) for row in record["stages"]] == list(ran.items())

    def metrics(folder: str) -> dict:
        return json.loads((out / folder / "metrics.json").read_text())

    for folder, stage in [
        ("data", "prepare"),
        ("tokenizer", "tokenizer"),
        ("generator", "generator"),
        ("bundle", "export"),
    ]:
        assert metrics(folder)["command"] == ran[stage], folder  # never the pipeline's argv
        assert metrics(folder)["pipeline_command"] == pipeline_command, folder
    assert metrics("generator")["evaluate_command"] == ran["evaluate"]
    served = json.loads((out / "bundle" / "manifest.json").read_text())["metrics"]  # what /v1/model shows
    assert served["command"] == ran["generator"] and served["pipeline_command"] == pipeline_command
    assert served["tokenizer"]["command"] == ran["tokenizer"]
