"""Every SIDREC_* name the deploy files set is a setting the service actually reads.

A misspelt variable in compose or a ConfigMap is silently ignored by the service, so the names are
checked against the service's pydantic-settings class (the module under service/ that defines a
``BaseSettings`` subclass). Until that class exists the names are checked against docs/CONTRACTS.md §5.
"""

from __future__ import annotations

import importlib
import re

from tests.deploy.conftest import COMPOSE_FILES, K8S, REPO

NAME = re.compile(r"\bSIDREC_[A-Z0-9_]+\b")


def _deploy_names() -> dict[str, set[str]]:
    files = [*COMPOSE_FILES, *sorted(K8S.rglob("*.yaml"))]
    return {
        str(path.relative_to(REPO)): set(NAME.findall(path.read_text(encoding="utf-8"))) for path in files
    }


def _settings_names() -> set[str]:
    """Env names of the service's settings class, or of CONTRACTS.md §5 while it does not exist."""
    from pydantic_settings import BaseSettings

    for path in sorted((REPO / "service").glob("*.py")):
        if "BaseSettings" not in path.read_text(encoding="utf-8"):
            continue
        module = importlib.import_module(f"service.{path.stem}")
        for value in vars(module).values():
            if isinstance(value, type) and issubclass(value, BaseSettings) and value is not BaseSettings:
                prefix = value.model_config.get("env_prefix", "")
                return {f"{prefix}{name}".upper() for name in value.model_fields}
    contracts = (REPO / "docs" / "CONTRACTS.md").read_text(encoding="utf-8")
    section = contracts.split("## 5.", 1)[1].split("\n## ", 1)[0]
    return set(NAME.findall(section))


def test_deploy_files_use_only_service_settings():
    known = _settings_names()
    assert "SIDREC_BUNDLE_PATH" in known
    used = _deploy_names()
    assert used["docker-compose.yml"], "compose sets no SIDREC_* variable: is the pattern still right?"
    unknown = {path: sorted(names - known) for path, names in used.items() if names - known}
    assert not unknown, f"not settings of the service: {unknown} (known: {sorted(known)})"


def test_compose_and_kubernetes_configure_the_same_settings():
    used = _deploy_names()
    k8s = set().union(*(names for path, names in used.items() if path.startswith("deploy/k8s")))
    assert {"SIDREC_BUNDLE_PATH", "SIDREC_REDIS_URL", "SIDREC_API_KEY", "SIDREC_PROVIDERS"} <= k8s
    assert k8s <= used["docker-compose.yml"]


def test_the_readme_configuration_table_lists_every_setting():
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    table = readme.split("## Configuration", 1)[1].split("\n## ", 1)[0]
    listed = set(NAME.findall(table))
    assert listed == _settings_names(), "README Configuration: add or remove rows to match the settings"
