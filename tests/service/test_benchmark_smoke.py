"""``benchmarks/serving.py`` runs end to end on the tiny bundle and both decoders agree on every top-k."""

from __future__ import annotations

import json
from pathlib import Path

from benchmarks.serving import main
from tests.training.export.tiny_run import TinyRun


def test_serving_benchmark_smoke(tiny_run: TinyRun, tmp_path: Path, capsys) -> None:
    out = tmp_path / "serving.json"
    args = [
        "--bundle",
        str(tiny_run.bundle),
        "--requests",
        "24",
        "--peer-requests",
        "24",
        "--batch-sizes",
        "1,4",
    ]
    assert main([*args, "--threads", "1", "--out", str(out)]) == 0
    report = json.loads(out.read_text())
    assert report["command"].startswith("python -m benchmarks.serving --bundle")
    assert [r["identical_topk"] for r in report["service"]] == [24, 24, 24, 24]  # kv-cache and ref-step
    assert report["peer_style"]["rps"] > 0 and "throughput ratio" in capsys.readouterr().out
