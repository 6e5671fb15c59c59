"""The real service, started the way the image starts it, and the harness run against it."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.deploy.conftest import REPO
from tests.deploy.dockerfile import stages
from tests.deploy.live_service import API_KEY, REDIS_DB, running_service, service_available

pytestmark = pytest.mark.skipif(
    not service_available(), reason="service/__main__.py (issue 5) has not landed yet"
)


@pytest.fixture(scope="session")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from tests.training.export.tiny_run import build_tiny_run

    return build_tiny_run(tmp_path_factory.getbasetemp() / "tiny-run").bundle


def test_service_starts_from_exactly_the_files_the_image_copies(bundle, tmp_path):
    """Copy what the serve stage COPYs (relative to its WORKDIR /app) and nothing else, then start it."""
    app = tmp_path / "app"
    for sources, destination in stages()["serve"].context_copies():
        for source in sources:
            shutil.copytree(REPO / source, app / Path(destination).relative_to("/app"), dirs_exist_ok=True)
    where = subprocess.run(
        [sys.executable, "-c", "import service; print(service.__file__)"],
        cwd=app,
        env={"PYTHONPATH": str(app), "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
    )
    assert where.stdout.strip().startswith(str(app)), where.stderr
    with running_service(bundle, app_dir=app) as url:
        import httpx

        assert httpx.get(f"{url}/healthz").status_code == 200
        items = httpx.get(f"{url}/items", params={"limit": 2}).json()["items"]
        answer = httpx.post(f"{url}/recommend", json={"history": [items[0]["item_id"]], "k": 3})
        assert answer.status_code == 200 and len(answer.json()["items"]) == 3


@pytest.mark.redis
def test_harness_against_the_real_service(bundle, tmp_path):
    import redis

    report = tmp_path / "report.json"
    try:
        with running_service(bundle, redis_url=f"redis://127.0.0.1:6379/{REDIS_DB}") as url:
            result = subprocess.run(
                [
                    sys.executable,
                    "-m",
                    "deploy.loadtest",
                    "--url",
                    url,
                    "--rates",
                    "4,8",
                    "--step-seconds",
                    "3",
                    "--users",
                    "20",
                    "--api-key",
                    API_KEY,
                    "--report",
                    str(report),
                ],
                cwd=REPO,
                capture_output=True,
                text=True,
                timeout=120,
            )
    finally:
        redis.Redis(db=REDIS_DB).flushdb()
    assert result.returncode == 0, result.stderr[-3000:]
    data = json.loads(report.read_text())
    assert {
        "max_rps_within_p99_target",
        "p99_target_ms",
        "invalid_responses",
        "server_errors",
        "steps",
        "command",
    } <= data.keys()
    assert data["invalid_responses"] == 0, [step["invalid_examples"] for step in data["steps"]]
    assert data["server_errors"] == 0
    assert [step["offered_rps"] for step in data["steps"]] == [4.0, 8.0]
    assert all(step["requests"] > 0 and step["status_counts"] for step in data["steps"])
    assert API_KEY not in data["command"]
    assert report.with_suffix(".png").stat().st_size > 0
    assert "Highest rate" in result.stdout or "No step" in result.stdout
