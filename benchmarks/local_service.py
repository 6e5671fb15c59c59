"""A real ``python -m service`` process and its own ``redis-server`` on loopback, for benchmarks.

Shared by ``benchmarks.reliability`` (one service through every phase), ``benchmarks.ab`` (two or
more differently configured services side by side) and ``benchmarks.scale_out`` (replicas sharing
one Redis or a Redis Cluster, ``benchmarks.redis_cluster``); the tests start their Redis servers
with ``start_redis_server`` too. The service is pinned to its own CPUs and the load generator to the
others: in production clients sit on other machines, and a client that shares the service's cores
starves as the service saturates, so its own lateness would be timed as the service's latency.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import httpx
import numpy as np
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

__all__ = [
    "REPO",
    "cpu_list",
    "cpu_speed_ms",
    "free_port",
    "probe_client",
    "redis_log_tail",
    "split_cpus",
    "start_redis",
    "start_redis_server",
    "start_service",
    "stop",
]

REPO = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def cpu_list(text: str) -> list[int]:
    """``"0"`` or ``"0,1"`` -> CPU numbers that this machine lets the process use; ``"all"`` -> all."""
    if text == "all":
        return sorted(os.sched_getaffinity(0))
    try:
        cpus = sorted({int(part) for part in text.split(",")})
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected CPU numbers like 0 or 0,1, got {text!r}") from None
    allowed = os.sched_getaffinity(0)
    if not cpus or not set(cpus) <= allowed:
        raise argparse.ArgumentTypeError(f"CPUs {text!r} are not among the usable ones {sorted(allowed)}")
    return cpus


#: the file in a server's ``workdir`` that its log goes to
REDIS_LOG_NAME = "redis.log"


def redis_log_tail(workdir: Path, lines: int = 20) -> str:
    """The last ``lines`` of the log of the redis-server started on ``workdir``, for error messages."""
    log = workdir / REDIS_LOG_NAME
    text = log.read_text(errors="replace").splitlines()[-lines:] if log.exists() else ["(no log)"]
    return "\n".join(f"  {line}" for line in text)


def probe_client(port: int) -> redis.Redis:
    """A client for polling a local server until it is ready: one try per call and 1 s timeouts, so a
    call to a port that accepts but never answers returns soon; the polling loop is the retry."""
    return redis.Redis(port=port, socket_connect_timeout=1.0, socket_timeout=1.0, retry=Retry(NoBackoff(), 0))


def start_redis_server(
    port: int,
    workdir: Path,
    persistent: bool = False,
    *,
    appendfsync: str = "always",
    options: Sequence[str] = (),
    timeout_s: float = 60.0,
) -> subprocess.Popen[bytes]:
    """A throw-away redis-server on ``port``, logging to ``workdir``; waits until it answers.

    ``persistent``: an append-only file in ``workdir``, fsynced as ``appendfsync`` says (``always``:
    on every write; compose and k8s run Redis with ``everysec``), so a restart on the same
    ``workdir`` keeps the data. ``options``: more ``redis-server`` arguments (a cluster node's).
    ``timeout_s`` is generous: the server may share the CPUs with a training run. A server that exits
    or does not answer in time is killed, and the error carries its log's tail; so is one whose port
    turns out to be answered by another process's server (the port was free when chosen).
    """
    workdir.mkdir(parents=True, exist_ok=True)
    with (workdir / REDIS_LOG_NAME).open("ab") as log:  # its stderr too: what it says before it opens the log
        process = subprocess.Popen(
            [
                "redis-server",
                "--port",
                str(port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "yes" if persistent else "no",
                "--appendfsync",
                appendfsync,
                "--dir",
                str(workdir),
                "--logfile",
                str(workdir / REDIS_LOG_NAME),
                *options,
            ],
            stdout=subprocess.DEVNULL,
            stderr=log,
        )
    client = probe_client(port)
    deadline = time.monotonic() + timeout_s
    problem = f"did not answer within {timeout_s:g} s"
    try:
        while process.poll() is None and time.monotonic() < deadline:
            try:
                client.ping()
            except (redis.ConnectionError, redis.TimeoutError):  # or loading its append-only file
                time.sleep(0.05)
                continue
            if client.info("server")["process_id"] == process.pid:
                return process
            problem = "is taken by another redis-server"
            break
    finally:
        client.close()
    if process.poll() is None:
        process.kill()
    else:
        problem = f"exited with code {process.returncode}"
    process.wait()
    raise RuntimeError(f"redis-server on port {port} {problem}; its log ends:\n{redis_log_tail(workdir)}")


def start_redis(port: int, workdir: Path) -> subprocess.Popen[bytes]:
    """redis-server with an append-only file in ``workdir`` fsynced every second (as compose and k8s
    run it)."""
    return start_redis_server(port, workdir, persistent=True, appendfsync="everysec")


def stop(process: subprocess.Popen[bytes]) -> None:
    process.terminate()
    try:
        process.wait(15)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def cpu_speed_ms(cpu: int) -> float:
    """Median time (ms) of a fixed pure-Python loop on ``cpu``, run from this process for a moment.

    Read on the service's CPU just before each overload-phase step (the service is idle then): the
    VM's speed drifts by 2-3x over tens of seconds, and a step's p99 cannot be read without it."""
    mine = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {cpu})
    try:
        times = []
        for _ in range(7):
            started = time.perf_counter()
            total = 0
            for i in range(100_000):
                total += i * i
            times.append(time.perf_counter() - started)
    finally:
        os.sched_setaffinity(0, mine)
    return round(float(np.median(times)) * 1000, 2)


def split_cpus(service_cpus: list[int] | None) -> tuple[list[int], list[int]]:
    """(service CPUs, load generator CPUs): the given ones (default: the first half of the usable
    CPUs) and the rest (all of them, if nothing is left)."""
    usable = sorted(os.sched_getaffinity(0))
    service = service_cpus or usable[: max(1, len(usable) // 2)]
    return service, [cpu for cpu in usable if cpu not in service] or usable


def start_service(
    bundle: Path, redis_port: int, api_key: str, cpus: list[int], env: dict[str, str], log_path: Path
) -> tuple[subprocess.Popen[bytes], str]:
    """``python -m service`` on ``bundle`` (reload root: its parent) and the Redis on ``redis_port``,
    pinned to ``cpus``, with ``env`` over the defaults; returns the process and its URL once ready.
    Its event spool is ``spool/`` beside ``log_path``: a service started again there takes over
    what the last one spooled."""
    port = free_port()
    environment = {
        **os.environ,
        "SIDREC_BUNDLE_PATH": str(bundle),
        "SIDREC_BUNDLE_ROOT": str(bundle.parent),
        "SIDREC_REDIS_URL": f"redis://127.0.0.1:{redis_port}/0",
        "SIDREC_API_KEY": api_key,
        "SIDREC_PORT": str(port),
        "SIDREC_HOST": "127.0.0.1",
        "SIDREC_LOG_LEVEL": "warning",
        "OMP_NUM_THREADS": "1",
        "SIDREC_SPOOL_DIR": str(log_path.parent / "spool"),
        **env,
    }
    with log_path.open("w") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "service"],
            cwd=REPO,
            env=environment,
            stdout=log,
            stderr=subprocess.STDOUT,
            preexec_fn=lambda: os.sched_setaffinity(0, cpus),  # before exec: sized threads see it
        )
    url = f"http://127.0.0.1:{port}"
    for _ in range(240):
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(f"{url}/readyz", timeout=1).status_code == 200:
                return process, url
        if process.poll() is not None:
            raise RuntimeError(f"the service exited during start-up:\n{log_path.read_text()}")
        time.sleep(0.5)
    stop(process)
    raise RuntimeError(f"the service was not ready after 120 s:\n{log_path.read_text()}")
