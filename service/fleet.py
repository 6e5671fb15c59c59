"""One replica kept in step with the rest of the fleet, through the store.

Replicas share no memory, only Redis. Every ``POLL_S`` a replica's ``FleetFollower`` reads two
things there:

- the cold-start log of the bundle it serves, from where it stopped: items registered on any
  replica (each with an ID the store allocated once for the whole fleet) enter this replica's
  catalogue within a poll;
- ``bundle:current``, the bundle a reload named for the fleet. A replica that does not serve it
  loads, verifies and swaps it on its own (``ServiceState.reload``). One that cannot keeps serving
  what it has, says so in ``/readyz`` (``degraded``, with the reason) and in
  ``sidrec_bundle_in_sync`` = 0, and tries again every ``RETRY_S`` or when the fleet names another.

Polling rather than pub/sub: a replica that was disconnected, restarted or busy reads the same two
keys as one that was not, so there is no notification to miss, and a cluster needs nothing more.
Two small reads per replica per poll cost Redis nothing noticeable.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import TYPE_CHECKING, Any

from service.errors import ServiceError

if TYPE_CHECKING:
    from service.state import ServiceState

__all__ = ["POLL_S", "RETRY_S", "FleetFollower"]

log = logging.getLogger("sidrec.fleet")

#: seconds between two reads of the store: how late another replica's item or reload can arrive
POLL_S = 0.2
#: seconds before a replica that could not load the fleet's bundle tries again
RETRY_S = 30.0


class FleetFollower:
    """Follows the fleet's cold-start items and bundle for one ``ServiceState``."""

    def __init__(self, state: ServiceState) -> None:
        self.state = state
        self.wanted: str | None = None  # the fleet's bundle id, once a reload named one
        self.error: str | None = None  # why this replica does not serve it
        self._pointer: dict[str, Any] | None = None  # the last ``bundle:current`` acted on
        self._failed_at = 0.0
        self._task: asyncio.Task[None] | None = None

    @property
    def in_sync(self) -> bool:
        return self.error is None

    def status(self) -> dict[str, Any]:
        """What ``/readyz`` shows: the fleet's bundle id and, when this replica lags, why."""
        return {"bundle_id": self.wanted, "in_sync": self.in_sync, "error": self.error}

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(), name="sidrec-fleet")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(POLL_S)
            try:
                await self.sync()
            except ServiceError as exc:  # the store refused a read: try again next poll
                log.warning("fleet: %s", exc)
            except Exception:  # never let one bad poll stop the replica from following
                log.exception("fleet: a poll failed; trying again")

    async def sync(self) -> None:
        """One poll: read the new cold-start items, then follow the fleet's bundle if it changed."""
        state = self.state
        if state.store.state == "degraded":
            return  # the reads would answer nothing; the next poll after reconnecting catches up
        await state.catch_up(state.recommender)
        pointer = await state.store.fleet_bundle()
        if pointer is None:
            return
        retry = self.error is not None and time.monotonic() - self._failed_at >= RETRY_S
        if pointer == self._pointer and not retry:
            return
        self._pointer = pointer
        await self._follow(str(pointer.get("bundle_id")), pointer.get("bundle"))

    async def _follow(self, wanted: str, name: str | None) -> None:
        self.wanted = wanted
        if self.state.bundle.bundle_id != wanted:
            try:
                _, loaded = await self.state.reload(name, announce=False)
            except ServiceError as exc:
                self._failed(f"cannot load the fleet's bundle {wanted}: {exc}")
                return
            if loaded != wanted:
                where = repr(name) if name else "the configured bundle directory"
                self._failed(f"{where} holds bundle {loaded}, the fleet serves {wanted}")
                return
            log.info("fleet: now serving %s", wanted)
        self.error = None
        self.state.metrics.bundle_in_sync.set(1)

    def _failed(self, reason: str) -> None:
        log.error("fleet: %s; still serving %s", reason, self.state.bundle.bundle_id)
        self.error = reason
        self._failed_at = time.monotonic()
        self.state.metrics.bundle_in_sync.set(0)
