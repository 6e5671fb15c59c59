"""Cost against catalogue size: synthetic catalogues of 10^4, 10^5 and 10^6 items, from raw files to
a serving bundle, on this machine.

  python -m benchmarks.scale --out benchmarks/results/scale-cpu.json

For each size it writes a synthetic catalogue in our own format (items.jsonl + interactions.tsv: a
3-level taxonomy of 512 leaves, titles from each leaf's words, ``--users-per-item`` users per item whose
histories stay mostly in one leaf), then runs each stage as its own ``python -m training`` process and
reads its wall time and peak resident memory (``os.wait4``):

- prepare, tokenizer (the pipeline's default profile, ``configs/pipeline/demo.toml``: the shape
  chosen from the data), generator (``configs/generator/test.toml``, one epoch of at most 500 steps
  with a sampled softmax, ``GENERATOR_SETS``: export needs a trained model; its cost is reported, not
  part of the question), export;
- the bundle's size on disk (and its largest files) and the ordering it serves (``ranking``: ``beam``
  decodes through the prefix index, whose cost per request does not grow with the catalogue);
- ``python -m service`` on the bundle (in-process store): seconds until ``/readyz`` answers, resident
  memory then and at the end (peak);
- served latency: ``--requests`` requests one at a time (k 10, beam 20, test histories of the
  prepared data) for p50 / p99, then the same number from ``--concurrency`` clients for requests per
  second. Client and service share the machine's CPUs, as on a 2-core box they must.

Prints a table, writes the JSON (every figure and the command) and a plot beside it (``.png``). Use
``--sizes 2000 --requests 30 --tokenizer-set train.steps=30 --tokenizer-set train.eval_every=15`` for a
smoke run of a minute or two.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import shlex
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from benchmarks.local_service import REPO, free_port, stop
from training.config import load_config
from training.pipeline import PipelineConfig

__all__ = ["main", "write_catalogue"]

#: taxonomy of the synthetic catalogues: departments x categories x leaves
BRANCHING = (8, 8, 8)
#: words per leaf (titles draw 3 of them) and brands
LEAF_WORDS, BRANDS = 24, 300
#: the generator stage's overrides of configs/generator/test.toml: a sampled softmax (the test
#: config's full softmax scores every item at every position of a batch: 10^6 logits per target at
#: 10^6 items) and at most 500 steps (a 10^6-item epoch is ~7,800 steps, and each step writes the
#: whole 10^6-row hash table: its dense embedding gradients and AdamW, ~0.8 s a step on a busy core)
GENERATOR_SETS = ("loss.dot_negatives=256", "train.max_steps=500")


def write_catalogue(folder: Path, n_items: int, users_per_item: float, seed: int = 0) -> dict[str, int]:
    """Write items.jsonl + interactions.tsv (sidrec format) of a synthetic shop; returns its counts."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    n_leaves = int(np.prod(BRANCHING))
    leaf_share = 1.0 / (np.arange(n_leaves) + 5.0)
    leaf = np.sort(rng.choice(n_leaves, n_items, p=leaf_share / leaf_share.sum()))  # items grouped by leaf
    words = rng.integers(0, LEAF_WORDS, (n_items, 3))
    brand = rng.integers(0, BRANDS, n_items)
    with (folder / "items.jsonl").open("w") as f:
        for i in range(n_items):
            a, rest = divmod(int(leaf[i]), BRANCHING[1] * BRANCHING[2])
            b, c = divmod(rest, BRANCHING[2])
            path = ["Shop", f"Dept {a}", f"Dept {a} Cat {b}", f"Dept {a} Cat {b} Leaf {c}"]
            title = " ".join(f"l{leaf[i]}w{w}" for w in words[i]) + f" b{brand[i]}"
            f.write(json.dumps({"item_id": f"I{i:07d}", "title": title, "category_path": path}) + "\n")

    n_users = max(1, round(n_items * users_per_item))
    lengths = 5 + rng.geometric(0.2, n_users) - 1  # mean 9, as Amazon Beauty
    user = np.repeat(np.arange(n_users), lengths)  # (T,)
    popularity = 1.0 / (rng.permutation(n_items) + 10.0) ** 0.8
    popular = rng.choice(n_items, len(user), p=popularity / popularity.sum())  # (T,)
    starts = np.searchsorted(leaf, np.arange(n_leaves))
    sizes = np.diff(np.r_[starts, n_items])
    home = leaf[rng.choice(n_items, n_users, p=popularity / popularity.sum())][user]  # a user's leaf
    local = starts[home] + (rng.random(len(user)) * sizes[home]).astype(np.int64)
    item = np.where(rng.random(len(user)) < 0.7, local, popular)
    elapsed = rng.integers(0, 20, len(user)).cumsum()  # days between a user's purchases: 0-19
    first = np.r_[0, lengths.cumsum()[:-1]]  # (n_users,) each user's first row
    day = rng.integers(0, 1000, n_users)[user] + elapsed - elapsed[first][user]
    with (folder / "interactions.tsv").open("w") as f:
        f.write("user_id\titem_id\ttimestamp\n")
        for start in range(0, len(user), 200_000):
            chunk = slice(start, start + 200_000)
            f.writelines(
                f"U{u:07d}\tI{i:07d}\t{1_500_000_000 + 86_400 * d}\n"
                for u, i, d in zip(
                    user[chunk].tolist(), item[chunk].tolist(), day[chunk].tolist(), strict=True
                )
            )
    return {"items": n_items, "users": n_users, "interactions": len(user)}


