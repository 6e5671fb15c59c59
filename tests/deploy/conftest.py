"""Shared paths and readers for the deploy tests."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
K8S = REPO / "deploy" / "k8s"
COMPOSE_FILES = (REPO / "docker-compose.yml", REPO / "deploy" / "docker" / "compose.gpu.yml")

#: ${VAR}, ${VAR:-default}, ${VAR-default}, ${VAR:?message}: compose interpolation.
INTERPOLATION = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?:(:?-)([^}]*)|(:?\?)([^}]*))?\}")


def interpolate_defaults(text: str) -> str:
    """Resolve compose interpolation with an empty environment (what a user sees with no .env)."""

    def resolve(match: re.Match[str]) -> str:
        if match.group(2) is not None:
            return match.group(3)
        raise AssertionError(f"{match.group(0)} has no default: `docker compose up` would need it set")

    return INTERPOLATION.sub(resolve, text)


def load_yaml_docs(path: Path) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(path.read_text(encoding="utf-8")) if doc]


@pytest.fixture(scope="session")
def compose() -> dict[str, Any]:
    """docker-compose.yml with every variable at its default."""
    return yaml.safe_load(interpolate_defaults(COMPOSE_FILES[0].read_text(encoding="utf-8")))
