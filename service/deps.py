"""FastAPI dependencies as ``Annotated`` aliases, so routes declare what they need in their signature.

They are ``async def`` although nothing in them waits: FastAPI runs a plain ``def`` dependency in its
thread pool, a thread hand-off per dependency per request that the event loop pays for.
"""

from __future__ import annotations

import hmac
from typing import Annotated

from fastapi import Depends, Header, Request

from service.errors import Unauthorized
from service.settings import Settings
from service.state import ServiceState

__all__ = ["ApiKey", "EventsKey", "Operator", "State"]


async def get_state(request: Request) -> ServiceState:
    state: ServiceState = request.app.state.service
    return state


State = Annotated[ServiceState, Depends(get_state)]
_Key = Annotated[str | None, Header(description="the service's SIDREC_API_KEY")]


async def require_api_key(state: State, x_api_key: _Key = None) -> None:
    """Write and admin endpoints: the key must match; with no key configured they are closed.

    The comparison is constant-time over bytes (``hmac.compare_digest`` refuses non-ASCII ``str``,
    and a header may hold any Latin-1 text), so neither timing nor an odd header reveals the key.
    """
    settings: Settings = state.settings
    if settings.api_key is None:
        raise Unauthorized("X-API-Key: this endpoint needs SIDREC_API_KEY to be configured on the service")
    given = (x_api_key or "").encode("utf-8", "surrogateescape")
    if x_api_key is None or not hmac.compare_digest(given, settings.api_key.get_secret_value().encode()):
        raise Unauthorized("X-API-Key: header missing or wrong")


async def require_events_key(state: State, x_api_key: _Key = None) -> None:
    """``POST /events`` needs the key unless ``SIDREC_EVENTS_NEED_KEY=false`` (behind a trusted proxy)."""
    if state.settings.events_need_key:
        await require_api_key(state, x_api_key)


async def is_operator(state: State, x_api_key: _Key = None) -> bool:
    """Whether the caller sent the right API key (for endpoints that show operators more)."""
    try:
        await require_api_key(state, x_api_key)
    except Unauthorized:
        return False
    return True


Operator = Annotated[bool, Depends(is_operator)]
ApiKey = Depends(require_api_key)
EventsKey = Depends(require_events_key)
