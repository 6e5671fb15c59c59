"""docker-compose.yml: the structure `docker compose up` relies on.

The Docker client here has no compose plugin and no engine, so the file is validated as YAML with
every variable at its default; where `docker compose config` works it is run as well.
"""

from __future__ import annotations

import shutil
import subprocess

import pytest
import yaml

from tests.deploy.conftest import COMPOSE_FILES, REPO, interpolate_defaults


def _has_compose() -> bool:
    if shutil.which("docker") is None:
        return False
    return subprocess.run(["docker", "compose", "version"], capture_output=True).returncode == 0


def test_services_and_volumes(compose):
    assert set(compose["services"]) == {"redis", "bundle", "api"}
    assert {"redis-data", "bundles"} <= set(compose["volumes"])


def test_redis_persists_append_only_and_is_healthchecked(compose):
    redis = compose["services"]["redis"]
    command = redis["command"]
    assert command[command.index("--appendonly") + 1] == "yes"
    assert "redis-data:/data" in redis["volumes"]
    assert "redis-cli" in redis["healthcheck"]["test"]


def test_bundle_job_is_one_shot_on_the_train_image(compose):
    bundle = compose["services"]["bundle"]
    assert bundle["build"]["target"] == "train"
    assert bundle["restart"] == "no"
    assert "bundles:/bundles" in bundle["volumes"]


def test_api_waits_for_redis_and_bundle_and_reads_the_bundle_volume(compose):
    api = compose["services"]["api"]
    assert api["build"]["target"] == "serve"
    assert api["depends_on"] == {
        "redis": {"condition": "service_healthy"},
        "bundle": {"condition": "service_completed_successfully"},
    }
    assert "bundles:/bundles:ro" in api["volumes"]
    env = api["environment"]
    assert env["SIDREC_BUNDLE_PATH"] == "/bundles/demo"
    assert env["SIDREC_REDIS_URL"].startswith("redis://redis:6379")
    assert env["SIDREC_HOST"] == "0.0.0.0"
    assert api["ports"] == ["127.0.0.1:8000:8000"]  # loopback by default: the dev key stays local


def test_default_build_is_cpu_and_gpu_override_reserves_a_device():
    compose = yaml.safe_load(interpolate_defaults(COMPOSE_FILES[0].read_text()))
    assert compose["services"]["api"]["build"]["args"]["ONNXRUNTIME"] == "onnxruntime"
    assert "deploy" not in compose["services"]["api"]  # no GPU reservation unless asked for
    gpu = yaml.safe_load(interpolate_defaults(COMPOSE_FILES[1].read_text()))
    api = gpu["services"]["api"]
    assert api["build"]["args"]["ONNXRUNTIME"] == "onnxruntime-gpu"
    (device,) = api["deploy"]["resources"]["reservations"]["devices"]
    assert device["driver"] == "nvidia" and "gpu" in device["capabilities"]


@pytest.mark.skipif(not _has_compose(), reason="the docker client here has no compose plugin")
def test_docker_compose_config_parses():
    for files in ([COMPOSE_FILES[0]], list(COMPOSE_FILES)):
        args = [arg for path in files for arg in ("-f", str(path))]
        result = subprocess.run(
            ["docker", "compose", *args, "config", "--quiet"], cwd=REPO, capture_output=True
        )
        assert result.returncode == 0, result.stderr.decode()


def test_api_keeps_its_event_spool_on_a_volume(compose):
    api = compose["services"]["api"]
    assert api["environment"]["SIDREC_SPOOL_DIR"] == "/spool"
    assert "spool:/spool" in api["volumes"] and "spool" in compose["volumes"]
    assert api["stop_grace_period"] == "20s"  # past the service's own 10-s shutdown grace
