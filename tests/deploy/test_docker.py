"""The images as far as they can be checked without a Docker engine: stage structure, what the
serving image copies and installs, and that the dependency list resolves in a clean virtualenv."""

from __future__ import annotations

import json
import subprocess
import venv

import pytest

from deploy.docker.requirements import requirements
from tests.deploy.conftest import REPO
from tests.deploy.dockerfile import stages


def test_serve_stage_copies_only_the_service_and_runs_as_non_root():
    serve = stages()["serve"]
    assert serve.context_copies() == [(["service/"], "/app/service/")]
    (user,) = serve.all("USER")
    assert user not in ("root", "0")
    (healthcheck,) = serve.all("HEALTHCHECK")
    assert "/healthz" in healthcheck
    assert serve.all("CMD") == ['["python", "-m", "service"]']


def test_serve_dependencies_are_the_serve_extra_without_torch():
    gpu = requirements(REPO / "pyproject.toml", ["serve"], "onnxruntime-gpu")
    cpu = requirements(REPO / "pyproject.toml", ["serve"], "onnxruntime")
    names = {line.split(">")[0].split("=")[0] for line in gpu}
    assert "onnxruntime-gpu" in names and "onnxruntime" not in names
    assert not {"torch", "onnx", "scikit-learn"} & names
    assert [line.replace("onnxruntime-gpu", "onnxruntime") for line in gpu] == cpu


def test_train_stage_builds_a_bundle_with_the_pipeline():
    train = stages()["train"]
    sources = {src for copy in train.context_copies() for src in copy[0]}
    assert {"training/", "service/", "configs/", "deploy/docker/build-bundle.sh"} <= sources
    script = (REPO / "deploy" / "docker" / "build-bundle.sh").read_text()
    assert "-m training pipeline --source" in script
    assert subprocess.run(["sh", "-n", str(REPO / "deploy" / "docker" / "build-bundle.sh")]).returncode == 0


def test_dockerignore_lets_every_copied_path_in():
    allowed = [line[1:] for line in (REPO / ".dockerignore").read_text().splitlines() if line.startswith("!")]
    for stage in stages().values():
        for sources, _ in stage.context_copies():
            for source in sources:
                assert any(source.startswith(path) for path in allowed), (stage.name, source)


@pytest.mark.slow
def test_serve_dependencies_resolve_in_a_clean_venv(tmp_path):
    """pip resolves the serving image's exact list in an empty venv (--dry-run: no 200 MB download)."""
    venv.create(tmp_path / "venv", with_pip=True)
    listing = tmp_path / "requirements.txt"
    listing.write_text("\n".join(requirements(REPO / "pyproject.toml", ["serve"], "onnxruntime")))
    report = tmp_path / "report.json"
    pip = [str(tmp_path / "venv" / "bin" / "python"), "-m", "pip"]
    result = subprocess.run(
        [*pip, "install", "--dry-run", "--quiet", "--report", str(report), "-r", str(listing)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    installed = {item["metadata"]["name"].lower() for item in json.loads(report.read_text())["install"]}
    assert {"fastapi", "uvicorn", "onnxruntime", "redis", "pydantic-settings"} <= installed
    assert "torch" not in installed
