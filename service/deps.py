"""FastAPI dependencies as ``Annotated`` aliases, so routes declare what they need in their signature."""

from __future__ import annotations

import hmac
from typing import Annotated

from fastapi import Depends, Header, Request

from service.errors import Unauthorized
from service.settings import Settings
from service.state import ServiceState

__all__ = ["ApiKey", "State"]


def get_state(request: Request) -> ServiceState:
    state: ServiceState = request.app.state.service
    return state


def require_api_key(
    state: Annotated[ServiceState, Depends(get_state)],
    x_api_key: Annotated[str | None, Header(description="the service's SIDREC_API_KEY")] = None,
) -> None:
    """Write and admin endpoints: the key must match; with no key configured they are closed."""
    settings: Settings = state.settings
    if settings.api_key is None:
        raise Unauthorized("this endpoint needs SIDREC_API_KEY to be configured on the service")
    if x_api_key is None or not hmac.compare_digest(x_api_key, settings.api_key.get_secret_value()):
        raise Unauthorized("X-API-Key header missing or wrong")


State = Annotated[ServiceState, Depends(get_state)]
ApiKey = Depends(require_api_key)
