"""Scale-out on one machine: two service replicas sharing one Redis, and two sharing a Redis Cluster,
against one replica, under the same load; then whether the replicas agree.

  python -m benchmarks.scale_out --bundle artifacts/demo/bundle --data artifacts/demo/data \\
      --out benchmarks/results/scale-out.json

Starts its own ``redis-server`` and a three-master Redis Cluster on loopback
(``benchmarks.redis_cluster``), both append-only and fsynced every second as compose and k8s run
Redis, and four ``python -m service`` processes on the bundle: A and B on the Redis, C and D on the
cluster (``redis+cluster://``). Three scenarios get the same open-loop load from ``deploy/loadtest``,
whose harness sends each request to the scenario's replicas in turn (several ``--url``), every 2xx
checked for correctness:

- ``one``      A alone (one replica, one Redis)
- ``two``      A and B (two replicas, one Redis)
- ``cluster``  C and D (two replicas, the Redis Cluster)

Each round gives every scenario a step at ``--rate`` and then one at ``--overload-factor`` × it,
``--step-seconds`` each, the scenarios' order reversed every other round: this VM's speed drifts over
tens of seconds (``benchmarks.ab``), so interleaved short steps let a slow spell fall on every
scenario alike. A scenario's steps are pooled: p50 and p99 of the valid recommendations at the rated
load, and throughput (valid answers per second) at the overload, where the replicas are saturated
and shed the rest (429/503, counted apart from errors; ``saturated`` says whether they did), with the
CPU time the replicas and Redis spent per valid answer (``/proc``), read over each step. Two-vs-one is
the ratio of each. Requests use the bundle's widest beam (``--beam``), so that the replicas work
hard per request; where they still keep up with all the one-core harness sends, the throughputs are
that rate, and the CPU per answer is what tells the scenarios' costs apart.

Every replica is pinned to the same service CPUs (``--service-cpus``) and the harness to the others,
so two replicas share the CPU time one had: on one machine two-vs-one measures what being a fleet
costs (two processes and two queues, every replica following the others through Redis), not added
capacity, which comes from replicas on more machines. An idle replica costs next to nothing (a poll
of Redis every ``service.fleet.POLL_S``), so all four run throughout.

After the load, on each pair, the consistency checks, each counted ok / total with its worst delay:

- items: ``--items`` items registered with ``PUT /items`` on the first replica (by text, every other
  one, when the bundle carries a text encoder; by embedding otherwise) must be served by the second
  within 1 s, with the same semantic ID (``GET /items/{id}``), and recommended by it (``POST
  /recommend`` filtered to the item's own category);
- events: ``--users`` users' events posted on the first replica must be the history the second
  reads for the user within 1 s (``POST /recommend`` by ``user_id``: ``history_used``), and an event
  posted on the second must extend that same history.

A check's delay runs from the writer's answer to the sending of the first read that found the write.
The replicas' counters of store trouble (``/metrics``) are reported too: a replica that lost Redis
for a moment serves histories from its own memory, which lack what the other replica wrote, so an
answer that recommends an item of the history is then a consistency failure that shows as invalid.

Prints a table, writes the JSON (with the command) and a plot beside it (``.png``).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import secrets
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from benchmarks.local_service import cpu_list, free_port, split_cpus, start_redis, start_service, stop
from benchmarks.redis_cluster import LoopbackCluster
from benchmarks.reliability import load, log, summarise
from deploy.loadtest import LoadTestConfig
from deploy.loadtest.report import Outcome

__all__ = ["SCENARIOS", "check_events", "check_items", "main", "pooled"]

#: scenario -> (what it is, its replicas by name); A and B share the Redis, C and D the cluster
SCENARIOS: dict[str, tuple[str, tuple[str, ...]]] = {
    "one": ("one replica, one Redis", ("A",)),
    "two": ("two replicas, one Redis", ("A", "B")),
    "cluster": ("two replicas, Redis Cluster", ("C", "D")),
}
#: the pairs the consistency checks run on: scenario -> (the replica written to, the one read from)
PAIRS = {"two": ("A", "B"), "cluster": ("C", "D")}
#: seconds within which a write on one replica must be seen by the other: a read sent to it this long
#: after the write was answered must find it (a check's delay is to the sending of the first read that
#: found it, so the reader's own answer time is not counted as lateness)
VISIBLE_WITHIN_S = 1.0
#: seconds a check keeps looking after that, so that a late write is timed rather than only failed
GIVE_UP_S = 5.0
#: statuses of a request the service refused because it was overloaded (both with Retry-After)
SHED = ("429", "503")
#: the replicas' counters of trouble with their store, read from /metrics at the end: a replica that
#: lost Redis for a moment serves histories from its own memory, which lack the other's events
STORE_COUNTERS = {
    "sidrec_store_errors_total": "store_errors",
    "sidrec_redis_reconnect_attempts_total": "redis_reconnect_attempts",
    "sidrec_events_flushed_total": "events_spooled_then_flushed",
}


# ----------------------------------------------------------------------------------- the load
def cpu_seconds(pids: Iterable[int]) -> float:
    """User + system CPU seconds the processes ``pids`` (all their threads) have used so far."""
    ticks = 0
    for pid in pids:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()  # from field 3 on
        ticks += int(fields[11]) + int(fields[12])  # utime and stime: fields 14 and 15
    return ticks / os.sysconf("SC_CLK_TCK")


@dataclass
class Step:
    """One open-loop step: its outcomes and the CPU seconds its replicas and its Redis used."""

    outcomes: list[Outcome]
    service_cpu_s: float
    redis_cpu_s: float


def measured_step(
    config: LoadTestConfig, rate: float, seconds: float, replicas: list[int], redis: list[int]
) -> Step:
    """``benchmarks.reliability.load`` with the CPU time of the processes ``replicas`` and ``redis``
    read just before the step and once its last answer is in (the seeding before it is not counted)."""
    marks: list[tuple[float, float]] = []
    outcomes: list[Outcome] = []

    def mark(*_: Any) -> None:
        marks.append((cpu_seconds(replicas), cpu_seconds(redis)))

    def collect(rate: float, step: list[Outcome]) -> None:
        mark()
        outcomes.extend(step)

    load(config, rate, seconds, before_step=mark, on_step=collect)
    (service_before, redis_before), (service_after, redis_after) = marks
    return Step(outcomes, service_after - service_before, redis_after - redis_before)


def pooled(steps: list[Step], seconds: float, names: dict[str, str]) -> dict[str, Any]:
    """One scenario's steps of one kind (rated or overload) pooled: throughput (valid answers per
    second, over each step's length and the drain after it), p50 / p99 of the valid recommendations
    (events excluded), invalid answers, shed and other failures, requests per replica (``names``:
    URL -> replica), and CPU milliseconds per valid answer of the replicas and of Redis."""
    outcomes = [outcome for step in steps for outcome in step.outcomes]
    numbers = summarise(outcomes)
    elapsed = sum(max([seconds, *(outcome.finished_at for outcome in step.outcomes)]) for step in steps)
    ok = sum(outcome.ok for outcome in outcomes)
    shed = sum(outcome.status in SHED for outcome in outcomes)
    invalid = {f"{o.kind}: {'; '.join(o.problems)}" for o in outcomes if o.problems}

    def per_answer(cpu_s: float) -> float | None:
        return round(1000 * cpu_s / ok, 3) if ok else None

    return {
        "requests": len(outcomes),
        "throughput_rps": round(ok / elapsed, 2) if elapsed else None,
        "p50_ms": numbers["admitted_p50_ms"],
        "p99_ms": numbers["admitted_p99_ms"],
        "p99_ms_by_round": [summarise(step.outcomes)["admitted_p99_ms"] for step in steps],
        "invalid": numbers["invalid"],
        "invalid_examples": sorted(invalid)[:5],
        "shed": shed,
        "errors": len(outcomes) - ok - numbers["invalid"] - shed,
        "status_counts": numbers["status_counts"],
        "by_replica": dict(sorted(Counter(names.get(o.target, o.target) for o in outcomes).items())),
        "service_cpu_ms_per_answer": per_answer(sum(step.service_cpu_s for step in steps)),
        "redis_cpu_ms_per_answer": per_answer(sum(step.redis_cpu_s for step in steps)),
    }


def store_trouble(url: str) -> dict[str, float]:
    """``STORE_COUNTERS`` of one replica (each summed over its labels)."""
    totals = dict.fromkeys(STORE_COUNTERS.values(), 0.0)
    for line in httpx.get(f"{url}/metrics", timeout=30).text.splitlines():
        name = line.split("{")[0].split(" ")[0]
        if name in STORE_COUNTERS:
            totals[STORE_COUNTERS[name]] += float(line.split()[-1])
    return totals


def ratio(numerator: float | None, denominator: float | None) -> float | None:
    return round(numerator / denominator, 3) if numerator is not None and denominator else None


# ----------------------------------------------------------------------------- the consistency
def check_items(
    writer: str,
    reader: str,
    api_key: str,
    count: int,
    embedding_dim: int,
    by_text: bool,
    titles: list[str],
    tag: str,
    seed: int,
) -> dict[str, Any]:
    """``count`` cold-start items registered on ``writer``: each must be served by ``reader`` within
    ``VISIBLE_WITHIN_S`` of its registration's answer, with the same codes, and be what ``reader``
    recommends under the item's own category (the only item there). Embeddings are random unit
    vectors: what is checked is that the fleet agrees on an item, not where the item lands."""
    rng = np.random.default_rng(seed)
    key = {"X-API-Key": api_key}
    delays: list[float] = []
    failures: list[str] = []
    with httpx.Client(timeout=30) as client:
        for n in range(count):
            item_id = f"scale-out-{tag}-{n}"
            category = ["ScaleOut", f"{tag}-{n}"]
            title = titles[n % len(titles)]
            body: dict[str, Any] = {"title": f"scale-out {n}: {title}", "category_path": category}
            if by_text and n % 2 == 0:
                body["text"] = title
            else:
                vector = rng.standard_normal(embedding_dim)
                body["embedding"] = [round(float(v), 6) for v in vector / np.linalg.norm(vector)]
            put = client.put(f"{writer}/items/{item_id}", json=body, headers=key)
            answered = time.monotonic()
            if put.status_code != 200:
                failures.append(f"{item_id}: PUT answered {put.status_code}: {put.text[:200]}")
                continue
            codes = put.json()["codes"]
            delay = None
            while delay is None and time.monotonic() - answered < GIVE_UP_S:
                asked = time.monotonic()
                seen = client.get(f"{reader}/items/{item_id}")
                if seen.status_code == 200 and seen.json()["codes"] == codes:
                    delay = asked - answered
                else:
                    time.sleep(0.005)
            if delay is None:
                failures.append(f"{item_id}: not served by the other replica within {GIVE_UP_S:g} s")
                continue
            delays.append(delay)
            query = {"history": [item_id], "k": 1, "exclude_seen": False, "filter": {"tag_path": category}}
            hit = client.post(f"{reader}/recommend", json=query)
            got = [item["item_id"] for item in hit.json().get("items", [])] if hit.status_code == 200 else []
            if got != [item_id]:
                failures.append(f"{item_id}: the other replica recommended {got} ({hit.status_code})")
            elif delay > VISIBLE_WITHIN_S:
                failures.append(f"{item_id}: served by the other replica after {delay:.3f} s")
    return {
        "total": count,
        "ok": count - len(failures),
        "by_text": sum(1 for n in range(count) if by_text and n % 2 == 0),
        "worst_delay_s": round(max(delays), 3) if delays else None,
        "median_delay_s": round(float(np.median(delays)), 3) if delays else None,
        "failures": failures[:10],
    }


def check_events(
    writer: str, reader: str, api_key: str, count: int, item_ids: list[str], tag: str, seed: int
) -> dict[str, Any]:
    """``count`` users, each with 3-5 events posted on ``writer``: ``reader`` must read that history
    for the user (``history_used`` of a recommendation by ``user_id``) within ``VISIBLE_WITHIN_S``,
    and an event posted on ``reader`` must make it one longer (both append to the same history)."""
    rng = np.random.default_rng(seed)
    key = {"X-API-Key": api_key}
    delays: list[float] = []
    failures: list[str] = []
    with httpx.Client(timeout=30) as client:
        for n in range(count):
            user = f"scale-out-{tag}-u{n}"
            events = [str(i) for i in rng.choice(item_ids, size=3 + n % 3, replace=False)]
            posted = client.post(f"{writer}/events", json={"user_id": user, "item_ids": events}, headers=key)
            answered = time.monotonic()
            if posted.status_code != 200 or posted.json()["history_length"] != len(events):
                failures.append(f"{user}: POST /events answered {posted.status_code}: {posted.text[:200]}")
                continue
            delay, used = None, None
            while delay is None and time.monotonic() - answered < GIVE_UP_S:
                asked = time.monotonic()
                read = client.post(f"{reader}/recommend", json={"user_id": user, "k": 1})
                used = read.json().get("history_used") if read.status_code == 200 else read.status_code
                if used == len(events):
                    delay = asked - answered
                else:
                    time.sleep(0.005)
            if delay is None:
                failures.append(f"{user}: the other replica read {used} of {len(events)} events")
                continue
            delays.append(delay)
            extra = str(rng.choice(sorted(set(item_ids) - set(events))))
            more = client.post(f"{reader}/events", json={"user_id": user, "item_id": extra}, headers=key)
            length = more.json().get("history_length") if more.status_code == 200 else more.status_code
            if length != len(events) + 1:
                failures.append(f"{user}: an event on the other replica made the history {length} long")
            elif delay > VISIBLE_WITHIN_S:
                failures.append(f"{user}: read by the other replica after {delay:.3f} s")
    return {
        "total": count,
        "ok": count - len(failures),
        "worst_delay_s": round(max(delays), 3) if delays else None,
        "failures": failures[:10],
    }


# ------------------------------------------------------------------------------------ output
def table(report: dict[str, Any]) -> str:
    rate, overload = report["settings"]["rate"], report["settings"]["overload_rps"]
    header = [
        "scenario",
        f"@{rate:g}/s p50",
        "p99 ms",
        "shed",
        "err",
        f"@{overload:g}/s answered/s",
        "shed",
        "err",
        "CPU ms/answer",
        "(Redis)",
        "invalid",
    ]
    rows = []
    for name, scenario in report["scenarios"].items():
        rated, over = scenario["rated"], scenario["overload"]
        rows.append(
            [
                f"{name}: {scenario['what']}",
                str(rated["p50_ms"]),
                str(rated["p99_ms"]),
                str(rated["shed"]),
                str(rated["errors"]),
                str(over["throughput_rps"]),
                str(over["shed"]),
                str(over["errors"]),
                str(over["service_cpu_ms_per_answer"]),
                str(over["redis_cpu_ms_per_answer"]),
                str(rated["invalid"] + over["invalid"]),
            ]
        )
    widths = [max(len(cell) for cell in column) for column in zip(header, *rows, strict=True)]
    lines = [
        "  ".join([row[0].ljust(widths[0])] + [c.rjust(w) for c, w in zip(row[1:], widths[1:], strict=True)])
        for row in [header, *rows]
    ]
    lines.insert(1, "  ".join("-" * width for width in widths))
    for name in PAIRS:
        versus = report[f"{name}_vs_one"]
        lines.append(
            f"{name} vs one: throughput x{versus['throughput_ratio']}, rated p99 x{versus['p99_ratio']}, "
            f"replicas' CPU per answer x{versus['service_cpu_per_answer_ratio']}"
        )
    for name, checks in report["consistency"].items():
        items, events = checks["items"], checks["events"]
        lines.append(
            f"consistency {name} ({'->'.join(PAIRS[name])}): items {items['ok']}/{items['total']} "
            f"within {VISIBLE_WITHIN_S:g} s (worst {items['worst_delay_s']} s), events "
            f"{events['ok']}/{events['total']} (worst {events['worst_delay_s']} s)"
        )
    for name, replica in report["replicas"].items():
        if any(replica[counter] for counter in STORE_COUNTERS.values()):
            trouble = ", ".join(f"{counter} {replica[counter]:g}" for counter in STORE_COUNTERS.values())
            lines.append(f"replica {name} had trouble with its store: {trouble}")
    if not report["scenarios"]["one"]["overload"]["saturated"]:
        lines.append(
            "note: one replica shed nothing at the overload rate, so the throughputs are the rate the "
            "harness sent, not capacities (raise --overload-factor, up to what the one-core harness "
            "sends); the replicas' CPU per answer compares the scenarios' costs all the same"
        )
    return "\n".join(lines)


def plot(report: dict[str, Any], path: Path) -> None:
    """Per scenario: p50 / p99 at the rated load (each round's p99 as a dot), throughput at the
    overload, and the CPU the replicas and Redis spent per valid answer there."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    settings = report["settings"]
    names = list(report["scenarios"])
    scenarios = [report["scenarios"][name] for name in names]
    x = np.arange(len(names))
    figure, (latency, throughput, cpu) = plt.subplots(1, 3, figsize=(14, 4.4))
    rated = [s["rated"] for s in scenarios]
    latency.bar(x - 0.2, [r["p50_ms"] or 0 for r in rated], 0.4, label="p50", color="tab:green")
    latency.bar(x + 0.2, [r["p99_ms"] or 0 for r in rated], 0.4, label="p99", color="tab:orange")
    for n, steps in enumerate(rated):
        rounds = [p99 for p99 in steps["p99_ms_by_round"] if p99 is not None]
        latency.plot([n + 0.2] * len(rounds), rounds, "k.", markersize=4)
    latency.set_ylabel("latency from scheduled send (ms)")
    latency.set_title(f"recommendations at {settings['rate']:g} req/s\n(dots: each round's p99)", fontsize=9)
    latency.legend(fontsize=8)
    over = [s["overload"] for s in scenarios]
    throughput.bar(x, [o["throughput_rps"] or 0 for o in over], color="tab:blue")
    throughput.axhline(settings["overload_rps"], color="gray", linestyle="--", label="offered")
    throughput.set_ylabel("valid answers per second")
    throughput.set_title(f"throughput at {settings['overload_rps']:g} req/s offered", fontsize=9)
    throughput.legend(fontsize=8)
    service = [o["service_cpu_ms_per_answer"] or 0 for o in over]
    cpu.bar(x, service, color="tab:purple", label="replicas")
    cpu.bar(
        x, [o["redis_cpu_ms_per_answer"] or 0 for o in over], bottom=service, color="tab:red", label="Redis"
    )
    cpu.set_ylabel("CPU ms per valid answer")
    cpu.set_title(f"CPU per answer at {settings['overload_rps']:g} req/s offered", fontsize=9)
    cpu.legend(fontsize=8)
    for axis in (latency, throughput, cpu):
        labels = [f"{name}\n{report['scenarios'][name]['what'].replace(', ', chr(10))}" for name in names]
        axis.set_xticks(x, labels, fontsize=8)
        axis.grid(True, axis="y", alpha=0.3)
    figure.suptitle(
        f"sidrec scale-out on one machine ({report['machine']['cpus']} CPUs, "
        f"every replica on CPUs {report['machine']['service_cpus']})",
        fontsize=10,
    )
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=110)
    plt.close(figure)