def run_stage(argv: list[str], log: Path) -> dict[str, Any]:
    """``python -m training ARGV`` in its own process: wall seconds and peak resident MiB."""
    started = time.perf_counter()
    with log.open("w") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "training", *argv], cwd=REPO, stdout=out, stderr=subprocess.STDOUT
        )
        _, status, usage = os.wait4(process.pid, 0)
    process.returncode = os.waitstatus_to_exitcode(status)
    seconds = time.perf_counter() - started
    if process.returncode != 0:
        tail = "\n".join(log.read_text().splitlines()[-20:])
        raise RuntimeError(f"{shlex.join(argv)} exited with {process.returncode}:\n{tail}")
    return {
        "command": shlex.join(["python", "-m", "training", *argv]),
        "seconds": round(seconds, 2),
        "peak_mib": round(usage.ru_maxrss / 1024, 1),
    }


def _memory_mib(pid: int, field: str) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return round(int(line.split()[1]) / 1024, 1)
    return float("nan")


def _histories(data: Path, count: int) -> list[list[str]]:
    """Test histories (all but the last item) of the first ``count`` users, as item ids."""
    ids = [json.loads(line)["item_id"] for line in (data / "items.jsonl").open()]
    histories = []
    with (data / "sequences.jsonl").open() as f:
        for line in f:
            items = json.loads(line)["items"]
            histories.append([ids[i] for i in items[:-1]])
            if len(histories) == count:
                break
    return histories


def serve(bundle: Path, data: Path, requests: int, concurrency: int, log: Path) -> dict[str, Any]:
    """Start the service on ``bundle``, time its start, then latency and throughput at beam 20."""
    port = free_port()
    env = {
        **os.environ,
        "SIDREC_BUNDLE_PATH": str(bundle),
        "SIDREC_REDIS_URL": "",
        "SIDREC_PORT": str(port),
        "SIDREC_HOST": "127.0.0.1",
        "SIDREC_LOG_LEVEL": "warning",
    }
    url = f"http://127.0.0.1:{port}"
    started = time.perf_counter()
    with log.open("w") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "service"], cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT
        )
    try:
        while True:
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{url}/readyz", timeout=1).status_code == 200:
                    break
            if process.poll() is not None or time.perf_counter() - started > 600:
                raise RuntimeError(f"the service did not start:\n{log.read_text()[-3000:]}")
            time.sleep(0.1)
        start_seconds = time.perf_counter() - started
        rss_ready = _memory_mib(process.pid, "VmRSS")
        histories = _histories(data, requests)
        bodies = [{"history": histories[i % len(histories)], "k": 10, "beam": 20} for i in range(requests)]
        with httpx.Client(base_url=url, timeout=60) as client:
            for body in bodies[:20]:  # warm-up
                client.post("/recommend", json=body).raise_for_status()
            latencies = []
            for body in bodies:
                sent = time.perf_counter()
                client.post("/recommend", json=body).raise_for_status()
                latencies.append(time.perf_counter() - sent)
        rate = _throughput(url, bodies, concurrency)
        return {
            "start_seconds": round(start_seconds, 2),
            "rss_ready_mib": rss_ready,
            "rss_peak_mib": _memory_mib(process.pid, "VmHWM"),
            "p50_ms": round(float(np.percentile(latencies, 50)) * 1000, 2),
            "p99_ms": round(float(np.percentile(latencies, 99)) * 1000, 2),
            "requests_per_second": round(rate, 1),
            "requests": requests,
            "concurrency": concurrency,
        }
    finally:
        stop(process)


