"""The OpenAPI description as the service really answers.

Every operation lists each error status it can return with the body it really has (``ErrorBody``;
``ValidationErrorBody`` for 422, not FastAPI's default shape), and the request examples are taken
from the catalogue of the bundle being served, so each example in ``/docs`` is one it can answer.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

from fastapi import FastAPI

from service.schemas import ErrorBody, ValidationErrorBody
from service.state import ServiceState

__all__ = ["ERRORS", "error_responses", "openapi_for"]

_RETRY_AFTER = {"Retry-After": {"description": "seconds to wait", "schema": {"type": "integer"}}}

#: status -> when the service answers it (the body names the field, item or setting at fault)
ERRORS: dict[int, str] = {
    400: "the body cannot be parsed as JSON (not UTF-8, or nested too deeply)",
    401: "X-API-Key missing or wrong, or no SIDREC_API_KEY configured on the service",
    404: "no item with this id in the catalogue",
    409: "the bundle failed verification and was refused; the old one keeps serving",
    413: "the body is larger than SIDREC_MAX_BODY_BYTES",
    422: "not a valid request: each problem names its field (unknown or missing field, wrong type, "
    "value out of range, unknown filter path, user without events, no known item in the history)",
    429: "the request queue is full: retry after Retry-After seconds",
    503: "the deadline (SIDREC_REQUEST_TIMEOUT_MS) passed while queued, or the store this request "
    "needs is down: retry after Retry-After seconds",
}


def error_responses(*codes: int) -> dict[int | str, dict[str, Any]]:
    """The ``responses=`` of a route that can answer ``codes``."""
    out: dict[int | str, dict[str, Any]] = {}
    for code in codes:
        out[code] = {"model": ValidationErrorBody if code == 422 else ErrorBody, "description": ERRORS[code]}
        if code in (429, 503):
            out[code]["headers"] = _RETRY_AFTER
    return out


def _examples(state: ServiceState) -> dict[str, Any]:
    """Request examples from the served catalogue: two known items, a filter path that exists."""
    recommender = state.recommender
    catalogue, snapshot = recommender.bundle.catalogue, recommender.snapshot
    ids = catalogue.item_ids[:3]
    path = catalogue.category_paths[0]
    tag_path = path[1:3] if len(path) >= 3 else path[:2]
    recommend: list[dict[str, Any]] = [
        {"history": ids[:2], "k": 10, "exclude_seen": True, "explain": True},
        {"user_id": "demo-user", "k": 5},
    ]
    if tag_path and tuple(tag_path) in snapshot.by_path:
        recommend.append({"history": ids[:2], "k": 5, "filter": {"tag_path": list(tag_path)}})
    dim = recommender.bundle.manifest.embedding_dim
    return {
        "RecommendRequest": recommend,
        "BatchRequest": [{"requests": recommend[:1] * 2}],
        "EventsRequest": [
            {"user_id": "demo-user", "item_id": ids[0]},
            {"user_id": "demo-user", "item_ids": ids[1:3]},
        ],
        "ItemUpsert": [
            {"embedding": [0.1] * dim, "title": "a new item", "category_path": catalogue.category_paths[0]}
        ],
        "item_id": ids[0],
    }


def _without_default_422(schema: dict[str, Any]) -> dict[str, Any]:
    """Drop the 422 FastAPI adds to every operation with parameters, in a shape the service never
    sends: each route lists its real errors (``error_responses``); one that lists no 422 has none
    (``/v1/model``'s optional header cannot fail)."""
    for operations in schema.get("paths", {}).values():
        for operation in operations.values():
            response = operation.get("responses", {}).get("422", {})
            if "HTTPValidationError" in str(response.get("content")):
                del operation["responses"]["422"]
    components = schema.get("components", {}).get("schemas", {})
    for name in ("HTTPValidationError", "ValidationError"):
        components.pop(name, None)
    return schema


def _describe(schema: dict[str, Any], examples: dict[str, Any]) -> dict[str, Any]:
    components = schema.get("components", {}).get("schemas", {})
    for name in ("RecommendRequest", "BatchRequest", "EventsRequest", "ItemUpsert"):
        if name in components:
            components[name]["examples"] = examples[name]
    for operations in schema.get("paths", {}).values():
        for method, operation in operations.items():
            for parameter in operation.get("parameters", []):
                if parameter["name"] == "item_id":
                    parameter["example"] = examples["item_id"] if method == "get" else "new-item-1"
    return schema


def openapi_for(app: FastAPI, state: Callable[[], ServiceState | None]) -> Callable[[], dict[str, Any]]:
    """``app.openapi``: FastAPI's description (built once) with the served bundle's examples (rebuilt
    when a reload changes the bundle)."""
    described: dict[str, Any] = {}

    def openapi() -> dict[str, Any]:
        base = _without_default_422(FastAPI.openapi(app))  # cached by FastAPI; idempotent
        current = state()
        if current is None:
            return base
        key = current.bundle.bundle_id
        if key not in described:
            described.clear()
            described[key] = _describe(copy.deepcopy(base), _examples(current))
        return described[key]

    return openapi
