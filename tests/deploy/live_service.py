"""Start the real service as a subprocess (``python -m service``) and wait until it is ready."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import httpx

from tests.deploy.conftest import REPO

#: Redis database the deploy tests own (flushed after use); the service tests use others.
REDIS_DB = 11
API_KEY = "deploy-test-key-0123456789"
READY_TIMEOUT_S = 90.0


def service_available() -> bool:
    """The HTTP service (issue 5) lands after the deploy files; until then the live tests skip."""
    return (REPO / "service" / "__main__.py").is_file()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextlib.contextmanager
def running_service(bundle: Path, app_dir: Path = REPO, redis_url: str = "") -> Iterator[str]:
    """Run ``python -m service`` from ``app_dir`` with settings in the environment; yield its URL."""
    port = free_port()
    env = {
        **os.environ,
        "PYTHONPATH": str(app_dir),
        "SIDREC_BUNDLE_PATH": str(bundle),
        "SIDREC_HOST": "127.0.0.1",
        "SIDREC_PORT": str(port),
        "SIDREC_REDIS_URL": redis_url,
        "SIDREC_API_KEY": API_KEY,
        "SIDREC_LOG_LEVEL": "warning",
    }
    log = Path(tempfile.mkstemp(prefix=f"sidrec-service-{port}-", suffix=".log")[1])
    with log.open("w") as sink:
        process = subprocess.Popen(
            [sys.executable, "-m", "service"], cwd=app_dir, env=env, stdout=sink, stderr=sink
        )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + READY_TIMEOUT_S
        while True:
            if process.poll() is not None:
                raise AssertionError(
                    f"the service exited with {process.returncode} before it was ready:\n"
                    + log.read_text(errors="replace")[-4000:]
                )
            with contextlib.suppress(httpx.TransportError):
                if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                    break
            if time.monotonic() > deadline:
                raise AssertionError(f"the service was not ready within {READY_TIMEOUT_S:.0f} s")
            time.sleep(0.5)
        yield url
    finally:
        process.terminate()
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        log.unlink(missing_ok=True)