def _throughput(url: str, bodies: list[dict[str, Any]], concurrency: int) -> float:
    """Requests per second answered to ``concurrency`` closed-loop clients sending ``bodies``."""
    cursor = iter(range(len(bodies)))
    lock = threading.Lock()
    errors: list[BaseException] = []

    def client_loop() -> None:
        with httpx.Client(base_url=url, timeout=60) as client:
            while True:
                with lock:
                    index = next(cursor, None)
                if index is None:
                    return
                try:
                    client.post("/recommend", json=bodies[index]).raise_for_status()
                except httpx.HTTPError as exc:
                    errors.append(exc)
                    return

    threads = [threading.Thread(target=client_loop) for _ in range(concurrency)]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if errors:
        raise RuntimeError(f"throughput run failed: {errors[0]}")
    return len(bodies) / (time.perf_counter() - started)


def measure(size: int, args: argparse.Namespace, work: Path) -> dict[str, Any]:
    """Every figure of one catalogue size."""
    root = work / f"n{size}"
    raw, data, tok, gen, bundle = (root / name for name in ("raw", "data", "tok", "gen", "bundle"))
    root.mkdir(parents=True, exist_ok=True)
    written = time.perf_counter()
    counts = write_catalogue(raw, size, args.users_per_item, seed=args.seed)
    row: dict[str, Any] = {
        "n_items": size,
        "raw": counts,
        "write_seconds": round(time.perf_counter() - written, 1),
    }
    profile = load_config(PipelineConfig, REPO / "configs" / "pipeline" / "demo.toml")
    tokenizer_sets = [*profile.tokenizer.set, *args.tokenizer_set]
    tokenizer_args = [arg for pair in tokenizer_sets for arg in ("--set", pair)]
    generator_config = str(REPO / "configs" / "generator" / "test.toml")
    stages = {
        "prepare": ["prepare", "--source", f"sidrec:{raw}", "--out", str(data)],
        "tokenizer": ["tokenizer", "--data", str(data), "--out", str(tok), *tokenizer_args],
        "generator": [
            "generator", "--data", str(data), "--ids", str(tok), "--out", str(gen),
            "--config", generator_config, "--set", "train.epochs=1", "--set", "eval.valid_users=500",
            *(arg for pair in GENERATOR_SETS for arg in ("--set", pair)),
        ],
        "export": ["export", "--run", str(gen), "--out", str(bundle)],
    }  # fmt: skip
    for name, argv in stages.items():
        print(f"[{size:,} items] {name} ...", flush=True)
        row[name] = run_stage(argv, root / f"{name}.log")
    prepared = json.loads((data / "stats.json").read_text())
    row["prepared"] = {k: prepared[k] for k in ("users", "items", "interactions")}
    spec = json.loads((tok / "sids.json").read_text())
    row["id_spec"] = {k: spec[k] for k in ("levels", "codebook_size", "id_length")}
    tokenizer = json.loads((tok / "metrics.json").read_text())
    row["tokenizer"]["ids"] = {
        k: tokenizer[k] for k in ("collision_rate", "max_items_per_id", "items_moved_by_disambiguation")
    }
    row["generator"]["steps"] = json.loads((gen / "metrics.json").read_text())["steps"]
    files = {p.name: p.stat().st_size for p in bundle.iterdir() if p.is_file()}
    row["bundle_mib"] = round(sum(files.values()) / 2**20, 1)
    row["bundle_largest_mib"] = {
        name: round(size / 2**20, 1) for name, size in sorted(files.items(), key=lambda f: -f[1])[:3]
    }
    # what a request's cost depends on: "beam" decodes through the prefix index; "dot" would score
    # every item of the catalogue for every request
    row["ranking"] = json.loads((bundle / "manifest.json").read_text())["decoding"]["ranking"]
    print(f"[{size:,} items] serving ...", flush=True)
    row["service"] = serve(bundle, data, args.requests, args.concurrency, root / "service.log")
    return row


