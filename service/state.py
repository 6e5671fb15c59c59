"""The running service: the bundle being served, the store, the batcher, and what routes ask of them.

Routes stay thin: they parse, call one method here, and return. Everything here raises only
``ServiceError`` subclasses for client mistakes; the app maps them to HTTP in one place.
"""

from __future__ import annotations

import asyncio
import gc
import hashlib
import io
import json
import logging
import time
import weakref
from collections.abc import Awaitable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from service.batcher import MicroBatcher
from service.bundle import LoadedBundle, Pace, load_bundle
from service.errors import BundleError, InvalidRequest, UnknownItem
from service.explanations import TagScore, ground
from service.fleet import FleetFollower
from service.layout import DecodingLayout, cpu_limit
from service.memory import freeze_heap, tune_allocator
from service.metrics import ServiceMetrics
from service.recommender import Query, Recommendation, Recommender
from service.schemas import (
    GroundingOut,
    HistoryItem,
    ItemInfo,
    ItemUpsert,
    RecommendedItem,
    RecommendRequest,
    RecommendResponse,
    TagOut,
)
from service.settings import Settings
from service.store import MemoryStore, RedisStore, Store

__all__ = ["ServiceState"]

log = logging.getLogger("sidrec.service")

#: seconds each part of the shutdown (fleet follower, batcher, store) may take before it is abandoned:
#: a part that never ends (a client library's close waiting on a connection that never answers) must
#: not keep the process, or a test's app, alive
CLOSE_STEP_S = 5.0


async def finish_within(name: str, work: Awaitable[None], seconds: float) -> bool:
    """Await ``work`` for at most ``seconds``; past that cancel it, log where it was stuck, and go on.

    Unlike ``asyncio.wait_for``, this never waits for the cancelled work to unwind, which is what a
    part that swallows its cancellation would make it do for ever. Returns whether ``work`` finished.
    """
    task = asyncio.ensure_future(work)
    done, _ = await asyncio.wait({task}, timeout=seconds)
    if not done:
        stack = io.StringIO()
        task.print_stack(file=stack)
        task.cancel()
        log.error(
            "shutdown: %s did not finish in %.0f s; abandoned it where it was:\n%s",
            name,
            seconds,
            stack.getvalue(),
        )
        return False
    if not task.cancelled() and task.exception() is not None:
        log.error("shutdown: %s failed", name, exc_info=task.exception())
    return True


#: at most this share of a CPU goes to loading a bundle while another one serves (``Pace``): a core
#: kept below its rated load by more than this (docs/OPERATIONS.md) still serves within its target
#: while a reload runs
RELOAD_CPU_SHARE = 0.15


#: the tables other replicas and tools read from the store (``service.store``); the ranking tables
#: (item table, text encoder, prefix index) are megabytes that only this process uses, and writing them
#: on every reload held up the requests served meanwhile
PUBLISHED_TABLES = ("sids", "catalogue", "tags")


def _published_tables(bundle: LoadedBundle) -> dict[str, bytes]:
    """The manifest and ``PUBLISHED_TABLES`` as bytes, read from the bundle directory."""
    tables = {"manifest": (bundle.path / "manifest.json").read_bytes()}
    for name in PUBLISHED_TABLES:
        tables[name] = (bundle.path / bundle.manifest.tables[name].file).read_bytes()
    return tables


def _tags(scores: list[TagScore]) -> list[TagOut]:
    return [TagOut(tag=t.tag, confidence=t.confidence, matches_category=t.matches_category) for t in scores]


