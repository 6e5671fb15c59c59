"""The demo: the synthetic shop end to end, then a running service and a sample recommendation.

Builds the synthetic catalogue, trains the tokenizer and the generator with the fast demo profile,
evaluates, exports the bundle, starts ``python -m service`` on it, and takes a short tour (``tour``):
what ``POST /recommend`` answers for one demo user (items with their generated tag paths, per-level
confidences, where they disagree with the catalogue, and the user's own history items behind each one),
then ``GET /items/{id}`` and ``GET /items``. The service then keeps running (Ctrl-C stops it) so you
can try the printed ``curl`` yourself; ``--no-serve`` stops after the tour.
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

__all__ = ["PLACEHOLDERS", "add_arguments", "count_placeholders", "print_tour", "run", "tour"]

#: the tag vocabularies' internal classes (``training.data.tags``), never to be shown as a tag
PLACEHOLDERS = frozenset({"<unknown>", "<other>"})


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


def tour(client: httpx.Client, history: list[str], k: int = 5) -> dict[str, Any]:
    """The demo's requests, in order, against a running service (``client`` has its base URL; a
    FastAPI ``TestClient`` works too): a recommendation with explanations and grounding, the first
    recommended item, and the first page of the catalogue. Returns each answer by name."""
    body = {"history": history, "k": k, "explain": True, "grounding": True}
    answers: dict[str, Any] = {"request": body}
    answers["recommend"] = client.post("/recommend", json=body, timeout=30.0).raise_for_status().json()
    shown = [item["item_id"] for item in answers["recommend"]["items"]] or history[-1:]
    answers["item"] = client.get(f"/items/{shown[0]}").raise_for_status().json()
    answers["items"] = client.get("/items", params={"limit": 20}).raise_for_status().json()
    return answers


def count_placeholders(value: Any) -> int:
    """How many strings anywhere in a JSON answer are an internal placeholder class."""
    if isinstance(value, dict):
        return sum(count_placeholders(v) for v in value.values())
    if isinstance(value, list):
        return sum(count_placeholders(v) for v in value)
    return int(isinstance(value, str) and value in PLACEHOLDERS)


def _tag(step: dict[str, Any]) -> str:
    """'Face (0.83)', with ', not the catalogue's' where the catalogue names another class there."""
    differs = ", not the catalogue's" if step["matches_category"] is False else ""
    return f"{step['tag']} ({step['confidence']:.2f}{differs})"


def print_tour(answers: dict[str, Any], history: list[tuple[str, str]]) -> None:
    """Print the history (item id, title) and the tour; ids too, since titles repeat in the shop."""
    print("\nhistory (oldest first):")
    for item_id, title in history:
        print(f"  - {item_id}  {title}")
    answer = answers["recommend"]
    print(f"\nrecommended by bundle {answer['bundle_id']}:")
    print(f"  {'#':>2}  {'score':>7}  {'item':<9}  {'title':<38} generated tag path (confidence)")
    for rank, item in enumerate(answer["items"], start=1):
        path = " > ".join(_tag(step) for step in item["tag_path"]) or "(no tag named)"
        print(f"  {rank:>2}  {item['score']:>7.3f}  {item['item_id']:<9}  {item['title'][:38]:<38} {path}")
        print(f"  {'':>2}  {'':>7}  {'':<9}  {'catalogue:':<38} {' > '.join(item['category_path'])}")
        grounding = item["grounding"]
        if grounding["history"]:
            because = ", ".join(h["item_id"] for h in grounding["history"])
            where = " > ".join(grounding["tag_path"]) or f"the first {grounding['shared_levels']} ID codes"
            print(f"  {'':>2}  {'':>7}  {'':<9}  {'because you had:':<38} {because} (shared: {where})")
    one = answers["item"]
    print(f"\nGET /items/{one['item_id']}: codes {one['codes']}, tag path ", end="")
    print(" > ".join(t["tag"] for t in one["tag_path"]) or "(none named)")
    page = answers["items"]
    print(f"GET /items: {page['total']} items, the first {len(page['items'])} with their tag paths")
    print(f"placeholder tags in the tour's answers: {count_placeholders(answers)}")


def run(args: argparse.Namespace) -> int:
    out: Path = args.out
    profile = load_config(PipelineConfig, REPO / "configs" / "pipeline" / "demo.toml")
    rows = run_pipeline("synthetic", out, profile)
    if any(row["status"] != 0 for row in rows):
        return 1

    dataset = Dataset.load(out / "data")
    user = 0
    history = [dataset.items[i].item_id for i in dataset.sequences[user][-5:]]
    base = f"http://127.0.0.1:{args.port}"
    command = [sys.executable, "-m", "service", "--bundle", str(out / "bundle"), "--port", str(args.port)]
    print(f"\n=== starting the service: {shlex.join(command)}", flush=True)
    env = {**os.environ, "SIDREC_REDIS_URL": os.environ.get("SIDREC_REDIS_URL", "")}
    process = subprocess.Popen(command, env=env)
    try:
        _wait_ready(base, process)
        with httpx.Client(base_url=base) as client:
            answers = tour(client, history)
        print_tour(
            answers,
            [(dataset.items[i].item_id, dataset.items[i].title) for i in dataset.sequences[user][-5:]],
        )
        body = answers["request"]
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
