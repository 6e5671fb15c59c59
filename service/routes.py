"""HTTP routes: parse, call ``ServiceState``, return. No business logic and no HTTPException here."""

from __future__ import annotations

import asyncio
import re
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request, Response
from fastapi import Path as PathParam
from fastapi.responses import JSONResponse, PlainTextResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from service.deps import ApiKey, EventsKey, Operator, State
from service.errors import ERROR_STATUS, ServiceError
from service.layout import DecodingLayout, cpu_limit
from service.openapi import error_responses
from service.schemas import (
    MAX_PAGE,
    BatchRequest,
    BatchResponse,
    BatchResult,
    EventsRequest,
    EventsResponse,
    ItemInfo,
    ItemPage,
    ItemUpsert,
    Readiness,
    RecommendRequest,
    RecommendResponse,
    ReloadRequest,
    ReloadResponse,
)

__all__ = ["router", "status_of"]

router = APIRouter()
_ABSOLUTE_DIRS = re.compile(r"(?<![\w.~-])/(?:[^\s/'\"]+/)+")
ItemIdPath = Annotated[str, PathParam(min_length=1, max_length=200)]


def status_of(exc: ServiceError) -> int:
    """The one translation from service errors to HTTP status codes (most specific class wins)."""
    for cls in type(exc).__mro__:
        if cls in ERROR_STATUS:
            return ERROR_STATUS[cls]
    return 400


@router.post(
    "/recommend",
    response_model=RecommendResponse,
    responses=error_responses(400, 413, 422, 429, 503),
    tags=["recommend"],
)
async def recommend(body: RecommendRequest, state: State) -> RecommendResponse:
    """Top-k items for a history (explicit, or the user's stored events), constrained to real items."""
    return await state.recommend(body)


@router.post(
    "/recommend/batch",
    response_model=BatchResponse,
    responses=error_responses(400, 413, 422, 429),
    tags=["recommend"],
)
async def recommend_batch(body: BatchRequest, state: State) -> BatchResponse:
    """Several recommendations in one call; each gets its own result or its own error."""
    more = len(body.requests) - 1  # admitted as one request, it counts as all it holds (MicroBatcher)
    state.batcher.admitted += more
    try:
        outcomes = await asyncio.gather(*(state.recommend(r) for r in body.requests), return_exceptions=True)
    finally:
        state.batcher.admitted -= more
    results = []
    for outcome in outcomes:
        if isinstance(outcome, ServiceError):
            results.append(BatchResult(status=status_of(outcome), error=str(outcome)))
        elif isinstance(outcome, BaseException):
            raise outcome
        else:
            results.append(BatchResult(response=outcome))
    return BatchResponse(results=results)


@router.post(
    "/events",
    response_model=EventsResponse,
    dependencies=[EventsKey],
    responses=error_responses(400, 401, 413, 422, 503),
    tags=["events"],
)
async def events(body: EventsRequest, state: State) -> EventsResponse:
    """Append interactions to a user's history (a capped list; oldest events fall off)."""
    length = await state.record(body.user_id, body.items)
    return EventsResponse(user_id=body.user_id, history_length=length, store=state.store.state)


@router.get("/items", response_model=ItemPage, responses=error_responses(422), tags=["items"])
async def list_items(
    state: State,
    limit: Annotated[int, Query(ge=1, le=MAX_PAGE)] = 100,
    offset: Annotated[int, Query(ge=0, le=1_000_000_000)] = 0,
) -> ItemPage:
    """The catalogue, including cold-start items, in row order, each with its generated tag path."""
    total, items = state.items(limit, offset)
    return ItemPage(total=total, offset=offset, items=items)


@router.get("/items/{item_id}", response_model=ItemInfo, responses=error_responses(404, 422), tags=["items"])
async def get_item(item_id: ItemIdPath, state: State) -> ItemInfo:
    """One item with its semantic ID and the tag path its codes stand for."""
    return state.item(item_id)


@router.put(
    "/items/{item_id}",
    response_model=ItemInfo,
    dependencies=[ApiKey],
    responses=error_responses(400, 401, 413, 422, 503),
    tags=["items"],
)
async def put_item(item_id: ItemIdPath, body: ItemUpsert, state: State) -> ItemInfo:
    """Cold start: tokenise a new item's embedding into a unique ID, recommendable at once."""
    return await state.register(item_id, body)


