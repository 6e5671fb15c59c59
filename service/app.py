"""The FastAPI app factory: lifespan (load, verify, connect, batch), error mapping, body limit, metrics.

Every error a client can cause leaves through one of the handlers here, as JSON whose ``detail``
names the field at fault (``ErrorBody``): ``ServiceError`` via ``status_of`` (service/errors.py),
request validation as 422 listing ``field: message`` (never echoing the input, which may be huge or
not encodable) with ``errors`` beside it (``ValidationErrorBody``: a service 422 has the same shape),
and the framework's own 4xx (unparseable body, unknown route, a method the path does not have, with
every method it has in ``Allow``) with the same shape. Nothing internal (traceback, server path) is
ever in a body. ``service/openapi.py`` documents exactly these.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.middleware.cors import CORSMiddleware
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import HTMLResponse, JSONResponse
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.errors import Overloaded, ServiceError, StoreUnavailable
from service.metrics import ServiceMetrics
from service.openapi import openapi_for
from service.routes import router, status_of
from service.settings import Settings, get_settings
from service.state import ServiceState

__all__ = ["create_app"]

log = logging.getLogger("sidrec.service")


_PLAIN_KEY = re.compile(r"[A-Za-z0-9_-]+")


def _key(part: str) -> str:
    """A key as it goes into a field name: plain keys as they are, any other (a caller's unknown key
    can hold spaces, colons or control characters) quoted with every other character escaped, so the
    field name stays one unambiguous token before the ``:`` of the message."""
    if _PLAIN_KEY.fullmatch(part):
        return part
    return '["' + "".join(c if _PLAIN_KEY.fullmatch(c) else f"\\u{ord(c):04x}" for c in part) + '"]'


def _field(loc: tuple[Any, ...] | list[Any]) -> str:
    """``("body", "history", 3)`` -> ``history[3]``; other origins are named: ``query.limit``."""
    parts = list(loc)
    origin = str(parts.pop(0)) if parts and parts[0] in ("body", "query", "path", "header") else "body"
    name = ""
    for part in parts:
        if isinstance(part, int):
            name += f"[{part}]"
        else:
            key = _key(str(part))
            name += f".{key}" if name and not key.startswith("[") else key
    if origin == "body":
        return name or "body"
    return f"{origin}.{name}"


def _problem(error: dict[str, Any]) -> dict[str, str]:
    """One validation error as ``{"field", "message"}``; a JSON syntax error points into the body."""
    if error.get("type") == "json_invalid":
        position = error.get("loc", ("body", "?"))[-1]
        reason = (error.get("ctx") or {}).get("error", "malformed")
        return {"field": "body", "message": f"invalid JSON at character {position} ({reason})"}
    return {"field": _safe(_field(error.get("loc", ()))), "message": _safe(str(error.get("msg", "invalid")))}


def _safe(text: str) -> str:
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


def _allowed(app: FastAPI, path: str) -> list[str]:
    """The methods some route answers on ``path`` (Starlette names only the first route's)."""
    methods: set[str] = set()
    for route in [*app.router.routes, *router.routes]:  # the app's own (docs) and the API's
        pattern = getattr(route, "path_regex", None)
        if pattern is not None and pattern.match(path):
            methods |= getattr(route, "methods", None) or set()
    return sorted(methods)


def _swagger_ui(app: FastAPI) -> None:
    """``/docs``: Swagger UI from the ``swagger-ui-bundle-v2`` package's files, so the docs work on a
    machine without internet access and send nothing to a third party."""
    from swagger_ui_bundle import swagger_ui_path

    app.mount("/docs/assets", StaticFiles(directory=str(swagger_ui_path)), name="swagger-ui")

    @app.get("/docs", include_in_schema=False)
    async def docs() -> HTMLResponse:
        return get_swagger_ui_html(
            openapi_url="/openapi.json",
            title="sidrec API",
            swagger_js_url="/docs/assets/swagger-ui-bundle.js",
            swagger_css_url="/docs/assets/swagger-ui.css",
            swagger_favicon_url="/docs/assets/favicon-32x32.png",
        )


class BodyLimit:
    """413 for bodies over ``limit`` bytes, whether announced (Content-Length) or streamed (chunked).

    A pure ASGI middleware: it counts the bytes as the app reads them, so a chunked upload without
    a Content-Length cannot get past the limit either.
    """

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app = app
        self.limit = limit

    def _refusal(self, size: str) -> JSONResponse:
        detail = f"body: {size} bytes exceeds the limit of {self.limit} (SIDREC_MAX_BODY_BYTES)"
        return JSONResponse({"detail": detail}, 413)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        length = dict(scope["headers"]).get(b"content-length")
        if length is not None and (not length.isdigit() or int(length) > self.limit):
            await self._refusal(length.decode("latin-1")[:20])(scope, receive, send)
            return
        seen = 0
        too_large = False

        async def counted_receive() -> Message:
            nonlocal seen, too_large
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.limit:  # the app sees a disconnect; its answer is replaced below
                    too_large = True
                    return {"type": "http.disconnect"}
            return message

        async def guarded_send(message: Message) -> None:
            if not too_large:
                await send(message)

        await self.app(scope, counted_receive, guarded_send)
        if too_large:
            await self._refusal(f"more than {self.limit}")(scope, receive, send)


#: what ``ShedEarly`` may refuse before reading the body: the routes that queue for the model
SHED_PATHS = frozenset({"/recommend", "/recommend/batch"})


class ShedEarly:
    """Admits a recommendation, counted until it is answered, or refuses it with 429 + Retry-After
    when the service already holds ``SIDREC_QUEUE_SIZE`` (``MicroBatcher.full``), before its body is
    even read: refused in the route, it would first be parsed and validated, work spent only to
    refuse it and taken from the requests being answered. Refusing here costs a comparison.
    """

    def __init__(self, app: ASGIApp, service: Callable[[], ServiceState | None]) -> None:
        self.app = app
        self.service = service

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        state = self.service() if scope["type"] == "http" and scope["path"] in SHED_PATHS else None
        if state is None or scope["method"] != "POST":
            await self.app(scope, receive, send)
            return
        batcher = state.batcher
        if batcher.full:
            refused = batcher.refusal()
            headers = {"Retry-After": str(max(1, round(refused.retry_after)))}
            answer = JSONResponse({"detail": str(refused)}, status_code=429, headers=headers)
            await answer(scope, receive, send)
            return
        batcher.admitted += 1
        try:
            await self.app(scope, receive, send)
        finally:
            batcher.admitted -= 1


class RequestMetrics:
    """``sidrec_request_latency_seconds`` by route and status (a pure ASGI middleware: no per-request
    task or body copy, unlike ``BaseHTTPMiddleware``)."""

    def __init__(self, app: ASGIApp, metrics: ServiceMetrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started, status = time.perf_counter(), 500

        async def observed_send(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, observed_send)
        finally:
            route = getattr(scope.get("route"), "path", None)  # the router records the matched route
            name = route or (scope["path"] if scope["path"] in SHED_PATHS else "unmatched")
            self.metrics.request_latency.labels(name, str(status)).observe(time.perf_counter() - started)


def create_app(settings: Settings | None = None) -> FastAPI:
    """A new app; ``settings`` default to ``get_settings()`` (the ``SIDREC_*`` environment)."""
    metrics = ServiceMetrics()
    config = settings or get_settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        app.state.service = await ServiceState.open(config, metrics)
        try:
            yield
        finally:
            await app.state.service.close()

    app = FastAPI(
        title="sidrec",
        description="Generative recommendation over semantic IDs, served from a verified ONNX bundle.",
        version="0.1.0",
        lifespan=lifespan,
        # Starlette would answer "/items/" with a redirect whose host is the request's Host header
        redirect_slashes=False,
        docs_url=None,  # served below from the package's own copy of Swagger UI, not from a CDN
        redoc_url=None,
    )
    app.include_router(router)
    _swagger_ui(app)
    app.openapi = openapi_for(app, lambda: getattr(app.state, "service", None))  # type: ignore[method-assign]

    @app.exception_handler(ServiceError)
    async def service_error(request: Request, exc: ServiceError) -> JSONResponse:
        headers = {}
        if isinstance(exc, Overloaded | StoreUnavailable):
            headers["Retry-After"] = str(max(1, round(exc.retry_after)))
        detail, status = _safe(str(exc)), status_of(exc)
        if status == 422:  # the same body as a schema violation: the message starts with its field
            field, _, message = detail.partition(": ")
            if not message:
                field, message = "body", detail
            problem = {"field": field, "message": message}
            return JSONResponse({"detail": detail, "errors": [problem]}, status_code=422)
        return JSONResponse({"detail": detail}, status_code=status, headers=headers)

    @app.exception_handler(RequestValidationError)
    async def invalid_request(request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = [_problem(error) for error in exc.errors()[:20]]
        detail = "; ".join(f"{e['field']}: {e['message']}" for e in errors)
        return JSONResponse({"detail": detail, "errors": errors}, status_code=422)

    @app.exception_handler(StarletteHTTPException)
    async def framework_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        detail = str(exc.detail)
        if exc.status_code == 400:  # FastAPI could not parse the body (malformed, or nested too deeply)
            detail = "body: cannot be parsed as JSON (malformed, or nested too deeply)"
        elif exc.status_code in (404, 405):
            detail = f"path: {request.method} {_safe(request.url.path)[:200]}: {detail}"
        headers = dict(exc.headers or {})
        if exc.status_code == 405:  # every method of the path, not only the first route's
            headers["Allow"] = ", ".join(_allowed(request.app, request.scope["path"]))
        return JSONResponse({"detail": detail}, status_code=exc.status_code, headers=headers)

    app.add_middleware(ShedEarly, service=lambda: getattr(app.state, "service", None))
    app.add_middleware(RequestMetrics, metrics=metrics)
    app.add_middleware(BodyLimit, limit=config.max_body_bytes)
    origins = [o.strip() for o in config.cors_origins.split(",") if o.strip()]
    if origins:  # off by default: no browser origin may call the API unless named
        app.add_middleware(CORSMiddleware, allow_origins=origins, allow_methods=["GET", "POST"])
    return app
