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
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import redis
from fastapi.testclient import TestClient

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


def start_redis_server(port: int, workdir: Path, persistent: bool = False) -> subprocess.Popen[bytes]:
    """A throw-away redis-server on ``port``; waits until it answers.

    ``persistent``: an append-only file in ``workdir`` fsynced on every write, as compose and k8s
    run Redis (there with ``everysec``), so a restart on the same ``workdir`` keeps the data.
    """
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
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    client = redis.Redis(port=port, socket_connect_timeout=0.2)
    for _ in range(100):
        try:
            client.ping()
            return process
        except redis.ConnectionError:
            time.sleep(0.05)
    process.kill()
    raise RuntimeError(f"redis-server did not start on port {port}")


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
    if shutil.which("redis-server") is None:
        if os.environ.get("CI"):
            pytest.fail("no Redis at 127.0.0.1:6379 and no redis-server binary: CI needs a real Redis")
        pytest.skip("no Redis at 127.0.0.1:6379 and no redis-server binary to start one")
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
