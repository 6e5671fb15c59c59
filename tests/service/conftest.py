"""Service fixtures: the tiny real bundle, a real Redis, and apps with their lifespan running.

Redis: the server at 127.0.0.1:6379 when one answers (database 13, a unique key prefix, every key
removed afterwards); otherwise a ``redis-server`` started on a free port for the session. Where
neither is possible the Redis tests skip, except in CI (``CI`` set), where that is a failure.
"""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import redis
from fastapi.testclient import TestClient

from benchmarks.local_service import free_port, start_redis_server
from service.app import create_app
from service.settings import Settings
from tests.training.export.tiny_run import TinyRun, build_tiny_run

API_KEY = "test-key-0123456789abcdef"


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory: pytest.TempPathFactory) -> TinyRun:
    return build_tiny_run(tmp_path_factory.getbasetemp() / "tiny-run")


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
