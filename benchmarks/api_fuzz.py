"""schemathesis against the service's own OpenAPI description, with our two checks beside its own.

Every phase and check of ``schemathesis run`` (examples, coverage, fuzzing, stateful), configured by
the repository's ``schemathesis.toml``, plus two checks of ours: no traceback, file name or server
path in any body, and every 4xx (but 429) names the field, header or path at fault. Used in-process
by ``tests/service/test_openapi.py`` (a CI budget) and against a real server by
``python -m benchmarks.reliability`` (its fuzz phase).

    report = run(lambda config: schemathesis.openapi.from_url(URL + "/openapi.json", config=config),
                 headers={"X-API-Key": KEY}, examples=50)
"""

from __future__ import annotations

import tomllib
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import schemathesis
from schemathesis.config import SchemathesisConfig
from schemathesis.engine import events, from_schema

from benchmarks.fuzz import FIELD_PREFIX, LEAK_MARKERS

__all__ = ["CONFIG", "FuzzReport", "every_4xx_names_its_field", "no_internals_in_the_body", "run"]

CONFIG = Path(__file__).resolve().parents[1] / "schemathesis.toml"
#: server paths no body may show, besides LEAK_MARKERS (set by ``run`` for the checks below)
_forbidden: tuple[str, ...] = ()


@schemathesis.check
def no_internals_in_the_body(ctx: Any, response: Any, case: Any) -> bool | None:
    """No traceback, file name or server path in any answer."""
    text = response.text if isinstance(response.text, str) else ""
    for marker in (*LEAK_MARKERS, *_forbidden):
        if marker and marker in text:
            raise AssertionError(f"the body leaks {marker!r}: {text[:200]!r}")
    return None


@schemathesis.check
def every_4xx_names_its_field(ctx: Any, response: Any, case: Any) -> bool | None:
    """A 4xx (but 429) says what is wrong, starting with the field, header or path at fault."""
    if 400 <= response.status_code < 500 and response.status_code != 429:
        try:
            detail = response.json().get("detail")
        except (ValueError, AttributeError):
            detail = None
        if not isinstance(detail, str) or not FIELD_PREFIX.match(detail):
            raise AssertionError(f"{response.status_code} without its field: {response.text[:200]!r}")
    return None


@dataclass
class FuzzReport:
    requests: int = 0
    checks: int = 0
    check_names: set[str] = field(default_factory=set)
    failures: list[str] = field(default_factory=list)
    status_counts: Counter[str] = field(default_factory=Counter)
    operations: set[str] = field(default_factory=set)


def run(
    load: Callable[[SchemathesisConfig], Any],
    *,
    headers: dict[str, str],
    examples: int,
    forbidden: tuple[str, ...] = (),
    report: FuzzReport | None = None,
) -> FuzzReport:
    """One schemathesis run: ``load(config)`` gives the schema (``from_asgi`` or ``from_url``),
    ``headers`` go with every request, ``examples`` per operation and phase. Adds to ``report``."""
    global _forbidden
    _forbidden = forbidden
    config = tomllib.loads(CONFIG.read_text())
    config["generation"] = {"max-examples": examples}
    config["headers"] = headers
    schema = load(SchemathesisConfig.from_dict(config))
    out = report or FuzzReport()
    for event in from_schema(schema).execute():
        if isinstance(event, events.ScenarioFinished):
            out.operations.add(event.recorder.label)
            for interaction in event.recorder.interactions.values():
                out.requests += 1
                if interaction.response is not None:
                    out.status_counts[str(interaction.response.status_code)] += 1
            for case_id, nodes in event.recorder.checks.items():
                for node in nodes:
                    out.checks += 1
                    out.check_names.add(node.name)
                    if node.failure_info is None:
                        continue
                    sent = event.recorder.interactions.get(case_id)
                    request = sent.request if sent is not None else None
                    where = f"{request.method} {request.uri}" if request else event.recorder.label
                    out.failures.append(f"{node.name}: {where}: {node.failure_info.failure}"[:600])
        elif isinstance(event, events.NonFatalError | events.FatalError):
            out.failures.append(f"schemathesis could not run: {event}"[:600])
    return out
