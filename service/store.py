"""Where state that outlives a request lives: user histories, cold-start items, cached results.

Two implementations of one small interface:

- ``MemoryStore``: in-process, the embedded default when no ``SIDREC_REDIS_URL`` is set (and the
  fallback of ``RedisStore``).
- ``RedisStore`` (redis-py asyncio), keys under ``{prefix}:``:
  ``bundle:{bundle_id}:{manifest,sids,catalogue,tags}`` the bundle's tables, published at start for
  other replicas and tools, ``bundle:current`` the id being served, ``bundle:{bundle_id}:cold_items``
  (hash item id -> JSON row with its ID) loaded at start so every replica serves the same cold-start
  items, ``history:{user_id}`` capped lists (RPUSH + LTRIM), ``cache:{bundle_id}:{digest}`` results
  with a short TTL. Versioning by bundle id means a reload never reads another bundle's tables.

If Redis stops answering, ``RedisStore`` marks itself degraded (``sidrec_redis_up`` = 0, readiness
says ``degraded``) and a background task reconnects with exponential backoff and jitter
(``Backoff``), so a dead Redis is not hammered by every replica in lock step. Meanwhile:

- histories are read from a bounded LRU *mirror* of the histories last read or written (exact: every
  append reads the list back in the same transaction), so ``user_id`` requests keep being answered;
- accepted events go to the mirror and the *spool* (``service.spool``: fsynced in ``SIDREC_SPOOL_DIR``
  before the 2xx; ``sidrec_event_buffer_events``), written to Redis, oldest first, before the store
  reports ``ok`` again (by the next process on the folder if this one stops first). Without a spool,
  or with it full, an event is refused (``StoreUnavailable``: 503 + Retry-After): never acknowledged
  and dropped. At least once: an append whose reply was lost (timeout) is spooled and may repeat.

Operations use short socket timeouts so a dead Redis costs a request milliseconds, not seconds.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import random
import time
from collections import OrderedDict, deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, TypeVar

import redis.asyncio as aioredis
from redis.exceptions import RedisError, ResponseError

from service.errors import StoreUnavailable
from service.metrics import ServiceMetrics
from service.spool import EventSpool

__all__ = ["Backoff", "MemoryStore", "RedisStore", "Store"]

log = logging.getLogger("sidrec.store")
T = TypeVar("T")


class Store(Protocol):
    @property
    def state(self) -> str: ...  # "embedded" | "ok" | "degraded"

    async def start(self, bundle_id: str, tables: dict[str, bytes]) -> None: ...
    async def history(self, user_id: str) -> list[str]: ...
    async def append(self, user_id: str, item_ids: list[str]) -> int: ...
    async def cold_items(self, bundle_id: str) -> list[dict[str, Any]]: ...
    async def add_cold_item(self, bundle_id: str, row: dict[str, Any]) -> None: ...
    async def cache_get(self, key: str) -> bytes | None: ...
    async def cache_set(self, key: str, value: bytes, ttl_s: float) -> None: ...
    async def close(self) -> None: ...


class MemoryStore:
    """Everything in process memory; histories capped like the Redis lists."""

    def __init__(self, history_cap: int) -> None:
        self._cap = history_cap
        self._histories: dict[str, deque[str]] = {}
        self._cold: dict[str, dict[str, dict[str, Any]]] = {}
        self._cache: dict[str, tuple[float, bytes]] = {}

    @property
    def state(self) -> str:
        return "embedded"

    async def start(self, bundle_id: str, tables: dict[str, bytes]) -> None:
        return None

    async def history(self, user_id: str) -> list[str]:
        return list(self._histories.get(user_id, ()))

    async def append(self, user_id: str, item_ids: list[str]) -> int:
        history = self._histories.setdefault(user_id, deque(maxlen=self._cap))
        history.extend(item_ids)
        return len(history)

    async def cold_items(self, bundle_id: str) -> list[dict[str, Any]]:
        return list(self._cold.get(bundle_id, {}).values())

    async def add_cold_item(self, bundle_id: str, row: dict[str, Any]) -> None:
        self._cold.setdefault(bundle_id, {})[row["item_id"]] = row

    async def cache_get(self, key: str) -> bytes | None:
        hit = self._cache.get(key)
        if hit is None or hit[0] < time.monotonic():
            self._cache.pop(key, None)
            return None
        return hit[1]

    async def cache_set(self, key: str, value: bytes, ttl_s: float) -> None:
        if len(self._cache) > 10_000:  # bounded: drop everything expired, then the oldest half
            now = time.monotonic()
            self._cache = {k: v for k, v in self._cache.items() if v[0] >= now}
            for stale in list(self._cache)[: len(self._cache) // 2]:
                del self._cache[stale]
        self._cache[key] = (time.monotonic() + ttl_s, value)

    async def close(self) -> None:
        return None


@dataclass(frozen=True)
class Backoff:
    """Reconnect delays: ``initial`` doubling up to ``cap`` seconds, each scaled by a random 0.5..1.

    The jitter spreads the reconnects of many replicas after a shared Redis comes back.
    """

    initial: float = 0.05
    cap: float = 2.0

    def delay(self, attempt: int, rng: random.Random) -> float:
        """Seconds to wait before reconnect attempt ``attempt`` (0-based)."""
        return min(self.cap, self.initial * 2**attempt) * rng.uniform(0.5, 1.0)


class RedisStore:
    """Redis-backed store that degrades to memory, spools events while down, and reconnects by itself."""

    def __init__(
        self,
        url: str,
        prefix: str,
        history_cap: int,
        metrics: ServiceMetrics,
        timeout_s: float = 0.25,
        buffer_size: int = 10_000,
        mirror_users: int = 10_000,
        backoff: Backoff = Backoff(),
        spool_dir: Path | None = None,
    ) -> None:
        """``spool_dir``: where events accepted while Redis is down are kept (``service.spool``);
        None refuses them instead. ``buffer_size``: events the spool holds at most."""
        self._redis = aioredis.from_url(url, socket_timeout=timeout_s, socket_connect_timeout=timeout_s)
        # The bundle's tables are megabytes: a short per-request timeout would fail their upload on a
        # busy machine forever, so they go through a client of their own with a generous one.
        self._bulk = aioredis.from_url(url, socket_timeout=30.0, socket_connect_timeout=timeout_s)
        self._prefix = prefix
        self._cap = history_cap
        self._metrics = metrics
        self._fallback = MemoryStore(history_cap)
        self._up = False
        self._reconnect: asyncio.Task[None] | None = None
        self._pending: tuple[str, dict[str, bytes]] | None = None
        self._spool = EventSpool(spool_dir, buffer_size)  # events accepted, not yet in Redis
        metrics.event_buffer.set(self._spool.size)
        self._cold: dict[tuple[str, str], dict[str, Any]] = {}  # cold items registered while down
        self._mirror: OrderedDict[str, list[str]] = OrderedDict()  # LRU of known histories
        self._mirror_users = mirror_users
        self._backoff = backoff
        self._rng = random.Random()

    @property
    def state(self) -> str:
        return "ok" if self._up else "degraded"

    def _key(self, *parts: str) -> str:
        return ":".join((self._prefix, *parts))

    def _remember(self, user_id: str, history: list[str]) -> None:
        self._mirror[user_id] = history[-self._cap :]
        self._mirror.move_to_end(user_id)
        while len(self._mirror) > self._mirror_users:
            self._mirror.popitem(last=False)

    def _down(self, exc: BaseException) -> None:
        self._metrics.store_errors.inc()
        if self._up or self._reconnect is None or self._reconnect.done():
            log.warning("redis unavailable (%s): serving from memory, reconnecting", exc)
        self._up = False
        self._metrics.redis_up.set(0)
        if self._reconnect is None or self._reconnect.done():
            self._reconnect = asyncio.get_running_loop().create_task(self._reconnect_loop())

    async def _reconnect_loop(self) -> None:
        attempt = 0
        while True:
            await asyncio.sleep(self._backoff.delay(attempt, self._rng))
            attempt += 1
            self._metrics.redis_reconnects.inc()
            try:
                # After an outage every pooled connection is stale and would fail once more on its
                # next use, flipping the store back to degraded once per connection: drop them all.
                await self._redis.connection_pool.disconnect()
                await self._bulk.connection_pool.disconnect()
                await self._redis.ping()
                if self._pending is not None:
                    await self._publish(*self._pending)
                await self._flush()
            except (RedisError, OSError):
                continue
            # _flush returned after seeing an empty buffer, with no await since: nothing slipped in.
            self._up = True
            self._metrics.redis_up.set(1)
            log.info("redis reachable again after %d attempts; buffered events written", attempt)
            return

    async def _flush(self) -> None:
        """Write what arrived while down, events oldest first; each leaves memory once Redis has it."""
        for (bundle_id, item_id), row in list(self._cold.items()):
            await self._redis.hset(self._key("bundle", bundle_id, "cold_items"), item_id, json.dumps(row))
            del self._cold[(bundle_id, item_id)]
        pending = self._spool.pending
        while pending:  # events spooled during a write are picked up by the next round
            user_id, items = pending[0]
            await self._write_history(user_id, items)
            self._spool.written()
            self._metrics.event_buffer.set(self._spool.size)
            self._metrics.events_flushed.inc(len(items))

    async def _call(self, operation: Callable[[], Awaitable[T]], fallback: Callable[[], Awaitable[T]]) -> T:
        if self._up:
            try:
                return await operation()
            except ResponseError as exc:
                # Redis is up and refused this one command: not an outage, and nothing to buffer (a
                # refused write would be retried, and refused, forever). The caller gets a 503.
                self._metrics.store_errors.inc()
                log.error("redis refused a command: %s", exc)
                raise StoreUnavailable("store: the history store refused this request; retry") from None
            except (RedisError, OSError) as exc:
                self._down(exc)
        return await fallback()

    async def _publish(self, bundle_id: str, tables: dict[str, bytes]) -> None:
        async with self._bulk.pipeline(transaction=True) as pipe:
            for name, data in tables.items():
                pipe.set(self._key("bundle", bundle_id, name), data)
            pipe.set(self._key("bundle", "current"), bundle_id)
            await pipe.execute()
        self._pending = None

    async def start(self, bundle_id: str, tables: dict[str, bytes]) -> None:
        """Publish the bundle's tables under its id and write what the spool holds from an earlier
        run; if Redis is down, both happen once it is back."""
        self._pending = (bundle_id, tables)
        try:
            await self._redis.ping()
            await self._publish(bundle_id, tables)
            await self._flush()
        except (RedisError, OSError) as exc:
            self._down(exc)
            return
        self._up = True
        self._metrics.redis_up.set(1)

    async def history(self, user_id: str) -> list[str]:
        """The user's events; while Redis is down, the mirror (``StoreUnavailable`` if not in it)."""

        async def read() -> list[str]:
            raw = await self._redis.lrange(self._key("history", user_id), -self._cap, -1)
            history = [item.decode() if isinstance(item, bytes) else str(item) for item in raw]
            self._remember(user_id, history)
            return history

        async def from_memory() -> list[str]:
            if user_id in self._mirror:
                return list(self._mirror[user_id])
            raise StoreUnavailable(
                "user_id: the history store is unavailable and this user's history is not in memory; "
                "send the history in the request or retry"
            )

        return await self._call(read, from_memory)

    async def _write_history(self, user_id: str, item_ids: list[str]) -> list[str]:
        key = self._key("history", user_id)
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.rpush(key, *item_ids)
            pipe.ltrim(key, -self._cap, -1)
            pipe.lrange(key, 0, -1)
            *_, raw = await pipe.execute()
        history = [item.decode() if isinstance(item, bytes) else str(item) for item in raw]
        self._remember(user_id, history)
        return history

    async def append(self, user_id: str, item_ids: list[str]) -> int:
        """Write the events, or spool them while Redis is down; refuse (503) without a spool or when full."""

        async def write() -> int:
            return len(await self._write_history(user_id, item_ids))

        async def spool() -> int:
            try:
                await self._spool.add(user_id, item_ids)
            except StoreUnavailable:
                self._metrics.events_refused.inc(len(item_ids))
                raise
            self._metrics.event_buffer.set(self._spool.size)
            history = [*self._mirror.get(user_id, []), *item_ids]
            self._remember(user_id, history)
            return len(history[-self._cap :])

        return await self._call(write, spool)

    async def cold_items(self, bundle_id: str) -> list[dict[str, Any]]:
        async def read() -> list[dict[str, Any]]:
            rows = await self._redis.hvals(self._key("bundle", bundle_id, "cold_items"))
            return sorted((json.loads(r) for r in rows), key=lambda row: row["added_at"])

        return await self._call(read, lambda: self._fallback.cold_items(bundle_id))

    async def add_cold_item(self, bundle_id: str, row: dict[str, Any]) -> None:
        async def write() -> None:
            await self._redis.hset(
                self._key("bundle", bundle_id, "cold_items"), row["item_id"], json.dumps(row)
            )

        async def remember() -> None:  # written by the reconnect loop, like buffered events
            self._cold[(bundle_id, row["item_id"])] = row
            await self._fallback.add_cold_item(bundle_id, row)

        await self._call(write, remember)

    async def cache_get(self, key: str) -> bytes | None:
        async def read() -> bytes | None:
            value = await self._redis.get(self._key("cache", key))
            return value.encode() if isinstance(value, str) else value

        return await self._call(read, lambda: self._fallback.cache_get(key))

    async def cache_set(self, key: str, value: bytes, ttl_s: float) -> None:
        async def write() -> None:
            await self._redis.set(self._key("cache", key), value, px=max(1, int(ttl_s * 1000)))

        await self._call(write, lambda: self._fallback.cache_set(key, value, ttl_s))

    async def close(self) -> None:
        if self._reconnect is not None:
            self._reconnect.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reconnect
        await self._spool.close()
        await self._redis.aclose()
        await self._bulk.aclose()
