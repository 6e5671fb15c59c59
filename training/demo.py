"""The demo: the synthetic shop end to end, then a running service and a sample recommendation.

Builds the synthetic catalogue, trains the tokenizer and the generator with the fast demo profile,
evaluates, exports the bundle, starts ``python -m service`` on it, and shows what ``POST /recommend``
answers for one demo user: items with their generated tag paths and per-level confidences. The service
then keeps running (Ctrl-C stops it) so you can try the printed ``curl`` yourself; ``--no-serve`` stops
after the sample.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx

from training.config import load_config
from training.data.dataset import Dataset
from training.errors import SidrecError
from training.pipeline import REPO, PipelineConfig, run_pipeline

__all__ = ["add_arguments", "run"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", type=Path, default=Path("artifacts/demo"), help="where the demo is built")
    parser.add_argument("--port", type=int, default=8000, help="port of the demo service (default: 8000)")
    parser.add_argument("--no-serve", action="store_true", help="stop after the sample request")


def _wait_ready(base: str, process: subprocess.Popen[bytes], timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SidrecError(f"the service exited with status {process.returncode} before it was ready")
        try:
            if httpx.get(f"{base}/readyz", timeout=1.0).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    raise SidrecError(f"the service did not become ready within {timeout_s:.0f} s")


def _show(answer: dict[str, object], history: list[tuple[str, str]]) -> None:
    """Print the history (item id, title) and the answer; ids too, since titles repeat in the shop."""
    print("\nhistory (oldest first):")
    for item_id, title in history:
        print(f"  - {item_id}  {title}")
    print(f"\nrecommended by bundle {answer['bundle_id']}:")
    print(f"  {'#':>2}  {'score':>7}  {'item':<9}  {'title':<38} generated tag path (confidence)")
    items: list[dict[str, Any]] = answer["items"]  # type: ignore[assignment]
    for rank, item in enumerate(items, start=1):
        path = " > ".join(f"{step['tag']} ({step['confidence']:.2f})" for step in item["tag_path"])
        print(f"  {rank:>2}  {item['score']:>7.3f}  {item['item_id']:<9}  {item['title'][:38]:<38} {path}")


def run(args: argparse.Namespace) -> int:
    out: Path = args.out
    profile = load_config(PipelineConfig, REPO / "configs" / "pipeline" / "demo.toml")
    rows = run_pipeline("synthetic", out, profile)
    if any(row["status"] != 0 for row in rows):
        return 1

    dataset = Dataset.load(out / "data")
    user = 0
    history = [dataset.items[i].item_id for i in dataset.sequences[user][-5:]]
    body = {"history": history, "k": 5, "explain": True}
    base = f"http://127.0.0.1:{args.port}"
    command = [sys.executable, "-m", "service", "--bundle", str(out / "bundle"), "--port", str(args.port)]
    print(f"\n=== starting the service: {shlex.join(command)}", flush=True)
    env = {**os.environ, "SIDREC_REDIS_URL": os.environ.get("SIDREC_REDIS_URL", "")}
    process = subprocess.Popen(command, env=env)
    try:
        _wait_ready(base, process)
        answer = httpx.post(f"{base}/recommend", json=body, timeout=30.0).json()
        _show(
            answer, [(dataset.items[i].item_id, dataset.items[i].title) for i in dataset.sequences[user][-5:]]
        )
        curl = f"curl -s -X POST {base}/recommend -H 'content-type: application/json' -d '{json.dumps(body)}'"
        print(f"\ntry it yourself:\n  {curl}\n")
        if args.no_serve:
            return 0
        print(f"the service is running on {base} (docs at {base}/docs); Ctrl-C stops it")
        process.wait()
    except KeyboardInterrupt:
        pass
    finally:
        process.terminate()
        process.wait(timeout=10)
    return 0