# -------------------------------------------------------------------------------------- main
def wait_store_ok(url: str, timeout_s: float = 60.0) -> None:
    """Until ``/readyz`` says the store is ``ok`` (a cluster client's first connections may time out
    on a loaded machine; it reconnects by itself)."""
    deadline = time.monotonic() + timeout_s
    while httpx.get(f"{url}/readyz", timeout=5).json().get("store") != "ok":
        if time.monotonic() > deadline:
            raise RuntimeError(f"{url}: the store was not ok within {timeout_s:g} s")
        time.sleep(0.2)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.scale_out",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--bundle", type=Path, required=True, help="bundle directory every replica serves")
    parser.add_argument(
        "--data",
        type=Path,
        default=None,
        help="prepared dataset of the bundle (python -m training prepare): the load's histories are "
        "its test users' (default: random histories over the catalogue)",
    )
    parser.add_argument(
        "--rate",
        type=float,
        default=50.0,
        help="the rated load, req/s, of every scenario (default: %(default)s)",
    )
    parser.add_argument(
        "--overload-factor",
        type=float,
        default=6.0,
        help="the throughput step offers this × --rate (default: %(default)s): enough to saturate the "
        "replicas where the harness can, and within what the one-core harness sends on time",
    )
    parser.add_argument(
        "--rounds", type=int, default=4, help="rounds over the scenarios (default: %(default)s)"
    )
    parser.add_argument(
        "--step-seconds", type=float, default=5.0, help="length of every step (default: %(default)s)"
    )
    parser.add_argument(
        "--beam",
        type=int,
        default=None,
        help="beam width of every request (default: the widest the bundle allows, its max_beam): "
        "the most work per request for the replicas, against a harness on one core",
    )
    parser.add_argument(
        "--timeout-s",
        type=float,
        default=2.0,
        help="a request unanswered this long after its scheduled time is a failure (default: "
        "%(default)s, the service's own deadline)",
    )
    parser.add_argument(
        "--items", type=int, default=20, help="items registered per pair by the checks (default: %(default)s)"
    )
    parser.add_argument(
        "--users", type=int, default=20, help="users whose events the checks follow (default: %(default)s)"
    )
    parser.add_argument(
        "--service-cpus",
        type=cpu_list,
        default=None,
        help="CPUs every replica is pinned to, e.g. 0; the harness gets the others (default: the "
        "first half; benchmarks/local_service.py says why)",
    )
    parser.add_argument("--seed", type=int, default=0, help="random seed (default: %(default)s)")
    parser.add_argument(
        "--out",
        type=Path,
        default=Path("benchmarks/results/scale-out.json"),
        help="JSON report; the PNG goes beside it (default: %(default)s)",
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.rounds < 1 or args.step_seconds <= 0 or args.rate <= 0 or args.overload_factor < 1:
        parser.error("--rounds, --step-seconds and --rate must be positive and --overload-factor >= 1")
    command = shlex.join(
        ["python", "-m", "benchmarks.scale_out", *(argv if argv is not None else sys.argv[1:])]
    )
    bundle = args.bundle.resolve()
    manifest = json.loads((bundle / "manifest.json").read_text(encoding="utf-8"))
    beam = args.beam or int(manifest["decoding"]["max_beam"])
    api_key = secrets.token_hex(16)
    workdir = Path(tempfile.mkdtemp(prefix="sidrec-scale-out-"))
    service_cpus, harness_cpus = split_cpus(args.service_cpus)
    own_cpus = os.sched_getaffinity(0)
    started = time.monotonic()
    load_at_start = os.getloadavg()[0]
    processes: list[subprocess.Popen[bytes]] = []
    cluster = LoopbackCluster(workdir / "cluster", appendfsync="everysec")
    steps: dict[tuple[str, str], list[Step]] = {}
    keep_logs = False
    try:
        redis_port = free_port()
        processes.append(start_redis(redis_port, workdir / "redis"))
        cluster.start()
        log(f"redis-server on port {redis_port}, Redis Cluster on ports {cluster.ports}")
        stores = {
            "A": f"redis://127.0.0.1:{redis_port}/0",
            "B": f"redis://127.0.0.1:{redis_port}/0",
            "C": cluster.url,
            "D": cluster.url,
        }
        urls: dict[str, str] = {}
        service_pids: dict[str, int] = {}
        for name, store in stores.items():
            pair = "redis" if store.startswith("redis://") else "cluster"  # one spool folder per fleet
            log_path = workdir / f"services-{pair}" / f"{name}.log"
            log_path.parent.mkdir(exist_ok=True)
            env = {"SIDREC_REDIS_URL": store}
            process, urls[name] = start_service(bundle, redis_port, api_key, service_cpus, env, log_path)
            processes.append(process)
            service_pids[name] = process.pid
            log(f"replica {name} on {urls[name]} ({store})")
        for url in urls.values():
            wait_store_ok(url)
        names = {url: name for name, url in urls.items()}
        redis_pids = {
            "redis": [processes[0].pid],
            "cluster": [node.pid for node in cluster.processes.values()],
        }
        pids = {  # scenario -> (its replicas, its Redis)
            scenario: (
                [service_pids[name] for name in replicas],
                redis_pids["cluster" if scenario == "cluster" else "redis"],
            )
            for scenario, (_, replicas) in SCENARIOS.items()
        }
        model = httpx.get(f"{urls['A']}/v1/model", headers={"X-API-Key": api_key}).json()
        log(f"replicas on CPUs {service_cpus} serve {model['bundle_id']}; the harness runs on {harness_cpus}")

        os.sched_setaffinity(0, harness_cpus)
        base = LoadTestConfig(
            api_key=api_key,
            beam=beam,
            data=args.data,
            n_users=50,
            max_history=10,
            p99_target_ms=1e9,  # judged here, per scenario
            max_concurrency=256,
            timeout_s=args.timeout_s,
            seed=args.seed,
        )
        configs = {
            scenario: dataclasses.replace(base, url=",".join(urls[name] for name in replicas))
            for scenario, (_, replicas) in SCENARIOS.items()
        }
        kinds = (("rated", args.rate), ("overload", args.rate * args.overload_factor))
        for config in configs.values():
            for _, rate in kinds:
                load(config, rate, args.step_seconds)  # warm-up, untimed
        for n in range(args.rounds):
            order = list(SCENARIOS) if n % 2 == 0 else list(SCENARIOS)[::-1]
            for scenario in order:
                for kind, rate in kinds:
                    step = measured_step(configs[scenario], rate, args.step_seconds, *pids[scenario])
                    steps.setdefault((scenario, kind), []).append(step)
                rated = summarise(steps[scenario, "rated"][-1].outcomes)
                over = pooled(steps[scenario, "overload"][-1:], args.step_seconds, names)
                log(
                    f"round {n + 1}/{args.rounds} {scenario}: rated p99 {rated['admitted_p99_ms']} ms, "
                    f"overload {over['throughput_rps']} answered/s"
                )
        os.sched_setaffinity(0, own_cpus)

        first_page = httpx.get(f"{urls['A']}/items", params={"limit": 500}).json()["items"]
        item_ids = [item["item_id"] for item in first_page]
        titles = [item["title"] for item in first_page if item["title"]] or ["new item"]
        by_text = "text_encoder" in manifest.get("tables", {})
        consistency = {}
        for scenario, (writer, reader) in PAIRS.items():
            tag = f"{scenario}-{secrets.token_hex(3)}"
            consistency[scenario] = {
                "items": check_items(
                    urls[writer],
                    urls[reader],
                    api_key,
                    args.items,
                    int(manifest["embedding_dim"]),
                    by_text,
                    titles,
                    tag,
                    args.seed,
                ),
                "events": check_events(
                    urls[writer], urls[reader], api_key, args.users, item_ids, tag, args.seed
                ),
            }
            log(f"consistency {scenario}: {consistency[scenario]}")
        trouble = {name: store_trouble(url) for name, url in urls.items()}
    except BaseException:
        log(f"failed: the logs of the replicas and of Redis are kept in {workdir}")
        keep_logs = True
        raise
    finally:
        os.sched_setaffinity(0, own_cpus)
        for process in reversed(processes):
            stop(process)
        cluster.stop()
        if not keep_logs:
            shutil.rmtree(workdir, ignore_errors=True)

    scenarios: dict[str, Any] = {}
    for scenario, (what, replicas) in SCENARIOS.items():
        scenarios[scenario] = {
            "what": what,
            "replicas": list(replicas),
            "redis": "redis-server" if scenario != "cluster" else "Redis Cluster, 3 masters",
            "rated": pooled(steps[scenario, "rated"], args.step_seconds, names),
            "overload": pooled(steps[scenario, "overload"], args.step_seconds, names),
        }
    for scenario in scenarios.values():  # the replicas refused some: the step measured their capacity
        scenario["overload"]["saturated"] = scenario["overload"]["shed"] > 0
    one = scenarios["one"]
    report: dict[str, Any] = {
        "command": command,
        "scenarios": scenarios,
        **{
            f"{name}_vs_one": {
                "throughput_ratio": ratio(
                    scenarios[name]["overload"]["throughput_rps"], one["overload"]["throughput_rps"]
                ),
                "p99_ratio": ratio(scenarios[name]["rated"]["p99_ms"], one["rated"]["p99_ms"]),
                "service_cpu_per_answer_ratio": ratio(
                    scenarios[name]["overload"]["service_cpu_ms_per_answer"],
                    one["overload"]["service_cpu_ms_per_answer"],
                ),
            }
            for name in PAIRS
        },
        "invalid_responses": sum(
            s[kind]["invalid"] for s in scenarios.values() for kind in ("rated", "overload")
        ),
        "consistency": consistency,
        "replicas": {name: {"store": stores[name], **trouble[name]} for name in urls},
        "model": model,
        "settings": {
            "rate": args.rate,
            "overload_rps": args.rate * args.overload_factor,
            "rounds": args.rounds,
            "step_seconds": args.step_seconds,
            "beam": beam,
            "timeout_s": args.timeout_s,
            "data": str(args.data) if args.data else None,
            "items": args.items,
            "users": args.users,
            "visible_within_s": VISIBLE_WITHIN_S,
            "redis_appendfsync": "everysec",
            "seed": args.seed,
        },
        "machine": {
            "platform": platform.platform(),
            "cpus": os.cpu_count(),
            "service_cpus": service_cpus,
            "load_generator_cpus": harness_cpus,
            "note": "every replica is pinned to the same service CPUs, so two replicas share the CPU "
            "time one had: two-vs-one measures the cost of being a fleet on one machine, not added "
            "capacity; Redis and the cluster's nodes are not pinned",
            "load_avg_1m_at_start": load_at_start,
            "load_avg_1m_at_end": os.getloadavg()[0],
            "python": platform.python_version(),
        },
        "wall_seconds": round(time.monotonic() - started, 1),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    png = args.out.with_suffix(".png")
    plot(report, png)
    print(table(report))
    print(f"wrote {args.out} and {png}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
