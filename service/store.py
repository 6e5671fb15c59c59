"""Where state that outlives a request lives: user histories, cold-start items, cached results.

Two implementations of one small interface:

- ``MemoryStore``: in-process, the embedded default when no ``SIDREC_REDIS_URL`` is set (and the
  fallback of ``RedisStore``).
- ``RedisStore`` (redis-py asyncio; a Redis Cluster for a ``redis+cluster://`` URL), keys under
  ``{prefix}:``: ``bundle:{{bundle_id}}:{manifest,sids,catalogue,tags}`` the bundle's tables,
  published at start for other replicas and tools; ``bundle:current`` the bundle the fleet serves
  (JSON ``{"bundle", "bundle_id"}``, written by a reload: ``service.fleet``); per bundle the
  cold-start items, allocated by one Lua script (``REGISTER_ITEM``) so that concurrent registrations
  on different replicas never share an ID: ``cold_ids`` (hash ID -> item id), ``cold_items`` (hash
  item id -> JSON row with its ID) and ``cold_log`` (the rows in registration order, which replicas
  read from where they stopped); ``history:{user_id}`` capped lists (RPUSH + LTRIM),
  ``cache:{bundle_id}:{digest}`` results with a short TTL. Versioning by bundle id means a reload
  never reads another bundle's tables. Every multi-key operation (a bundle's tables, its cold-start
  keys) stays in one cluster slot: the bundle id is the hash tag (``{...}``).

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
from redis.asyncio.cluster import RedisCluster
from redis.exceptions import ClusterError, RedisClusterException, RedisError, ResponseError, TryAgainError

from service.errors import InvalidRequest, StoreUnavailable
from service.metrics import ServiceMetrics
from service.spool import EventSpool

__all__ = ["CLUSTER_SCHEME", "REGISTER_ITEM", "Backoff", "MemoryStore", "RedisStore", "Store"]

log = logging.getLogger("sidrec.store")
T = TypeVar("T")

#: what a Redis that cannot be reached raises (a cluster client also raises errors outside RedisError)
_UNREACHABLE = (RedisError, RedisClusterException, OSError)
#: what a cluster with a master down answers: an outage, although some of them are ResponseErrors
_CLUSTER_OUTAGE = (ClusterError, TryAgainError, RedisClusterException)

#: ``SIDREC_REDIS_URL`` scheme that selects a Redis Cluster (any one node; ``rediss+cluster`` for TLS)
CLUSTER_SCHEME = "redis+cluster://"

#: Allocate a cold-start item's disambiguation code, atomically for the whole fleet: the smallest code
#: under its tuple that neither the bundle (ARGV[4], codes its rows hold) nor an earlier registration
#: (KEYS[1]) took; record the row (KEYS[2]) and append it to the log replicas follow (KEYS[3]).
#: ARGV: item id, tuple "c0,c1,..", codebook size, taken codes, the row's JSON up to and after the
#: code. Returns {0, row}, {1, existing row} (item already registered) or {2, ""} (tuple full).
REGISTER_ITEM = """
local existing = redis.call('HGET', KEYS[2], ARGV[1])
if existing then return {1, existing} end
local taken = {}
for code in string.gmatch(ARGV[4], '%d+') do taken[tonumber(code)] = true end
for code = 0, tonumber(ARGV[3]) - 1 do
  if not taken[code] and redis.call('HSETNX', KEYS[1], ARGV[2] .. ',' .. code, ARGV[1]) == 1 then
    local row = ARGV[5] .. code .. ARGV[6]
    redis.call('HSET', KEYS[2], ARGV[1], row)
    redis.call('RPUSH', KEYS[3], row)
    return {0, row}
  end
end
return {2, ''}
"""


def _client(url: str, socket_timeout: float, connect_timeout: float) -> Any:
    """A plain client, or a cluster client for ``redis+cluster://`` (``rediss+cluster://``) URLs."""
    options = {"socket_timeout": socket_timeout, "socket_connect_timeout": connect_timeout}
    for scheme in (CLUSTER_SCHEME, "rediss+cluster://"):
        if url.startswith(scheme):
            plain = scheme.replace("+cluster", "") + url[len(scheme) :]
            # Without full coverage the slots of the live masters keep answering while one is down.
            return RedisCluster.from_url(plain, require_full_coverage=False, **options)
    return aioredis.from_url(url, **options)


async def _drop_connections(client: Any) -> None:
    """Close every pooled connection (stale after an outage); the client reconnects on next use."""
    if isinstance(client, RedisCluster):
        await client.aclose()  # also forgets the slot map, which a failover may have changed
    else:
        await client.connection_pool.disconnect()


