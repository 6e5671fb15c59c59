"""The demo: the synthetic shop end to end, then a running service and a tour of its API.

Checks that the port is free, then builds the synthetic catalogue, trains the tokenizer and the
generator with the fast demo profile, evaluates and exports the bundle; a later run reuses that build
while its inputs (``configs/``, ``training/``, the bundle schema) are unchanged (``--rebuild`` builds
anew). It starts ``python -m service`` on the bundle with an API key (``SIDREC_API_KEY``, or a fresh
one it prints), and takes a short tour: what ``POST /recommend`` answers for one demo user (items
with their generated tag paths, per-level confidences, where they disagree with the catalogue, and
the user's own history items behind each one), ``GET /items/{id}`` and ``GET /items`` (``tour``),
then events -> a recommendation by ``user_id``, and a cold-start ``PUT /items`` (``operator_tour``).
The service then keeps running (Ctrl-C stops it) and the demo prints curl commands to try next;
``--no-serve`` stops after the tour.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import secrets
import shlex
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from training.config import load_config
from training.data.dataset import Dataset
from training.errors import SidrecError
from training.pipeline import REPO, PipelineConfig, run_pipeline

__all__ = [
    "PLACEHOLDERS",
    "add_arguments",
    "build_fingerprint",
    "cold_start_body",
    "count_placeholders",
    "operator_tour",
    "port_is_free",
    "print_operator_tour",
    "print_tour",
    "run",
    "tour",
]

#: the tag vocabularies' internal classes (``training.data.tags``), never to be shown as a tag
PLACEHOLDERS = frozenset({"<unknown>", "<other>"})


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", type=Path, default=Path("artifacts/demo"), help="where the demo is built")
    parser.add_argument("--port", type=int, default=8000, help="port of the demo service (default: 8000)")
    parser.add_argument("--no-serve", action="store_true", help="stop after the sample request")
    parser.add_argument(
        "--rebuild", action="store_true", help="build everything anew even if the last build is current"
    )


#: what the demo's build depends on: the configs, the training code and the bundle schema
BUILD_INPUTS = ("configs", "training", "service/manifest.py")
#: written into ``--out`` after a successful build
BUILD_RECORD = "demo.json"
#: the minimum length of SIDREC_API_KEY (service/settings.py)
MIN_KEY_LENGTH = 16


def build_fingerprint(root: Path = REPO) -> str:
    """sha256 over every file the build depends on (``BUILD_INPUTS``, by path and content)."""
    digest = hashlib.sha256()
    for name in BUILD_INPUTS:
        top = root / name
        files = [top] if top.is_file() else sorted(p for p in top.rglob("*") if p.suffix in (".py", ".toml"))
        for path in files:
            digest.update(path.relative_to(root).as_posix().encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()


def _is_current(out: Path, fingerprint: str) -> bool:
    record = out / BUILD_RECORD
    if not (record.is_file() and (out / "bundle" / "manifest.json").is_file() and (out / "data").is_dir()):
        return False
    try:
        return bool(json.loads(record.read_text()).get("fingerprint") == fingerprint)
    except ValueError:
        return False


def port_is_free(port: int, host: str = "127.0.0.1") -> bool:
    """Whether a server could listen on ``host:port`` now."""
    with socket.socket() as sock:
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


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


def operator_tour(
    client: httpx.Client,
    api_key: str,
    history: list[str],
    new_item: dict[str, Any],
    user_id: str = "demo-user",
    new_item_id: str = "demo-new-1",
) -> dict[str, Any]:
    """The calls that need the API key, against a running service: ``history`` as events of
    ``user_id``, a recommendation by ``user_id`` alone, and ``new_item`` registered by cold start
    (read back if an earlier run against the same Redis registered it). Returns each answer by name."""
    key = {"X-API-Key": api_key}
    answers: dict[str, Any] = {}
    events = {"user_id": user_id, "item_ids": history}
    answers["events"] = client.post("/events", json=events, headers=key).raise_for_status().json()
    by_user = {"user_id": user_id, "k": 5}
    answers["by_user"] = client.post("/recommend", json=by_user, timeout=30.0).raise_for_status().json()
    put = client.put(f"/items/{new_item_id}", json=new_item, headers=key)
    if put.status_code == 422 and "already in the catalogue" in put.text:
        put = client.get(f"/items/{new_item_id}")
    answers["cold_start"] = put.raise_for_status().json()
    return answers


def print_operator_tour(answers: dict[str, Any], user_id: str = "demo-user") -> None:
    events, by_user, cold = answers["events"], answers["by_user"], answers["cold_start"]
    print(f"\nPOST /events (with the API key): {user_id} now has {events['history_length']} events")
    print(f"POST /recommend {{'user_id': '{user_id}'}}: " + ", ".join(i["item_id"] for i in by_user["items"]))
    path = " > ".join(t["tag"] for t in cold["tag_path"]) or "(no tag named)"
    print(f"PUT /items/{cold['item_id']} (cold start): codes {cold['codes']}, generated tag path {path}")


def cold_start_body(out: Path, dataset: Dataset, rows: list[int], dim: int) -> dict[str, Any]:
    """A cold-start body: the mean text embedding of ``rows`` (read from the tokenizer's embedding
    cache), titled and filed like the last of them."""
    vectors = np.zeros((1, dim), dtype=np.float32)
    for path in sorted((out / "data" / "cache").glob("*.npy")):
        table = np.load(path, allow_pickle=False)
        if table.shape == (dataset.n_items, dim):
            vectors = table[rows]
            break
    last = dataset.items[rows[-1]]
    return {
        "embedding": [round(float(v), 6) for v in vectors.mean(axis=0)],
        "title": f"new: {last.title}",
        "category_path": list(last.category_path),
    }


def _api_key() -> tuple[str, bool]:
    """SIDREC_API_KEY if set (checked here, before any work), else a fresh one: (key, generated)."""
    given = os.environ.get("SIDREC_API_KEY")
    if given is None:
        return secrets.token_urlsafe(24), True
    if len(given) < MIN_KEY_LENGTH:
        raise SidrecError(
            f"SIDREC_API_KEY must be at least {MIN_KEY_LENGTH} characters (unset it for a fresh one)"
        )
    return given, False


def _try_next(base: str, key: str, generated: bool, history: list[str], new_item: Path) -> str:
    json_type = "-H 'content-type: application/json'"
    recommend = json.dumps({"history": history[-3:], "k": 5, "explain": True})
    events = json.dumps({"user_id": "me", "item_ids": history[-3:]})
    lines = [
        f"the service is running on {base}; Ctrl-C stops it. OpenAPI docs: {base}/docs",
        f"API key of this service: {key}"
        + (
            "  (generated for this run; export SIDREC_API_KEY, 16+ characters, to choose it)"
            if generated
            else ""
        ),
        "",
        "try next:",
        f"  curl -s {base}/readyz",
        f"  curl -s -X POST {base}/recommend {json_type} -d '{recommend}'",
        f"  curl -s {base}/items/{history[-1]}",
        f"  curl -s '{base}/items?limit=3&offset=0'",
        f"  curl -s -X POST {base}/events -H 'X-API-Key: {key}' {json_type} -d '{events}'",
        f'  curl -s -X POST {base}/recommend {json_type} -d \'{{"user_id": "me", "k": 5}}\'',
        f"  curl -s -X PUT {base}/items/my-new-item -H 'X-API-Key: {key}' {json_type} -d @{new_item}",
        f"  curl -s -X POST {base}/admin/reload -H 'X-API-Key: {key}'",
        f"  curl -s {base}/v1/model -H 'X-API-Key: {key}'",
        f"  curl -s {base}/metrics | grep sidrec_ | head",
    ]
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    out: Path = args.out
    if not port_is_free(args.port):
        raise SidrecError(f"port {args.port} is in use: stop what listens there, or `make demo PORT=8001`")
    api_key, generated = _api_key()
    fingerprint = build_fingerprint()
    if not args.rebuild and _is_current(out, fingerprint):
        print(
            f"=== reusing the demo built in {out} (its inputs are unchanged; `make demo REBUILD=1` rebuilds)"
        )
    else:
        (out / BUILD_RECORD).unlink(missing_ok=True)
        profile = load_config(PipelineConfig, REPO / "configs" / "pipeline" / "demo.toml")
        rows = run_pipeline("synthetic", out, profile)
        if any(row["status"] != 0 for row in rows):
            return 1
        record = {"fingerprint": fingerprint, "inputs": list(BUILD_INPUTS), "built_at": time.time()}
        (out / BUILD_RECORD).write_text(json.dumps(record, indent=2) + "\n")

    dataset = Dataset.load(out / "data")
    user = 0
    last_rows = [int(i) for i in dataset.sequences[user][-5:]]
    history = [dataset.items[i].item_id for i in last_rows]
    manifest = json.loads((out / "bundle" / "manifest.json").read_text())
    new_item = cold_start_body(out, dataset, last_rows[-2:], int(manifest["embedding_dim"]))
    new_item_file = out / "new_item.json"
    new_item_file.write_text(json.dumps(new_item) + "\n")
    base = f"http://127.0.0.1:{args.port}"
    command = [sys.executable, "-m", "service", "--bundle", str(out / "bundle"), "--port", str(args.port)]
    print(f"\n=== starting the service: {shlex.join(command)}", flush=True)
    env = {
        **os.environ,
        "SIDREC_REDIS_URL": os.environ.get("SIDREC_REDIS_URL", ""),  # no Redis needed: in-process store
        "SIDREC_API_KEY": api_key,
    }
    process = subprocess.Popen(command, env=env)
    try:
        _wait_ready(base, process)
        with httpx.Client(base_url=base) as client:
            answers = tour(client, history)
            print_tour(answers, [(dataset.items[i].item_id, dataset.items[i].title) for i in last_rows])
            print_operator_tour(operator_tour(client, api_key, history, new_item))
        print("\n" + _try_next(base, api_key, generated, history, new_item_file) + "\n", flush=True)
        if args.no_serve:
            return 0
        process.wait()
    except KeyboardInterrupt:
        pass
    finally:
        process.terminate()
        process.wait(timeout=10)
    return 0
