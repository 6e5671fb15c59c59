"""The benchmarks run end to end on the tiny bundle (``serving``: both decoders agree on every top-k;
``ab``: two real service processes under the same load), and the pure parts of ``reliability``."""

from __future__ import annotations

import argparse
import json
import math
import os
import signal
import subprocess
from pathlib import Path

import pytest
import redis

from benchmarks import ab
from benchmarks.local_service import start_redis, start_service, stop
from benchmarks.reliability import rated_load, restart_during_outage, server_p99_ms, sized_queue
from benchmarks.serving import main
from tests.service.conftest import API_KEY, free_port
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


def test_the_services_own_latency_is_read_from_its_histogram() -> None:
    """200 answers counted over the overload steps: 150 within 1 ms, 198 within 5 ms, 200 within 10
    ms; the 99th (the 198th) fell under 5 ms."""
    counts = {0.01: 200.0, 0.001: 150.0, 0.005: 198.0, math.inf: 200.0}
    assert server_p99_ms(counts) == 5.0
    assert server_p99_ms({}) is None


def test_the_rated_load_is_the_highest_rate_that_met_the_target_in_every_run() -> None:
    def run(rate: float, within: bool) -> dict[str, object]:
        return {"rate": rate, "p99_ms": 1.0, "failed": 0, "within_target": within}

    ramp = [run(25, False), run(25, True), run(25, True), run(50, True), run(50, True)]
    ramp += [run(75, True), run(75, False), run(75, False)]
    assert rated_load(ramp) == 50, "75 met the target once: not a load the service sustains"
    assert rated_load([run(25, False), run(25, False)]) is None


def test_the_queue_is_sized_to_hold_the_target_at_the_rated_load() -> None:
    assert sized_queue(200, 100, 32) == (20, 10)  # 200 req/s x 0.1 s in the service at once
    assert sized_queue(1000, 100, 32) == (100, 32)  # batches no larger than asked
    assert sized_queue(5, 100, 32) == (2, 1)  # always two batches of at least one


def test_ab_benchmark_smoke(tiny_run: TinyRun, tmp_path: Path, capsys) -> None:
    out = tmp_path / "ab.json"
    args = [
        "--bundle",
        str(tiny_run.bundle),
        "--variant",
        "defaults",
        "--variant",
        "tight=SIDREC_QUEUE_SIZE=20",
    ]
    args += ["--rate", "4", "--rounds", "1", "--step-seconds", "1", "--out", str(out)]
    assert ab.main(args) == 0
    report = json.loads(out.read_text())
    assert report["command"].startswith("python -m benchmarks.ab --bundle")
    assert report["variants"]["tight"]["env"] == {"SIDREC_QUEUE_SIZE": "20"}
    for result in report["variants"].values():
        assert result["rated_refused_or_failed"] == 0 and result["rated_p99_ms"] > 0
        assert len(result["rounds"]) == 1
    assert "tight" in capsys.readouterr().out


def test_an_ab_variant_names_sidrec_settings_only() -> None:
    assert ab.variant("a=SIDREC_X=1,SIDREC_Y=2") == ("a", {"SIDREC_X": "1", "SIDREC_Y": "2"})
    assert ab.variant("plain") == ("plain", {})
    for bad in ("a=PATH=/tmp", "a=SIDREC_X", "=SIDREC_X=1"):
        with pytest.raises(argparse.ArgumentTypeError):
            ab.variant(bad)


def test_reliability_restart_phase_smoke(tiny_run: TinyRun, tmp_path: Path) -> None:
    """The restart phase on the tiny bundle: SIGTERM with 20 half-open clients, then SIGKILL, during
    a Redis outage with events arriving; nothing acknowledged is lost and SIGTERM exits in time."""
    port = free_port()
    cpus = sorted(os.sched_getaffinity(0))
    env = {"SIDREC_READ_TIMEOUT_S": "30", "SIDREC_SHUTDOWN_GRACE_S": "2"}  # the grace ends the clients

    def launch() -> tuple[subprocess.Popen[bytes], str]:
        return start_service(tiny_run.bundle, port, API_KEY, cpus, env, tmp_path / "service.log")

    holder = {"redis": start_redis(port, tmp_path)}
    try:
        holder["service"], url = launch()
        for how in (signal.SIGTERM, signal.SIGKILL):
            report, url = restart_during_outage(holder, url, API_KEY, port, tmp_path, how, launch)
            assert report["events_acknowledged"] > 0 and report["events_lost"] == 0, report
            if how == signal.SIGTERM:
                assert report["half_open_clients"] == 20 and report["exit_seconds"] < 2 + 2.0, report
        assert redis.Redis(port=port).exists("sidrec:history:restart-SIGKILL-0")
    finally:
        if "service" in holder and holder["service"].poll() is None:
            stop(holder["service"])
        stop(holder["redis"])
