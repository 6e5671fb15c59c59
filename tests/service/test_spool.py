"""Durable events: an event answered 2xx survives the service stopping or being killed while Redis is
down, and is in Redis, in order, once both run again; without a spool such events are refused."""

from __future__ import annotations

import asyncio
import json
import os
import signal
from pathlib import Path

import httpx
import pytest
import redis
from fastapi.testclient import TestClient

from benchmarks.local_service import start_service, stop
from service.app import create_app
from service.errors import StoreUnavailable
from service.spool import EventSpool
from tests.service.conftest import API_KEY, free_port, settings_for, start_redis_server
from tests.training.export.tiny_run import TinyRun

KEY = {"X-API-Key": API_KEY}


def test_spool_keeps_order_across_processes_and_skips_a_torn_line(tmp_path: Path) -> None:
    async def first() -> None:
        spool = EventSpool(tmp_path, capacity=10)
        await asyncio.gather(*(spool.add("u", [f"i{n}"]) for n in range(4)))  # one group commit
        await spool.add("v", ["j0", "j1"])
        assert spool.size == 6 and [items for _, items in spool.pending][:2] == [["i0"], ["i1"]]
        # no close(): the process is gone; its file stays locked until the descriptor is closed
        os.close(spool._fd)  # type: ignore[arg-type]  # what the kernel does when a process dies

    asyncio.run(first())
    (old,) = tmp_path.glob("events-*.spool")
    with old.open("ab") as handle:
        handle.write(b'{"user_id": "u", "ite')  # killed mid-write: never acknowledged

    async def second() -> list[tuple[str, list[str]]]:
        spool = EventSpool(tmp_path, capacity=10)
        adopted = list(spool.pending)
        other = EventSpool(tmp_path, capacity=10)  # a replica starting beside it: the file is held
        assert not other.pending
        with pytest.raises(StoreUnavailable, match="SIDREC_EVENT_BUFFER_SIZE=10"):
            await spool.add("w", ["k"] * 5)  # 6 held + 5 > 10
        spool.written(len(adopted))  # all of it is in Redis now: the adopted file goes
        await spool.close()
        await other.close()
        return adopted

    adopted = asyncio.run(second())
    assert adopted == [("u", ["i0"]), ("u", ["i1"]), ("u", ["i2"]), ("u", ["i3"]), ("v", ["j0", "j1"])]
    assert not list(tmp_path.glob("events-*.spool")), "drained spool files are deleted"


def test_without_a_spool_events_are_refused_while_redis_is_down(tiny_run: TinyRun) -> None:
    settings = settings_for(tiny_run.bundle, redis_url=f"redis://127.0.0.1:{free_port()}/0")
    with TestClient(create_app(settings)) as client:
        item = client.get("/items", params={"limit": 1}).json()["items"][0]["item_id"]
        refused = client.post("/events", json={"user_id": "u", "item_id": item}, headers=KEY)
        assert refused.status_code == 503 and refused.headers["Retry-After"] == "2"
        assert "SIDREC_SPOOL_DIR" in refused.json()["detail"]


@pytest.mark.parametrize("how", [signal.SIGTERM, signal.SIGKILL], ids=["sigterm", "sigkill"])
def test_acknowledged_events_survive_a_restart_during_a_redis_outage(
    tiny_run: TinyRun, tmp_path: Path, how: signal.Signals
) -> None:
    port = free_port()
    redis_dir, spool = tmp_path / "redis", tmp_path / "spool"
    redis_dir.mkdir()
    server = start_redis_server(port, redis_dir, persistent=True)
    env = {"SIDREC_SPOOL_DIR": str(spool), "SIDREC_REDIS_KEY_PREFIX": "d"}
    cpus = sorted(os.sched_getaffinity(0))
    service, url = start_service(tiny_run.bundle, port, API_KEY, cpus, env, tmp_path / "service-1.log")
    try:
        items = [row["item_id"] for row in httpx.get(f"{url}/items", params={"limit": 12}).json()["items"]]
        assert httpx.post(
            f"{url}/events", json={"user_id": "u", "item_ids": items[:1]}, headers=KEY
        ).is_success
        stop(server)
        acknowledged = list(items[:1])
        for item in items[1:12]:  # 11 events while Redis is down, each answered before the next
            answer = httpx.post(f"{url}/events", json={"user_id": "u", "item_id": item}, headers=KEY)
            assert answer.status_code == 200 and answer.json()["store"] == "degraded", answer.text
            acknowledged.append(item)
        service.send_signal(how)
        service.wait(30)
        server = start_redis_server(port, redis_dir, persistent=True)
        service, url = start_service(tiny_run.bundle, port, API_KEY, cpus, env, tmp_path / "service-2.log")
        stored = [s.decode() for s in redis.Redis(port=port).lrange("d:history:u", 0, -1)]
        assert stored == acknowledged, "every acknowledged event, once, in order"
        assert httpx.get(f"{url}/readyz").json()["store"] == "ok"
        files = list(spool.glob("events-*.spool"))
        assert len(files) == 1 and files[0].stat().st_size == 0, "only the new process's file, empty"
    finally:
        if service.poll() is None:
            stop(service)
        stop(server)
    for line in (tmp_path / "service-2.log").read_text().splitlines():
        assert "Traceback" not in line


