"""The FastAPI app factory: lifespan (load, verify, connect, batch), error mapping, body limit, metrics."""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request, Response
from fastapi.responses import JSONResponse

from service.errors import Overloaded, ServiceError, StoreUnavailable
from service.metrics import ServiceMetrics
from service.routes import router, status_of
from service.settings import Settings, get_settings
from service.state import ServiceState

__all__ = ["create_app"]

log = logging.getLogger("sidrec.service")


def create_app(settings: Settings | None = None) -> FastAPI:
    """A new app; ``settings`` default to ``get_settings()`` (the ``SIDREC_*`` environment)."""
    metrics = ServiceMetrics()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        config = settings or get_settings()
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
    )
    app.include_router(router)

    @app.exception_handler(ServiceError)
    async def service_error(request: Request, exc: ServiceError) -> JSONResponse:
        headers = {}
        if isinstance(exc, Overloaded | StoreUnavailable):
            headers["Retry-After"] = str(max(1, round(exc.retry_after)))
        return JSONResponse({"detail": str(exc)}, status_code=status_of(exc), headers=headers)

    @app.middleware("http")
    async def limit_and_measure(
        request: Request, call_next: Callable[[Request], Awaitable[Response]]
    ) -> Response:
        started = time.perf_counter()
        limit = (settings or get_settings()).max_body_bytes
        length = request.headers.get("content-length")
        if length is not None and (not length.isdigit() or int(length) > limit):
            response: Response = JSONResponse(
                {"detail": f"body: {length} bytes exceeds the limit of {limit} (SIDREC_MAX_BODY_BYTES)"}, 413
            )
        else:
            response = await call_next(request)
        route = request.scope.get("route")
        name = getattr(route, "path", "unmatched")
        metrics.request_latency.labels(name, str(response.status_code)).observe(time.perf_counter() - started)
        return response

    return app
