"""The service's error hierarchy, and its one translation to HTTP.

Everything a client or an operator can cause is a ``ServiceError`` subclass whose message names the
field, item or file at fault. Code below the API layer raises these; ``ERROR_STATUS`` is the single
place that turns them into HTTP status codes (see ``service.app``), so no route builds an
``HTTPException`` itself and no user mistake surfaces as a 500.

- ``BundleError``: the bundle on disk is missing a file, fails its checksum or does not match its
  manifest. At start-up the service refuses to run; on ``/admin/reload`` the old bundle stays.
- ``UnknownItem``: an item id in a URL that is not in the catalogue (404); an unknown id in an
  event is an ``InvalidRequest`` naming the field (422), and in a history it is skipped and listed
  in the answer's ``ignored_history`` (422 only when no known item is left).
- ``InvalidRequest``: a well-formed request that asks for something impossible (422).
- ``Overloaded``: the request queue is full (``service.batcher``); retry after ``retry_after``
  seconds (429).
- ``DeadlineExceeded``: the request's deadline passed while it was queued, so it was dropped before
  the model (503 + Retry-After).
- ``Unauthorized``: a write/admin endpoint without the right API key (401).
- ``StoreUnavailable``: the store is needed for this request (e.g. a user's history) and is down (503).
"""

from __future__ import annotations

__all__ = [
    "ERROR_STATUS",
    "BundleError",
    "DeadlineExceeded",
    "InvalidRequest",
    "Overloaded",
    "ServiceError",
    "StoreUnavailable",
    "Unauthorized",
    "UnknownItem",
]


class ServiceError(Exception):
    """Base class: a message that names what is wrong, safe to show to the client."""


class BundleError(ServiceError):
    """The bundle does not match its manifest (missing file, checksum, graph inputs/outputs)."""


class UnknownItem(ServiceError):
    """An item id that is not in the catalogue."""

    def __init__(self, item_id: str, where: str = "item_id") -> None:
        super().__init__(f"{where}: unknown item {item_id!r}")
        self.item_id = item_id


class InvalidRequest(ServiceError):
    """A request that cannot be served as asked (empty history of an unknown user, bad filter...)."""


class Unauthorized(ServiceError):
    """A write or admin endpoint was called without the right API key."""


class Overloaded(ServiceError):
    """Too busy to answer in time; the client should retry after ``retry_after`` seconds."""

    def __init__(self, message: str, retry_after: float = 1.0) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class DeadlineExceeded(Overloaded):
    """The request waited past its deadline; it was dropped before reaching the model."""


class StoreUnavailable(ServiceError):
    """The store (Redis) is down and this request cannot be answered from memory."""

    def __init__(self, message: str, retry_after: float = 1.0) -> None:
        super().__init__(message)
        self.retry_after = retry_after


#: The one mapping from error class to HTTP status (most specific class first).
ERROR_STATUS: dict[type[ServiceError], int] = {
    UnknownItem: 404,
    InvalidRequest: 422,
    Unauthorized: 401,
    DeadlineExceeded: 503,
    Overloaded: 429,
    StoreUnavailable: 503,
    BundleError: 409,
}
