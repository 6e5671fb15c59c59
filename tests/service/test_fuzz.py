"""Property-based fuzzing of every endpoint from the app's own OpenAPI schema (benchmarks/fuzz.py).

In-process against the real app (tiny real bundle, real Redis): a CI-sized number of generated
requests, each of which must get an answer below 500, with no traceback or server path in it, and
a 4xx that names the field at fault. ``python -m benchmarks.reliability`` runs the same generator
with thousands of requests against a real server process.
"""

from __future__ import annotations

import json
from urllib.parse import quote

import httpx
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings

from benchmarks.fuzz import (
    URL_PARAM_CHARS,
    FuzzRequest,
    fit_url_param,
    operations,
    problems,
    request_strategy,
)
from service.app import create_app
from tests.service.conftest import API_KEY, RedisTarget, settings_for
from tests.training.export.tiny_run import TinyRun

EXAMPLES = 300


def test_every_endpoint_survives_fuzzing(tiny_run: TinyRun, redis_target: RedisTarget) -> None:
    settings_ = settings_for(
        tiny_run.bundle, redis_url=redis_target.url, redis_key_prefix=redis_target.prefix
    )
    rows = [json.loads(line) for line in (tiny_run.bundle / "catalogue.jsonl").read_text().splitlines()]
    known = [r["item_id"] for r in rows[:50]] + sorted({p for r in rows for p in r["category_path"]})[:10]
    forbidden = (str(tiny_run.bundle), str(tiny_run.bundle.parent))
    seen: set[str] = set()
    with TestClient(create_app(settings_), raise_server_exceptions=False) as client:
        schema = client.get("/openapi.json").json()

        @settings(
            max_examples=EXAMPLES, deadline=None, database=None, suppress_health_check=list(HealthCheck)
        )
        @given(request_strategy(schema, known, API_KEY, max_body_bytes=settings_.max_body_bytes))
        def answer_is_well_formed(request: FuzzRequest) -> None:
            seen.add(request.operation)
            response = client.request(
                request.method,
                request.url,
                params=request.params,
                headers=request.headers,
                content=request.content,
            )
            assert not problems(request, response.status_code, response.text, forbidden)

        answer_is_well_formed()
    assert seen == {op.name for op in operations(schema)}, "every operation was fuzzed"


def test_a_huge_url_parameter_is_cut_to_what_a_client_can_send() -> None:
    """Found by 2,000-request runs: two query values of nested 20,000-character JSON, and later one
    such path parameter, made a URL over httpx's 64 KiB, and the harness crashed (InvalidURL)
    instead of sending it."""
    huge = json.dumps({"a": "x" * 20_000, "b": "\udbfc\ude4b" * 5_000, "c": "y" * 20_000})
    cut = fit_url_param(huge)
    assert len(quote(cut, safe="")) <= URL_PARAM_CHARS and huge.startswith(cut)
    assert fit_url_param("x" * 20_000) == "x" * 20_000  # the usual huge value is sent whole
    path = "/items/" + quote(cut, safe="")
    request = httpx.Request("GET", "http://127.0.0.1" + path, params={"limit": cut, "offset": cut})
    assert len(request.url.raw_path) <= 3 * URL_PARAM_CHARS + len("/items/?limit=&offset=")
