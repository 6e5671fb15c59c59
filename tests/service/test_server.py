"""The serving process: SIGTERM exits within the grace period whatever clients do, slow or idle
half-open connections are closed, and readiness fails as soon as shutdown starts."""

from __future__ import annotations

import os
import signal
import socket
import time
from pathlib import Path

import httpx
from fastapi.testclient import TestClient

from benchmarks.local_service import start_service, stop
from service.app import create_app
from service.server import Server
from tests.service.conftest import API_KEY, free_port, settings_for, start_redis_server
from tests.training.export.tiny_run import TinyRun

HALF_SENT_BODY = (
    b"POST /recommend HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 50\r\n\r\n{"
)
HALF_SENT_HEADERS = b"POST /recommend HTTP/1.1\r\nHost: x\r\nContent-Le"


def half_open_clients(url: str, n: int) -> list[socket.socket]:
    """``n`` connections: a third send half a body, a third half the headers, a third nothing."""
    port = int(url.rsplit(":", 1)[1])
    clients = []
    for i in range(n):
        sock = socket.create_connection(("127.0.0.1", port), timeout=5)
        sock.sendall([HALF_SENT_BODY, HALF_SENT_HEADERS, b""][i % 3])
        clients.append(sock)
    return clients


def closed_by_server(sock: socket.socket, within_s: float) -> bool:
    sock.settimeout(within_s)
    try:
        return sock.recv(1024) == b""  # no answer to an unfinished request: just the close
    except TimeoutError:
        return False
    except ConnectionResetError:
        return True


def test_sigterm_with_20_half_open_clients_exits_within_the_grace_period(
    tiny_run: TinyRun, tmp_path: Path
) -> None:
    port = free_port()
    redis_server = start_redis_server(port, tmp_path)
    env = {"SIDREC_SHUTDOWN_GRACE_S": "2", "SIDREC_READ_TIMEOUT_S": "60"}  # only the grace can end them
    cpus = sorted(os.sched_getaffinity(0))
    service, url = start_service(tiny_run.bundle, port, API_KEY, cpus, env, tmp_path / "service.log")
    try:
        clients = half_open_clients(url, 20)
        time.sleep(0.5)  # every connection accepted and its request begun
        history = [r["item_id"] for r in httpx.get(f"{url}/items", params={"limit": 3}).json()["items"]]
        assert httpx.post(f"{url}/recommend", json={"history": history}).status_code == 200
        started = time.monotonic()
        service.send_signal(signal.SIGTERM)
        code = service.wait(30)
        seconds = time.monotonic() - started
        assert code in (0, -signal.SIGTERM), (tmp_path / "service.log").read_text()  # uvicorn re-raises it
        assert seconds < 2 + 2.0, f"exited {seconds:.1f} s after SIGTERM with a 2-s grace period"
        for sock in clients:
            sock.close()
    finally:
        if service.poll() is None:
            stop(service)
        stop(redis_server)


def test_half_open_and_idle_connections_are_closed_after_the_read_timeout(
    tiny_run: TinyRun, tmp_path: Path
) -> None:
    port = free_port()
    redis_server = start_redis_server(port, tmp_path)
    cpus = sorted(os.sched_getaffinity(0))
    env = {"SIDREC_READ_TIMEOUT_S": "1"}
    service, url = start_service(tiny_run.bundle, port, API_KEY, cpus, env, tmp_path / "service.log")
    try:
        clients = half_open_clients(url, 3)
        started = time.monotonic()
        assert all(closed_by_server(sock, within_s=10) for sock in clients)
        assert time.monotonic() - started < 5
        # a well-behaved client on a kept-alive connection is not cut off by the read timeout
        with httpx.Client(base_url=url) as client:
            for _ in range(3):
                assert client.get("/healthz").status_code == 200
                time.sleep(0.6)  # 1.8 s on one connection, idle between requests under the keep-alive
        assert service.poll() is None
    finally:
        stop(service)
        stop(redis_server)


def test_readiness_fails_as_soon_as_shutdown_starts(tiny_run: TinyRun) -> None:
    app = create_app(settings_for(tiny_run.bundle))
    server = Server(app, settings_for(tiny_run.bundle))
    with TestClient(app) as client:
        assert client.get("/readyz").status_code == 200
        server.handle_exit(signal.SIGTERM, None)
        stopping = client.get("/readyz")
        assert stopping.status_code == 503 and stopping.json()["status"] == "shutting down"
        assert client.get("/healthz").status_code == 200, "alive while it finishes what is in flight"