def table(rows: list[dict[str, Any]]) -> str:
    header = (
        f"{'items':>10} {'prepare s/MiB':>14} {'tokenizer s/MiB':>16} {'generator s/MiB':>16} "
        f"{'export s/MiB':>14} {'bundle MiB':>10} {'start s':>8} {'RSS MiB':>8} "
        f"{'p50 ms':>7} {'p99 ms':>7} {'req/s':>6}"
    )
    lines = [header]
    for row in rows:
        stage = {
            n: f"{row[n]['seconds']:.0f}/{row[n]['peak_mib']:.0f}"
            for n in ("prepare", "tokenizer", "generator", "export")
        }
        service = row["service"]
        lines.append(
            f"{row['n_items']:>10,} {stage['prepare']:>14} {stage['tokenizer']:>16} {stage['generator']:>16} "
            f"{stage['export']:>14} {row['bundle_mib']:>10} {service['start_seconds']:>8} "
            f"{service['rss_peak_mib']:>8} {service['p50_ms']:>7} {service['p99_ms']:>7} "
            f"{service['requests_per_second']:>6}"
        )
    return "\n".join(lines)


def plot(rows: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sizes = [row["n_items"] for row in rows]
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
    for name in ("prepare", "tokenizer", "generator", "export"):
        axes[0].plot(sizes, [row[name]["seconds"] for row in rows], marker="o", label=name)
        axes[1].plot(sizes, [row[name]["peak_mib"] for row in rows], marker="o", label=name)
    axes[1].plot(sizes, [row["service"]["rss_peak_mib"] for row in rows], marker="s", label="service RSS")
    axes[0].plot(sizes, [row["service"]["start_seconds"] for row in rows], marker="s", label="service start")
    axes[2].plot(sizes, [row["service"]["p50_ms"] for row in rows], marker="o", label="p50")
    axes[2].plot(sizes, [row["service"]["p99_ms"] for row in rows], marker="o", label="p99")
    titles = ("wall time (s)", "peak memory (MiB)", "served latency at beam 20, one at a time (ms)")
    for axis, title in zip(axes, titles, strict=True):
        axis.set_xscale("log")
        axis.set_yscale("log")
        axis.set_xlabel("catalogue items")
        axis.set_title(title)
        axis.legend(fontsize=8)
        axis.grid(alpha=0.3, which="both")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.scale",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--out", type=Path, required=True, help="JSON report (the plot goes beside it)")
    parser.add_argument("--sizes", default="10000,100000,1000000", help="catalogue sizes, comma-separated")
    parser.add_argument(
        "--users-per-item", type=float, default=1.0, help="users per catalogue item (default 1)"
    )
    parser.add_argument("--requests", type=int, default=300, help="timed requests per size (default 300)")
    parser.add_argument(
        "--concurrency", type=int, default=8, help="clients of the throughput run (default 8)"
    )
    parser.add_argument(
        "--work", type=Path, default=REPO / "runs" / "scale", help="where the runs are written"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--tokenizer-set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="tokenizer override after the profile's (a smoke run: train.steps=30); none for a real run",
    )
    args = parser.parse_args(argv)
    sizes = [int(part) for part in args.sizes.split(",") if part.strip()]
    command = shlex.join(["python", "-m", "benchmarks.scale", *(sys.argv[1:] if argv is None else argv)])
    rows = []
    for size in sizes:
        rows.append(measure(size, args, args.work))
        report = {
            "command": command,
            "machine": {"cpus": len(os.sched_getaffinity(0)), "platform": platform.platform()},
            "rows": rows,
        }
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(
            json.dumps(report, indent=2) + "\n"
        )  # after every size: a long run keeps its rows
    print(table(rows))
    plot(rows, args.out.with_suffix(".png"))
    print(f"written: {args.out} and {args.out.with_suffix('.png')}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
