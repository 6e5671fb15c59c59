"""schemathesis against the service's own OpenAPI description, with our three checks beside its own.

Every phase and check of ``schemathesis run`` (examples, coverage, fuzzing, stateful), configured by
the repository's ``schemathesis.toml``, plus three checks of ours: no traceback, file name or server
path in any body; every 4xx (but 429) names the field, header or path at fault; and a 413 is only
ever the answer to a body over ``SIDREC_MAX_BODY_BYTES``. Used in-process by
``tests/service/test_openapi.py`` (a CI budget) and against a real server by
``python -m benchmarks.reliability`` (its fuzz phase); ``schemathesis run`` from the repository root
loads the same checks (``hooks`` in ``schemathesis.toml``).

schemathesis.toml counts a 413 as a refusal (of a negative example) and as an acceptable answer (to a
positive one): the schema bounds characters, the service bounds bytes, and a text of 100,000
characters outside the BMP, each sent as a JSON surrogate pair of escapes (12 bytes), is 1.2 MB. The
third check keeps that from hiding a 413 where the limit was not reached.

    report = run(lambda config: schemathesis.openapi.from_url(URL + "/openapi.json", config=config),
                 headers={"X-API-Key": KEY}, examples=50)
"""

from __future__ import annotations

import re
import tomllib
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import schemathesis
from schemathesis.config import SchemathesisConfig
from schemathesis.engine import events, from_schema

from service.settings import Settings

__all__ = [
    "CONFIG",
    "FIELD_PREFIX",
    "LEAK_MARKERS",
    "FuzzReport",
    "a_413_is_for_a_body_over_the_limit",
    "every_4xx_names_its_field",
    "no_internals_in_the_body",
    "run",
]

CONFIG = Path(__file__).resolve().parents[1] / "schemathesis.toml"
#: Texts that must never appear in a response body: traceback markers and install paths.
LEAK_MARKERS = ("Traceback (most recent call last)", 'File "/', "site-packages", "/usr/lib/python")
#: A 4xx ``detail`` starts with the field (or header, or path) at fault: ``history[0]: ...``.
FIELD_PREFIX = re.compile(r"^[^\s:][^\s:]*:")
#: server paths no body may show, besides LEAK_MARKERS (set by ``run`` for the checks below)
_forbidden: tuple[str, ...] = ()
#: the served SIDREC_MAX_BODY_BYTES (set by ``run``; the service's default for ``schemathesis run``)
_max_body_bytes: int = Settings.model_fields["max_body_bytes"].default


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


@schemathesis.check
def a_413_is_for_a_body_over_the_limit(ctx: Any, response: Any, case: Any) -> bool | None:
    """413 (which schemathesis.toml counts as a refusal) only for a body over SIDREC_MAX_BODY_BYTES."""
    if response.status_code == 413:
        body = response.request.body
        size = len(body.encode("utf-8", "surrogatepass") if isinstance(body, str) else body or b"")
        if size <= _max_body_bytes:
            raise AssertionError(f"413 for a body of {size} bytes, within the limit of {_max_body_bytes}")
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
    max_body_bytes: int | None = None,
    report: FuzzReport | None = None,
) -> FuzzReport:
    """One schemathesis run: ``load(config)`` gives the schema (``from_asgi`` or ``from_url``),
    ``headers`` go with every request, ``examples`` per operation and phase, ``max_body_bytes`` the
    served SIDREC_MAX_BODY_BYTES (default: the service's default). Adds to ``report``."""
    global _forbidden, _max_body_bytes
    _forbidden = forbidden
    _max_body_bytes = max_body_bytes or Settings.model_fields["max_body_bytes"].default
    config = tomllib.loads(CONFIG.read_text())
    config.pop("hooks", None)  # this module: its checks are registered already
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