@router.get("/healthz", tags=["ops"])
async def healthz() -> dict[str, str]:
    """Liveness: the process answers."""
    return {"status": "ok"}


@router.get(
    "/readyz",
    tags=["ops"],
    response_model=Readiness,
    responses={503: {"model": Readiness, "description": "shutting down: take this replica out of rotation"}},
)
async def readyz(state: State, request: Request) -> JSONResponse:
    """Readiness: a verified bundle is loaded; ``degraded`` while Redis is unreachable or while this
    replica could not load the bundle the fleet was told to serve (still serving; ``fleet`` says
    why); 503 ``shutting down`` from the moment the process is told to stop (``service.server``)."""
    store = state.store.state
    stopping = getattr(request.app.state, "shutting_down", False)
    lagging = state.fleet is not None and not state.fleet.in_sync
    status = "shutting down" if stopping else "degraded" if store == "degraded" or lagging else "ready"
    body: dict[str, Any] = {
        "status": status,
        "store": store,
        "bundle_id": state.bundle.bundle_id,
        "queue": state.batcher.depth,
    }
    if state.fleet is not None:
        body["fleet"] = state.fleet.status()
    return JSONResponse(body, status_code=503 if stopping else 200)


@router.get("/metrics", response_class=PlainTextResponse, tags=["ops"])
async def metrics(state: State) -> Response:
    """Prometheus metrics: latency, batch size, queue wait, beam step time, Redis state.

    Open, like ``/healthz``: aggregate counters and histograms only (no ids, keys, paths or versions),
    for a scraper inside the network; keep the path off a public ingress (deploy/README.md)."""
    return Response(generate_latest(state.metrics.registry), media_type=CONTENT_TYPE_LATEST)


@router.get("/v1/model", tags=["ops"])
async def model_info(state: State, operator: Operator) -> dict[str, Any]:
    """What is being served: bundle id, ID spec and decoding limits (what a client needs); with the
    API key also where it came from (commit, creation time, metrics of the run) and how it runs
    (provider, batching), which tell an attacker more than a client needs."""
    bundle = state.bundle
    manifest = bundle.manifest
    public = {
        "bundle_id": manifest.bundle_id,
        "n_items": state.recommender.snapshot.n_items,
        "n_items_trained": manifest.n_items,
        "id_spec": manifest.id_spec.model_dump(),
        "decoding": manifest.decoding.model_dump(),
        "store": state.store.state,
    }
    if not operator:
        return public
    batcher = state.batcher
    return {
        **public,
        "bundle": bundle.path.name,  # the directory's name only: server paths are never shown
        "created_at": manifest.created_at,
        "git_sha": manifest.git_sha,
        "provider": bundle.provider,
        "batching": {
            "max_batch_size": batcher.max_batch_size,
            "max_wait_ms": batcher.max_wait_s * 1000,
            "decode_in_loop": batcher.in_loop,
            "queue_size": state.settings.queue_limit,
            "batch_workers": batcher.workers,
            "threads_per_session": DecodingLayout.for_cpus(cpu_limit()).threads,
            "cpu_limit": cpu_limit(),
        },
        "metrics": _without_paths(manifest.metrics),
    }


def _without_paths(value: Any) -> Any:
    """The run's metrics with absolute paths cut to their last part: server paths are never shown."""
    if isinstance(value, dict):
        return {key: _without_paths(v) for key, v in value.items()}
    if isinstance(value, list):
        return [_without_paths(v) for v in value]
    if isinstance(value, str):
        return _ABSOLUTE_DIRS.sub("", value)  # "/srv/runs/x/config.toml" -> "config.toml"
    return value


@router.post(
    "/admin/reload",
    response_model=ReloadResponse,
    dependencies=[ApiKey],
    responses=error_responses(400, 401, 409, 413, 422),
    tags=["ops"],
)
async def reload(state: State, body: ReloadRequest | None = None) -> ReloadResponse:
    """Verify and load a bundle, then swap atomically; in-flight requests finish on the old one.

    With no body the configured bundle directory is read again; ``bundle`` names a sub-directory of
    ``SIDREC_BUNDLE_ROOT``. A bundle that fails verification is refused (409) and the old one serves on.
    """
    previous, current = await state.reload(body.bundle if body else None)
    return ReloadResponse(previous=previous, bundle_id=current)
