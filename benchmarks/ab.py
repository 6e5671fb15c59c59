"""A/B of service settings: the same interleaved load on two or more service processes at once.

  python -m benchmarks.ab --bundle runs/beauty/bundle-quick --rate 50 --beam 100 \\
      --variant queue256=SIDREC_QUEUE_SIZE=256 --variant queue6=SIDREC_QUEUE_SIZE=6 \\
      --out benchmarks/results/ab-queue.json

Why not two runs of ``benchmarks.reliability``: this VM's speed drifts 2-3x over tens of seconds,
so two runs one after the other compare the machine, not the settings. Here every variant is its
own ``python -m service`` on the same service CPU (an idle one costs nothing), all sharing one
``redis-server``, and the load visits them in turn: each round gives every variant a step at
``--rate`` and then one at ``--overload-factor`` × it, ``--step-seconds`` each, with the variants'
order reversed every other round, so a slow spell of the machine falls on all of them alike. The
p99s are pooled per variant over its rounds. Prints a table and writes the JSON with the command.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from benchmarks.local_service import cpu_list, free_port, split_cpus, start_redis, start_service, stop
from benchmarks.reliability import load, log, summarise
from deploy.loadtest import LoadTestConfig
from deploy.loadtest.report import Outcome


def variant(text: str) -> tuple[str, dict[str, str]]:
    """``NAME=KEY=VALUE[,KEY=VALUE...]`` (or just ``NAME``: the defaults) -> (name, environment)."""
    name, _, settings = text.partition("=")
    env: dict[str, str] = {}
    for part in filter(None, settings.split(",")):
        key, sep, value = part.partition("=")
        if not sep or not key.startswith("SIDREC_"):
            raise argparse.ArgumentTypeError(f"expected NAME=SIDREC_KEY=VALUE[,...], got {text!r}")
        env[key] = value
    if not name:
        raise argparse.ArgumentTypeError(f"a variant needs a name: {text!r}")
    return name, env


def _median(values: Iterable[float | None]) -> float | None:
    present = [value for value in values if value is not None]
    return round(statistics.median(present), 2) if present else None


def compare(rated: list[Outcome], overload: list[Outcome], rounds: list[dict[str, Any]]) -> dict[str, Any]:
    """One variant's pooled numbers, and its p99 per round. The median of the rounds' p99s is reported
    beside the pooled p99: one slow spell in one step holds all of a pooled p99's slowest requests."""
    at_rate, over = summarise(rated), summarise(overload)
    ratio = (over["admitted_p99_ms"] or 0) / (at_rate["admitted_p99_ms"] or 1)
    return {
        "rated_p99_ms": at_rate["admitted_p99_ms"],
        "rated_p99_ms_median_of_rounds": _median(round_["rated_p99_ms"] for round_ in rounds),
        "overload_p99_ms_median_of_rounds": _median(round_["overload_p99_ms"] for round_ in rounds),
        "rated_refused_or_failed": at_rate["recommend_failed"],
        "overload_p50_ms": over["admitted_p50_ms"],
        "overload_admitted_p99_ms": over["admitted_p99_ms"],
        "overload_answered": over["recommend_ok"],
        "overload_shed": over["shed"],
        "overload_p99_ratio": round(ratio, 3),
        "rounds": rounds,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.ab",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--bundle", type=Path, required=True, help="bundle directory every variant serves")
    parser.add_argument(
        "--variant",
        type=variant,
        action="append",
        required=True,
        help="NAME=SIDREC_KEY=VALUE[,SIDREC_KEY=VALUE...]: one service's settings over --env (repeat)",
    )
    parser.add_argument(
        "--env",
        type=lambda text: variant("all=" + text)[1],
        default={},
        help="SIDREC_KEY=VALUE[,...] for every variant (default: the service's own defaults)",
    )
    parser.add_argument("--rate", type=float, required=True, help="the rated load, req/s")
    parser.add_argument("--overload-factor", type=float, default=2.0)
    parser.add_argument(
        "--rounds", type=int, default=8, help="rounds over all variants (default: %(default)s)"
    )
    parser.add_argument("--step-seconds", type=float, default=5.0)
    parser.add_argument(
        "--beam", type=int, default=None, help="beam width of every request (default: the bundle's)"
    )
    parser.add_argument("--service-cpus", type=cpu_list, default=None, help="as in benchmarks.reliability")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/ab.json"))
    args = parser.parse_args(argv)
    names = [name for name, _ in args.variant]
    if len(set(names)) != len(names):
        parser.error(f"variant names must differ: {names}")
    command = shlex.join(["python", "-m", "benchmarks.ab", *(argv if argv is not None else sys.argv[1:])])

    api_key = secrets.token_hex(16)
    workdir = Path(tempfile.mkdtemp(prefix="sidrec-ab-"))
    redis_port = free_port()
    redis_server = start_redis(redis_port, workdir)
    service_cpus, harness_cpus = split_cpus(args.service_cpus)
    own_cpus = os.sched_getaffinity(0)
    services: dict[str, tuple[subprocess.Popen[bytes], LoadTestConfig]] = {}
    outcomes: dict[tuple[str, str], list[Outcome]] = {}
    rounds: dict[str, list[dict[str, Any]]] = {name: [] for name in names}
    try:
        for name, env in args.variant:
            process, url = start_service(
                args.bundle.resolve(),
                redis_port,
                api_key,
                service_cpus,
                {**args.env, **env},
                workdir / f"{name}.log",
            )
            base = LoadTestConfig(
                url=url, api_key=api_key, beam=args.beam, n_users=50, max_history=10, p99_target_ms=1e9
            )
            services[name] = (process, base)
        os.sched_setaffinity(0, harness_cpus)
        for _, base in services.values():
            load(base, args.rate, args.step_seconds)  # warm-up, untimed
        for n in range(args.rounds):
            order = names if n % 2 == 0 else names[::-1]
            for name in order:
                base = services[name][1]
                steps = {}
                for kind, rate in (("rated", args.rate), ("overload", args.rate * args.overload_factor)):
                    step = load(base, rate, args.step_seconds)
                    outcomes.setdefault((name, kind), []).extend(step)
                    steps[kind] = summarise(step)
                rounds[name].append(
                    {
                        "rated_p99_ms": steps["rated"]["admitted_p99_ms"],
                        "overload_p99_ms": steps["overload"]["admitted_p99_ms"],
                        "overload_shed": steps["overload"]["shed"],
                    }
                )
                log(f"round {n + 1}/{args.rounds} {name}: {rounds[name][-1]}")
    finally:
        os.sched_setaffinity(0, own_cpus)
        for process, _ in services.values():
            stop(process)
        stop(redis_server)
        shutil.rmtree(workdir, ignore_errors=True)

    results = {
        name: compare(outcomes[name, "rated"], outcomes[name, "overload"], rounds[name]) for name in names
    }
    report = {
        "command": command,
        "rate": args.rate,
        "overload_rps": args.rate * args.overload_factor,
        "variants": {name: {"env": {**args.env, **env}, **results[name]} for name, env in args.variant},
        "settings": {
            "rounds": args.rounds,
            "step_seconds": args.step_seconds,
            "beam": args.beam,
            "service_cpus": service_cpus,
            "load_generator_cpus": harness_cpus,
        },
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    columns = [
        ("rated p99 ms", "rated_p99_ms"),
        ("refused at rated", "rated_refused_or_failed"),
        ("overload p99 ms", "overload_admitted_p99_ms"),
        ("median of rounds", "rated_p99_ms_median_of_rounds"),
        ("(overload)", "overload_p99_ms_median_of_rounds"),
        ("answered", "overload_answered"),
        ("shed", "overload_shed"),
        ("ratio", "overload_p99_ratio"),
    ]
    width = max(len(name) for name in names)
    print(" ".join(["variant".ljust(width), *(title.rjust(16) for title, _ in columns)]))
    for name in names:
        print(" ".join([name.ljust(width), *(str(results[name][key]).rjust(16) for _, key in columns)]))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
