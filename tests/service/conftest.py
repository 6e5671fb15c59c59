"""Service fixtures: the tiny real bundle, a real Redis, and apps with their lifespan running.

Redis: the server at 127.0.0.1:6379 when one answers (database 13, a unique key prefix, every key
removed afterwards); otherwise a ``redis-server`` started on a free port for the session. Where
neither is possible the Redis tests skip, except in CI (``CI`` set), where that is a failure.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest
import redis
from fastapi.testclient import TestClient
from redis.backoff import NoBackoff
from redis.retry import Retry

from service.app import create_app
from service.settings import Settings
from tests.training.export.tiny_run import TinyRun, build_tiny_run

API_KEY = "test-key-0123456789abcdef"


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory: pytest.TempPathFactory) -> TinyRun:
    return build_tiny_run(tmp_path_factory.getbasetemp() / "tiny-run")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


#: the file in a server's ``workdir`` that its log goes to
LOG_NAME = "redis.log"


def require_binaries(*names: str, reason: str) -> None:
    """Skips the calling test or fixture where one of ``names`` is not on ``PATH``; in CI (``CI`` set)
    that is a failure instead, so a CI machine never passes by skipping the real-server tests."""
    missing = [name for name in names if shutil.which(name) is None]
    if not missing:
        return
    message = f"{reason}: no {' / '.join(missing)} on PATH"
    if os.environ.get("CI"):
        pytest.fail(f"{message} (CI needs it; .ci/run installs it)")
    pytest.skip(message)


def log_tail(workdir: Path, lines: int = 20) -> str:
    """The last ``lines`` of the log of the redis-server started on ``workdir``, for error messages."""
    log = workdir / LOG_NAME
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
    options: Sequence[str] = (),
    timeout_s: float = 60.0,
) -> subprocess.Popen[bytes]:
    """A throw-away redis-server on ``port``, logging to ``workdir``; waits until it answers.

    ``persistent``: an append-only file in ``workdir`` fsynced on every write, as compose and k8s
    run Redis (there with ``everysec``), so a restart on the same ``workdir`` keeps the data.
    ``options``: more ``redis-server`` arguments (a cluster node's). ``timeout_s`` is generous: the
    server may share the CPUs with a training run. A server that exits or does not answer in time is
    killed, and the error carries its log's tail.
    """
    workdir.mkdir(parents=True, exist_ok=True)
    with (workdir / LOG_NAME).open("ab") as log:  # its stderr too: what it says before it opens the log
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
                "always",
                "--dir",
                str(workdir),
                "--logfile",
                str(workdir / LOG_NAME),
                *options,
            ],
            stdout=subprocess.DEVNULL,
            stderr=log,
        )
    client = probe_client(port)
    deadline = time.monotonic() + timeout_s
    try:
        while process.poll() is None and time.monotonic() < deadline:
            try:
                client.ping()
                return process
            except (redis.ConnectionError, redis.TimeoutError):  # or loading its append-only file
                time.sleep(0.05)
    finally:
        client.close()
    if process.poll() is None:
        problem = f"did not answer within {timeout_s:g} s"
        process.kill()
    else:
        problem = f"exited with code {process.returncode}"
    process.wait()
    raise RuntimeError(f"redis-server on port {port} {problem}; its log ends:\n{log_tail(workdir)}")


@dataclass
class RedisTarget:
    url: str
    prefix: str
    client: redis.Redis


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    try:
        redis.Redis(host="127.0.0.1", port=6379, socket_connect_timeout=0.5).ping()
        yield "redis://127.0.0.1:6379/13"
        return
    except redis.ConnectionError:
        pass
    require_binaries("redis-server", reason="no Redis at 127.0.0.1:6379 and none to start")
    port = free_port()
    process = start_redis_server(port, tmp_path_factory.mktemp("redis"))
    yield f"redis://127.0.0.1:{port}/13"
    process.terminate()
    process.wait(10)


@pytest.fixture
def redis_target(redis_url: str) -> Iterator[RedisTarget]:
    prefix = f"sidrec-test-{uuid.uuid4().hex[:8]}"
    client = redis.Redis.from_url(redis_url)
    yield RedisTarget(redis_url, prefix, client)
    keys = list(client.scan_iter(f"{prefix}:*"))
    if keys:
        client.delete(*keys)
    client.close()


def settings_for(bundle: Path, **overrides: object) -> Settings:
    values: dict[str, object] = {
        "bundle_path": bundle,
        "api_key": API_KEY,
        "providers": "CPUExecutionProvider",
        **overrides,
    }
    return Settings(**values)  # type: ignore[arg-type]


@pytest.fixture
def client(tiny_run: TinyRun, redis_target: RedisTarget) -> Iterator[TestClient]:
    """The real app on the tiny bundle with the real Redis; lifespan runs inside ``with``."""
    settings = settings_for(tiny_run.bundle, redis_url=redis_target.url, redis_key_prefix=redis_target.prefix)
    with TestClient(create_app(settings)) as test_client:
        yield test_client
