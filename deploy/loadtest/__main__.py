"""``python -m deploy.loadtest``: open-loop load test of a running sidrec service.

Example (a service on this machine, the synthetic bundle, under two minutes):

    python -m deploy.loadtest --url http://127.0.0.1:8000 --rates 5,10,20,40 --step-seconds 10 \\
        --api-key "$SIDREC_API_KEY" --report runs/loadtest/report.json

Several replicas without a load balancer: repeat --url (or join URLs with commas); requests go to
them in turn.

Prints a per-step table and the highest rate whose p99 stayed within the target with every response
valid; writes the JSON report and a latency-vs-rate PNG next to it. Only loopback targets are
accepted unless the host is passed with --allow-remote.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shlex
import sys
from pathlib import Path

from deploy.loadtest.config import REQUEST_KINDS, LoadTestConfig
from deploy.loadtest.errors import LoadTestError
from deploy.loadtest.runner import run_load_test


def _floats(text: str) -> tuple[float, ...]:
    try:
        return tuple(float(part) for part in text.split(",") if part.strip())
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") from exc


def _mix(text: str) -> dict[str, float]:
    """``user=4,history=3,filtered=2,event=1`` -> weights (normalised by the draw, not here)."""
    mix = {}
    for part in text.split(","):
        kind, sep, weight = part.partition("=")
        if not sep:
            raise argparse.ArgumentTypeError(
                f"expected KIND=WEIGHT pairs over {list(REQUEST_KINDS)}, got {part!r}"
            )
        try:
            mix[kind.strip()] = float(weight)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(f"{kind}: weight {weight!r} is not a number") from exc
    return mix


def build_parser() -> argparse.ArgumentParser:
    defaults = LoadTestConfig.__dataclass_fields__
    parser = argparse.ArgumentParser(
        prog="python -m deploy.loadtest",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--url",
        action="append",
        default=None,
        help=f"service base URL (default: {defaults['url'].default}); repeat it, or join URLs with "
        "commas, to spread the requests over several replicas in turn",
    )
    parser.add_argument(
        "--rates",
        type=_floats,
        default=defaults["rates"].default,
        help="offered rates in req/s, one step each, e.g. 5,10,20,40 (default: 5,10,20,40)",
    )
    parser.add_argument(
        "--step-seconds",
        type=float,
        default=defaults["step_seconds"].default,
        help="duration of each step (default: %(default)s)",
    )
    parser.add_argument(
        "--max-concurrency",
        type=int,
        default=defaults["max_concurrency"].default,
        help="requests in flight at once; later arrivals wait and the wait counts (default: %(default)s)",
    )
    parser.add_argument(
        "--mix",
        type=_mix,
        default=None,
        help="request mix weights, e.g. user=4,history=3,filtered=2,event=1 (the default)",
    )
    parser.add_argument(
        "--arrivals",
        choices=["poisson", "uniform"],
        default=defaults["arrivals"].default,
        help="gaps between scheduled sends (default: %(default)s)",
    )
    parser.add_argument(
        "--p99-target-ms",
        type=float,
        default=defaults["p99_target_ms"].default,
        help="latency target for the capacity verdict (default: %(default)s)",
    )
    parser.add_argument(
        "--k", type=int, default=defaults["k"].default, help="items per recommendation (default: %(default)s)"
    )
    parser.add_argument("--beam", type=int, default=None, help="beam width (default: the bundle's)")
    parser.add_argument(
        "--timeout-s",
        type=float,
        default=defaults["timeout_s"].default,
        help="a request unanswered this long after its scheduled time is a failure (default: %(default)s)",
    )
    parser.add_argument(
        "--users",
        type=int,
        default=defaults["n_users"].default,
        help="users whose histories drive the requests (default: %(default)s)",
    )
    parser.add_argument(
        "--max-history",
        type=int,
        default=defaults["max_history"].default,
        help="most recent items kept per history (default: %(default)s)",
    )
    parser.add_argument(
        "--data",
        type=Path,
        default=None,
        help="prepared dataset dir (python -m training prepare): histories of its test users; "
        "default: random histories over GET /items",
    )
    parser.add_argument(
        "--api-key",
        default=os.environ.get("SIDREC_API_KEY"),
        help="API key for POST /events (default: $SIDREC_API_KEY)",
    )
    parser.add_argument(
        "--allow-remote",
        action="append",
        default=[],
        metavar="HOST",
        help="allow this non-loopback host as a target (repeatable)",
    )
    parser.add_argument(
        "--max-requests",
        type=int,
        default=defaults["max_requests"].default,
        help="refuse plans with more requests than this (default: %(default)s)",
    )
    parser.add_argument(
        "--max-duration-s",
        type=float,
        default=defaults["max_duration_s"].default,
        help="refuse plans longer than this (default: %(default)s)",
    )
    parser.add_argument(
        "--seed", type=int, default=defaults["seed"].default, help="random seed (default: %(default)s)"
    )
    parser.add_argument(
        "--report",
        type=Path,
        default=Path("runs/loadtest/report.json"),
        help="JSON report path; the PNG goes beside it (default: %(default)s)",
    )
    return parser


def config_from_args(args: argparse.Namespace) -> LoadTestConfig:
    """The validated config of a command line (raises ConfigError naming the bad option)."""
    extra = {"mix": args.mix} if args.mix is not None else {}
    return LoadTestConfig(
        url=",".join(args.url or [LoadTestConfig.url]),
        rates=args.rates,
        step_seconds=args.step_seconds,
        max_concurrency=args.max_concurrency,
        arrivals=args.arrivals,
        p99_target_ms=args.p99_target_ms,
        k=args.k,
        beam=args.beam,
        timeout_s=args.timeout_s,
        n_users=args.users,
        max_history=args.max_history,
        data=args.data,
        api_key=args.api_key,
        allow_remote=tuple(args.allow_remote),
        max_requests=args.max_requests,
        max_duration_s=args.max_duration_s,
        seed=args.seed,
        **extra,
    )


def _redact(argv: list[str]) -> list[str]:
    """The command line as written into the report, with the API key's value replaced."""
    out = []
    for i, arg in enumerate(argv):
        if arg.startswith("--api-key="):
            arg = "--api-key=***"
        elif i > 0 and argv[i - 1] == "--api-key":
            arg = "***"
        out.append(arg)
    return out


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = build_parser().parse_args(argv)
    command = shlex.join(["python", "-m", "deploy.loadtest", *_redact(argv)])
    try:
        config = config_from_args(args)
        report = asyncio.run(run_load_test(config, command))
    except LoadTestError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(report.table())
    report.write_json(args.report)
    plot = args.report.with_suffix(".png")
    report.plot(plot)
    print(f"report: {args.report}\nplot:   {plot}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