@dataclass
class ServiceState:
    settings: Settings
    recommender: Recommender
    store: Store
    batcher: MicroBatcher
    metrics: ServiceMetrics
    reload_lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    fleet: FleetFollower | None = None  # with a shared store: follows the other replicas
    # per loaded bundle, how much of the store's cold-start log it holds
    cold_seen: weakref.WeakKeyDictionary[Recommender, int] = field(default_factory=weakref.WeakKeyDictionary)

    # ------------------------------------------------------------------------------ lifecycle
    @classmethod
    async def open(cls, settings: Settings, metrics: ServiceMetrics) -> ServiceState:
        """Load and verify the bundle (a ``BundleError`` refuses to start), connect the store, batch."""
        recommender = await asyncio.to_thread(cls._load, settings, settings.bundle_path)
        store: Store
        if settings.redis_url:
            store = RedisStore(
                settings.redis_url,
                settings.redis_key_prefix,
                settings.history_cap,
                metrics,
                buffer_size=settings.event_buffer_size,
                mirror_users=settings.history_mirror_users,
                spool_dir=settings.spool_dir,
            )
        else:
            store = MemoryStore(settings.history_cap)
        layout = DecodingLayout.for_cpus(cpu_limit())
        batcher = MicroBatcher(
            settings.max_batch_size,
            layout.wait_ms,
            settings.queue_limit,
            metrics,
            workers=layout.workers,
            in_loop=layout.in_loop,
        )
        state = cls(settings, recommender, store, batcher, metrics)
        await state._attach(recommender)
        if isinstance(store, RedisStore):
            state.fleet = FleetFollower(state)
            await state.fleet.sync()  # serve the fleet's bundle from the start if a reload named one
        tune_allocator()
        freeze_heap()
        state.batcher.start()
        if state.fleet is not None:
            state.fleet.start()
        log.info(
            "serving bundle %s on %s, store %s",
            recommender.bundle.bundle_id,
            recommender.bundle.provider,
            store.state,
        )
        return state

    async def close(self) -> None:
        """Stop following the fleet, then batching, then the store (which writes out the spool), each
        within ``CLOSE_STEP_S``: shutdown always ends, and a part that hung is named in the log."""
        if self.fleet is not None:
            await finish_within("the fleet follower", self.fleet.stop(), CLOSE_STEP_S)
        await finish_within("the batcher", self.batcher.stop(), CLOSE_STEP_S)
        await finish_within("the store", self.store.close(), CLOSE_STEP_S)
        gc.unfreeze()  # the bundle is no longer needed: let the collector have it

    @staticmethod
    def _load(
        settings: Settings, path: Path, serving: LoadedBundle | None = None, cpu_share: float | None = None
    ) -> Recommender:
        """Load, verify and warm a bundle: one request of the default size runs through every graph
        here, off the serving path, so a graph that cannot run is refused like any other bad bundle
        and the first requests served do not pay for onnxruntime's first-run allocations.
        ``serving``: see ``load_bundle``; ``cpu_share``: the calling thread's ``Pace`` (a reload)."""
        pace = Pace(cpu_share) if cpu_share is not None else None
        threads = DecodingLayout.for_cpus(cpu_limit()).threads
        bundle = load_bundle(path, settings.provider_list, threads, pace, serving)
        recommender = Recommender(bundle, pause=pace)
        if pace is not None:
            pace()
        decoding = bundle.manifest.decoding
        try:
            recommender.recommend([Query(history=[0], k=min(decoding.k, decoding.beam), beam=decoding.beam)])
        except Exception as exc:  # onnxruntime raises its own untyped errors
            raise BundleError(f"{path}: a warm-up request failed ({exc})") from exc
        return recommender

    async def _attach(self, recommender: Recommender) -> None:
        """Publish the bundle's tables and bring in the cold-start items other replicas registered."""
        bundle = recommender.bundle
        tables = await asyncio.to_thread(_published_tables, bundle)
        await self.store.start(bundle.bundle_id, tables)
        await self.catch_up(recommender)

    async def catch_up(self, recommender: Recommender) -> None:
        """Insert the cold-start items registered (on any replica) since ``recommender`` last looked."""
        seen = self.cold_seen.get(recommender, 0)
        rows = await self.store.cold_items(recommender.bundle.bundle_id, seen)
        for row in rows:
            if row["item_id"] in recommender.bundle.catalogue.position:
                continue
            sid = np.array(row["codes"], dtype=np.int64)
            try:
                recommender.insert_item(row["item_id"], sid, row["title"], row["category_path"], row["tags"])
            except InvalidRequest as exc:  # cannot happen while every ID comes from the store
                log.error("cold-start item %r from the store not served: %s", row["item_id"], exc)
        self.cold_seen[recommender] = seen + len(rows)

    def bundle_dir(self, name: str | None) -> Path:
        """The directory ``/admin/reload`` may load: the configured bundle, or a sub-directory of
        ``bundle_root`` named by a plain name. Callers never pass a path, so no request can make the
        service read an arbitrary file."""
        if name is None:
            return self.settings.bundle_path
        root = self.settings.bundle_root
        if root is None:
            raise InvalidRequest("bundle: naming a bundle needs SIDREC_BUNDLE_ROOT on the service")
        path = (root / name).resolve()
        if path.parent != root.resolve() or not path.is_dir():
            raise InvalidRequest(f"bundle: no bundle named {name!r} under the bundle root")
        return path

    async def reload(self, name: str | None, announce: bool = True) -> tuple[str, str]:
        """Load, verify and warm another bundle, then swap atomically; queued requests finish on the
        old one, and the old bundle serves on while the new one loads. ``announce``: name it in the
        store as the fleet's bundle, which the other replicas then load (``service.fleet``).

        A bundle that fails verification is refused with one log line naming the fault (with its full
        path, for the operator); the client gets the same reason without server paths, and the old
        bundle keeps serving.
        """
        path = self.bundle_dir(name)
        async with self.reload_lock:
            try:
                fresh = await asyncio.to_thread(
                    self._load, self.settings, path, self.bundle, RELOAD_CPU_SHARE
                )
            except BundleError as exc:
                log.error("reload of %s refused, still serving %s: %s", path, self.bundle.bundle_id, exc)
                reason = str(exc).replace(f"{path}/", "").replace(str(path), "the bundle directory")
                raise BundleError(
                    f"bundle: {path.name!r} refused ({reason}); still serving {self.bundle.bundle_id}"
                ) from None
            await self._attach(fresh)
            previous, self.recommender = self.bundle.bundle_id, fresh
            freeze_heap()  # the old bundle goes with the last request that holds it
        log.info("reloaded: %s -> %s", previous, fresh.bundle.bundle_id)
        if announce:
            pointer = {"bundle": name, "bundle_id": fresh.bundle.bundle_id, "at": time.time()}
            await self.store.set_fleet_bundle(pointer)
            if self.fleet is not None:  # this replica is where the fleet is going
                self.fleet.wanted, self.fleet.error = fresh.bundle.bundle_id, None
                self.metrics.bundle_in_sync.set(1)
        return previous, fresh.bundle.bundle_id

    @property
    def bundle(self) -> LoadedBundle:
        return self.recommender.bundle

    # ---------------------------------------------------------------------------- recommending
    async def _query(self, recommender: Recommender, request: RecommendRequest) -> tuple[Query, list[str]]:
        """The model's query, and the history items the bundle does not know (skipped, each once)."""
        decoding = recommender.bundle.manifest.decoding
        beam = request.beam if request.beam is not None else max(decoding.beam, request.k)
        if request.k > decoding.max_k or beam > decoding.max_beam:
            raise InvalidRequest(
                f"k/beam: this bundle allows k <= {decoding.max_k} and beam <= {decoding.max_beam}"
            )
        known = recommender.bundle.catalogue.position
        items, whose = request.history, "history: none of its items are"
        if not items:
            user = request.user_id
            assert user is not None  # the schema requires one of them
            items, whose = await self.store.history(user), f"user_id: none of {user!r}'s events are"
            if not items:
                raise InvalidRequest(f"user_id: {user!r} has no events; send a history")
        history = [known[i] for i in items if i in known]  # items of an older bundle are skipped
        if not history:
            raise InvalidRequest(f"{whose} in this bundle's catalogue")
        ignored = list(dict.fromkeys(i for i in items if i not in known))
        tag_path = request.filter.tag_path if request.filter else None
        if tag_path is not None:
            recommender.filter_rows(tag_path, recommender.snapshot)  # fail fast, before batching
        query = Query(
            history, request.k, beam, request.exclude_seen, tag_path, request.explain, request.grounding
        )
        return query, ignored

    def _response(
        self, recommender: Recommender, query: Query, hits: list[Recommendation]
    ) -> RecommendResponse:
        catalogue = recommender.bundle.catalogue
        used = min(len(query.history), recommender.history_length)
        groundings: list[GroundingOut | None] = [None] * len(hits)
        if query.grounding:
            groundings = [*self._groundings(recommender, query.history[len(query.history) - used :], hits)]
        items = [
            RecommendedItem(
                item_id=catalogue.item_ids[hit.item],
                score=hit.score,
                codes=list(hit.codes),
                tag_path=_tags(hit.tag_path) if query.explain else None,
                category_path=catalogue.category_paths[hit.item],
                title=catalogue.titles[hit.item],
                grounding=grounding,
            )
            for hit, grounding in zip(hits, groundings, strict=True)
        ]
        return RecommendResponse(bundle_id=recommender.bundle.bundle_id, items=items, history_used=used)

    @staticmethod
    def _groundings(
        recommender: Recommender, history: list[int], hits: list[Recommendation]
    ) -> list[GroundingOut]:
        """Each hit's grounding (``service.explanations.ground``) over the history the model read.
        Rows only ever get appended, so the current snapshot holds every row of an older one."""
        catalogue, snapshot = recommender.bundle.catalogue, recommender.snapshot
        return [
            GroundingOut(
                shared_levels=found.shared_levels,
                tag_path=[t.tag for t in snapshot.explanations[hit.item][: found.shared_levels]],
                history=[
                    HistoryItem(item_id=catalogue.item_ids[r], title=catalogue.titles[r])
                    for r in found.history
                ],
            )
            for hit, found in zip(hits, ground(snapshot.sids, history, [h.item for h in hits]), strict=True)
        ]

    async def recommend(self, request: RecommendRequest) -> RecommendResponse:
        """Answer from one bundle, even across a reload, by the request's deadline or not at all
        (a full queue refuses at once: ``MicroBatcher``)."""
        deadline = time.perf_counter() + self.settings.request_timeout_ms / 1000
        recommender = self.recommender  # one bundle for the whole request, even across a reload
        query, ignored = await self._query(recommender, request)
        key = None
        if self.settings.cache_ttl_s > 0:
            digest = hashlib.sha256(
                json.dumps([query.__dict__, recommender.snapshot.n_items]).encode()
            ).hexdigest()
            key = f"{recommender.bundle.bundle_id}:{digest[:32]}"
            cached = await self.store.cache_get(key)
            if cached is not None:
                self.metrics.cache_hits.inc()
                answer = RecommendResponse.model_validate_json(cached)
                return answer.model_copy(update={"cached": True, "ignored_history": ignored})
        hits = await self.batcher.submit(recommender, query, deadline)
        response = self._response(recommender, query, hits)
        if key is not None:
            await self.store.cache_set(key, response.model_dump_json().encode(), self.settings.cache_ttl_s)
        return response.model_copy(update={"ignored_history": ignored})

    # --------------------------------------------------------------------------------- events
    async def record(self, user_id: str, item_ids: list[str]) -> int:
        known = self.recommender.bundle.catalogue.position
        for i, item_id in enumerate(item_ids):
            if item_id not in known:
                raise InvalidRequest(f"item_ids[{i}]: unknown item {item_id!r}")
        return await self.store.append(user_id, item_ids)

    # ---------------------------------------------------------------------------------- items
    def item(self, item_id: str) -> ItemInfo:
        recommender = self.recommender
        row = recommender.bundle.catalogue.position.get(item_id)
        if row is None:
            raise UnknownItem(item_id)
        return self._item_info(recommender, row)

    def items(self, limit: int, offset: int) -> tuple[int, list[ItemInfo]]:
        recommender = self.recommender
        total = recommender.snapshot.n_items
        rows = range(offset, min(offset + limit, total))
        return total, [self._item_info(recommender, row) for row in rows]

    def _item_info(self, recommender: Recommender, row: int) -> ItemInfo:
        catalogue, snapshot = recommender.bundle.catalogue, recommender.snapshot
        return ItemInfo(
            item_id=catalogue.item_ids[row],
            index=row,
            title=catalogue.titles[row],
            category_path=catalogue.category_paths[row],
            codes=snapshot.sids[row].tolist(),
            tag_path=_tags(snapshot.explanations[row]),
            cold_start=row >= recommender.bundle.manifest.n_items,
        )

    async def register(self, item_id: str, body: ItemUpsert) -> ItemInfo:
        """Cold start: tokenise the embedding (sent, or made from ``text``, else the title, by the
        bundle's text encoder as training made the catalogue's); the store gives the item an ID unique
        in the whole fleet (the other replicas read it from there: ``service.fleet``)."""
        recommender = self.recommender
        encoder = recommender.bundle.text_encoder
        if body.embedding is not None:
            embedding = np.asarray(body.embedding, dtype=np.float64)
        elif encoder is not None and (body.text or body.title):
            embedding = encoder.encode(body.text or body.title).astype(np.float64)
        else:
            reason = "this bundle carries no text encoder" if body.text or body.title else "no text either"
            raise InvalidRequest(f"embedding: required ({reason}); send the item's embedding")
        if item_id in recommender.bundle.catalogue.position:
            raise InvalidRequest(f"item_id: {item_id!r} is already in the catalogue")
        codes, tags = recommender.tokenize(embedding)
        snapshot, levels = recommender.snapshot, recommender.levels
        taken = snapshot.sids[(snapshot.sids[:, :levels] == codes).all(axis=1), levels]  # under the tuple
        record = {
            "item_id": item_id,
            "codes": codes.tolist(),
            "title": body.title,
            "category_path": body.category_path,
            "tags": tags,
            "added_at": time.time(),
        }
        record = await self.store.register_item(
            recommender.bundle.bundle_id, record, sorted(set(taken.tolist())), recommender.codebook_size
        )
        row = recommender.bundle.catalogue.position.get(item_id)  # the follower may have been first
        if row is None:
            sid = np.array(record["codes"], dtype=np.int64)
            row = recommender.insert_item(item_id, sid, body.title, body.category_path, tags)
        return self._item_info(recommender, row)