def test_spool_file_is_json_lines(tmp_path: Path) -> None:
    """The format an operator may read (or replay by hand): one JSON event per line."""

    async def write() -> Path:
        spool = EventSpool(tmp_path, capacity=10)
        await spool.add("u", ["a", "b"])
        path = spool.path
        os.close(spool._fd)  # type: ignore[arg-type]
        return path

    path = asyncio.run(write())
    assert [json.loads(line) for line in path.read_text().splitlines()] == [
        {"user_id": "u", "items": ["a", "b"]}
    ]


def test_events_arriving_while_redis_comes_back_are_all_written_in_order(tmp_path: Path) -> None:
    """A steady stream of appends across an outage and the reconnect's flush: once the store says
    ``ok`` nothing is left in the spool, and Redis holds every acknowledged event in order."""
    from service.metrics import ServiceMetrics
    from service.store import Backoff, RedisStore

    port = free_port()
    server = start_redis_server(port, tmp_path, persistent=True)

    async def scenario() -> tuple[list[str], int]:
        nonlocal server
        store = RedisStore(
            f"redis://127.0.0.1:{port}/0",
            "r",
            10_000,
            ServiceMetrics(),
            backoff=Backoff(0.01, 0.05),
            spool_dir=tmp_path / "spool",
        )
        await store.start("b", {"sids": b"x"})
        acknowledged: list[str] = []

        async def stream() -> None:
            for n in range(400):
                await store.append("u", [f"e{n}"])
                acknowledged.append(f"e{n}")
                await asyncio.sleep(0.002)

        writer = asyncio.get_running_loop().create_task(stream())
        await asyncio.sleep(0.1)
        server.terminate()
        server.wait(10)
        await asyncio.sleep(0.3)
        server = start_redis_server(port, tmp_path, persistent=True)
        await writer
        for _ in range(200):
            if store.state == "ok":
                break
            await asyncio.sleep(0.05)
        assert store.state == "ok"
        left = store._spool.size
        await store.close()
        return acknowledged, left

    try:
        acknowledged, left = asyncio.run(scenario())
        stored = [s.decode() for s in redis.Redis(port=port).lrange("r:history:u", 0, -1)]
    finally:
        server.terminate()
        server.wait(10)
    assert left == 0, f"{left} acknowledged events still only in the spool after the store said ok"
    assert stored == acknowledged


def test_the_service_refuses_to_start_on_a_spool_folder_it_cannot_write(
    tiny_run: TinyRun, tmp_path: Path
) -> None:
    import subprocess
    import sys

    (tmp_path / "a-file").write_text("")
    env = {**os.environ, "SIDREC_SPOOL_DIR": str(tmp_path / "a-file" / "spool"), "SIDREC_MAX_WAIT_MS": "1"}
    result = subprocess.run(
        [sys.executable, "-m", "service", "--bundle", str(tiny_run.bundle)],
        cwd=Path(__file__).resolve().parents[2],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2
    assert "SIDREC_SPOOL_DIR: cannot write to" in result.stderr
    assert "ignoring unknown settings: SIDREC_MAX_WAIT_MS" in result.stderr