class Store(Protocol):
    @property
    def state(self) -> str: ...  # "embedded" | "ok" | "degraded"

    async def start(self, bundle_id: str, tables: dict[str, bytes]) -> None: ...
    async def history(self, user_id: str) -> list[str]: ...
    async def append(self, user_id: str, item_ids: list[str]) -> int: ...
    async def cold_items(self, bundle_id: str, start: int = 0) -> list[dict[str, Any]]: ...
    async def register_item(
        self, bundle_id: str, row: dict[str, Any], taken: list[int], codebook_size: int
    ) -> dict[str, Any]: ...
    async def fleet_bundle(self) -> dict[str, Any] | None: ...
    async def set_fleet_bundle(self, pointer: dict[str, Any]) -> None: ...
    async def cache_get(self, key: str) -> bytes | None: ...
    async def cache_set(self, key: str, value: bytes, ttl_s: float) -> None: ...
    async def close(self) -> None: ...


class MemoryStore:
    """Everything in process memory; histories capped like the Redis lists."""

    def __init__(self, history_cap: int) -> None:
        self._cap = history_cap
        self._histories: dict[str, deque[str]] = {}
        self._cold: dict[str, list[dict[str, Any]]] = {}  # bundle id -> rows in registration order
        self._fleet: dict[str, Any] | None = None
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

    async def cold_items(self, bundle_id: str, start: int = 0) -> list[dict[str, Any]]:
        return self._cold.get(bundle_id, [])[start:]

    async def register_item(
        self, bundle_id: str, row: dict[str, Any], taken: list[int], codebook_size: int
    ) -> dict[str, Any]:
        rows = self._cold.setdefault(bundle_id, [])
        if any(r["item_id"] == row["item_id"] for r in rows):
            raise InvalidRequest(f"item_id: {row['item_id']!r} is already in the catalogue")
        used = set(taken) | {r["codes"][-1] for r in rows if r["codes"][:-1] == row["codes"]}
        code = next((c for c in range(codebook_size) if c not in used), None)
        if code is None:
            raise InvalidRequest(f"embedding: all {codebook_size} IDs under {row['codes']} are taken")
        full = {**row, "codes": [*row["codes"], code]}
        rows.append(full)
        return full

    async def fleet_bundle(self) -> dict[str, Any] | None:
        return self._fleet

    async def set_fleet_bundle(self, pointer: dict[str, Any]) -> None:
        self._fleet = pointer

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
        self._redis = _client(url, timeout_s, timeout_s)
        # The bundle's tables are megabytes: a short per-request timeout would fail their upload on a
        # busy machine forever, so they go through a client of their own with a generous one.
        self._bulk = _client(url, 30.0, timeout_s)
        self._prefix = prefix
        self._cap = history_cap
        self._metrics = metrics
        self._fallback = MemoryStore(history_cap)
        self._up = False
        self._reconnect: asyncio.Task[None] | None = None
        self._pending: tuple[str, dict[str, bytes]] | None = None
        self._pending_fleet: dict[str, Any] | None = None  # a fleet pointer set while down
        self._spool = EventSpool(spool_dir, buffer_size)  # events accepted, not yet in Redis
        metrics.event_buffer.set(self._spool.size)
        self._mirror: OrderedDict[str, list[str]] = OrderedDict()  # LRU of known histories
        self._mirror_users = mirror_users
        self._backoff = backoff
        self._rng = random.Random()

    @property
    def state(self) -> str:
        return "ok" if self._up else "degraded"

    def _key(self, *parts: str) -> str:
        return ":".join((self._prefix, *parts))

    def _bundle_key(self, bundle_id: str, name: str) -> str:
        """A key of one bundle; the bundle id is the hash tag, so they share one cluster slot."""
        return self._key("bundle", f"{{{bundle_id}}}", name)

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
                await _drop_connections(self._redis)
                await _drop_connections(self._bulk)
                await self._redis.ping()
                if self._pending is not None:
                    await self._publish(*self._pending)
                if self._pending_fleet is not None:
                    await self._redis.set(self._key("bundle", "current"), json.dumps(self._pending_fleet))
                    self._pending_fleet = None
                await self._flush()
            except _UNREACHABLE:
                continue
            # _flush returned after seeing an empty buffer, with no await since: nothing slipped in.
            self._up = True
            self._metrics.redis_up.set(1)
            log.info("redis reachable again after %d attempts; buffered events written", attempt)
            return

    async def _flush(self) -> None:
        """Write the events that arrived while down, oldest first; each leaves the spool once in Redis."""
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
            except _CLUSTER_OUTAGE as exc:
                self._down(exc)
                return await fallback()
            except ResponseError as exc:
                # Redis is up and refused this one command: not an outage, and nothing to buffer (a
                # refused write would be retried, and refused, forever). The caller gets a 503.
                self._metrics.store_errors.inc()
                log.error("redis refused a command: %s", exc)
                raise StoreUnavailable("store: the history store refused this request; retry") from None
            except _UNREACHABLE as exc:
                self._down(exc)
        return await fallback()

    async def _publish(self, bundle_id: str, tables: dict[str, bytes]) -> None:
        async with self._bulk.pipeline(transaction=True) as pipe:
            for name, data in tables.items():
                pipe.set(self._bundle_key(bundle_id, name), data)
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
        except _UNREACHABLE as exc:
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

    async def cold_items(self, bundle_id: str, start: int = 0) -> list[dict[str, Any]]:
        """The bundle's cold-start rows from position ``start`` of the registration log; none while
        Redis is down (a replica reads on from the same position once it is back)."""

        async def read() -> list[dict[str, Any]]:
            rows = await self._redis.lrange(self._bundle_key(bundle_id, "cold_log"), start, -1)
            return [json.loads(row) for row in rows]

        async def nothing() -> list[dict[str, Any]]:
            return []

        return await self._call(read, nothing)

    async def register_item(
        self, bundle_id: str, row: dict[str, Any], taken: list[int], codebook_size: int
    ) -> dict[str, Any]:
        """Give ``row`` (its ``codes`` the item's tuple) the smallest disambiguation code free in the
        whole fleet (``REGISTER_ITEM``), record it and return it with its full ID. ``taken``: the
        codes the bundle's own rows use under that tuple. Refused while Redis is down
        (``StoreUnavailable``): an ID allocated by one replica alone could collide with another's."""
        body = json.dumps({**{k: v for k, v in row.items() if k != "codes"}, "codes": row["codes"]})
        head, tail = body[:-2] + ", ", "]}"  # the JSON up to and after the code: "...[c0, c1, " + code
        keys = [self._bundle_key(bundle_id, name) for name in ("cold_ids", "cold_items", "cold_log")]
        args = [
            row["item_id"],
            ",".join(str(c) for c in row["codes"]),
            codebook_size,
            " ".join(str(c) for c in taken),
            head,
            tail,
        ]

        async def allocate() -> tuple[int, bytes]:
            status, text = await self._redis.eval(REGISTER_ITEM, len(keys), *keys, *args)
            return int(status), text

        async def refuse() -> tuple[int, bytes]:
            raise StoreUnavailable(
                "item: the store is unavailable and new items need it to get a fleet-wide unique ID; retry",
                2.0,
            )

        status, text = await self._call(allocate, refuse)
        existing = text.decode() if isinstance(text, bytes) else str(text)
        # The same registration found already done is its own earlier attempt (the client library
        # retries a command whose reply timed out): answer with what that attempt allocated.
        retried = (
            existing.startswith(head)
            and existing.endswith(tail)
            and existing[len(head) : -len(tail)].isdigit()
        )
        if status == 1 and not retried:
            raise InvalidRequest(f"item_id: {row['item_id']!r} is already in the catalogue")
        if status == 2:
            raise InvalidRequest(f"embedding: all {codebook_size} IDs under {row['codes']} are taken")
        result: dict[str, Any] = json.loads(text)
        return result

    async def fleet_bundle(self) -> dict[str, Any] | None:
        """The bundle the fleet serves (``bundle:current``), None if no reload named one yet."""

        async def read() -> dict[str, Any] | None:
            raw = await self._redis.get(self._key("bundle", "current"))
            if raw is None:
                return None
            try:
                pointer = json.loads(raw)
            except ValueError:  # a plain bundle id, as written before fleet reloads
                return None
            return pointer if isinstance(pointer, dict) else None

        async def unknown() -> dict[str, Any] | None:
            return None

        return await self._call(read, unknown)

    async def set_fleet_bundle(self, pointer: dict[str, Any]) -> None:
        """Name the bundle every replica should serve; written on reconnect if Redis is down now."""

        async def write() -> None:
            await self._redis.set(self._key("bundle", "current"), json.dumps(pointer))

        async def later() -> None:
            self._pending_fleet = pointer

        await self._call(write, later)

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
