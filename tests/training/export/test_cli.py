"""``python -m training export`` on real run folders written by each stage's own save functions."""

from __future__ import annotations

import json
from pathlib import Path

from service.manifest import load_manifest
from tests.training.export.tiny_run import TinyRun
from training.__main__ import main
from training.generator.model import GeneratorConfig
from training.generator.train import GeneratorRunConfig
from training.generator.train import save_run as save_generator
from training.tokenizer.artifacts import save_run as save_tokenizer
from training.tokenizer.train import TokenizerConfig, TrainedTokenizer


def write_runs(tiny_run: TinyRun, root: Path) -> Path:
    tokenizer = tiny_run.tokenizer
    data, ids, gen = root / "data", root / "tok", root / "gen"
    tiny_run.dataset.save(data)
    save_tokenizer(
        ids,
        TrainedTokenizer(tokenizer, tiny_run.sids, {}, []),
        TokenizerConfig(model=tokenizer.config, encoder="tfidf-svd:32", collaborative_dims=0),  # as tiny_run
        "test",
    )
    model_config = GeneratorConfig(**{**tiny_run.generator.config.__dict__})
    save_generator(
        gen,
        tiny_run.generator,
        GeneratorRunConfig(model=model_config),
        tiny_run.sids,
        {"test": {"ndcg@10": 0.5}},
    )
    (gen / "run.json").write_text(json.dumps({"data": str(data), "ids": str(ids)}))
    return gen


def test_export_cli_writes_a_verified_bundle(tiny_run: TinyRun, tmp_path: Path, capsys) -> None:
    gen = write_runs(tiny_run, tmp_path)
    out = tmp_path / "bundle"
    assert main(["export", "--run", str(gen), "--out", str(out), "--beam", "30"]) == 0
    manifest = load_manifest(out)
    assert manifest.decoding.beam == 30 and manifest.metrics["test"] == {"ndcg@10": 0.5}
    report = json.loads((out / "metrics.json").read_text())
    assert (
        report["command"].startswith("python -m training export") and report["onnx_vs_torch_max_abs"] < 1e-4
    )
    assert "serve it:" in capsys.readouterr().out


def test_export_cli_names_a_missing_run(tmp_path: Path, capsys) -> None:
    assert main(["export", "--run", str(tmp_path / "nope"), "--out", str(tmp_path / "b")]) == 2
    assert "generator.pt does not exist" in capsys.readouterr().err
