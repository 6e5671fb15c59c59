"""Two replicas (two real apps, lifespans running) sharing one real Redis agree on the catalogue, the
histories and the bundle (``service.fleet``, the store's ``REGISTER_ITEM``)."""

from __future__ import annotations

import asyncio
import shutil
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack, contextmanager
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient

from service.app import create_app
from service.errors import InvalidRequest
from service.metrics import ServiceMetrics
from service.state import ServiceState
from service.store import RedisStore
from tests.service.conftest import API_KEY, RedisTarget, settings_for
from tests.training.export.tiny_run import TinyRun

KEY = {"X-API-Key": API_KEY}


@contextmanager
def replicas(bundle: Path, redis: RedisTarget, n: int = 2, **overrides: object) -> Iterator[list[TestClient]]:
    settings = settings_for(bundle, redis_url=redis.url, redis_key_prefix=redis.prefix, **overrides)
    with ExitStack() as stack:
        clients = [stack.enter_context(TestClient(create_app(settings))) for _ in range(n)]
        for client in clients:  # on a loaded machine the first connection may time out: it reconnects
            wait_for(lambda c=client: c.get("/readyz").json()["store"] == "ok", 20.0)  # type: ignore[misc]
        yield clients


def service(client: TestClient) -> ServiceState:
    state: ServiceState = client.app.state.service  # type: ignore[attr-defined]
    return state


def wait_for(check: Callable[[], bool], seconds: float) -> float:
    """Seconds until ``check()`` holds; fails after ``seconds``."""
    started = time.monotonic()
    while not check():
        assert time.monotonic() - started < seconds, f"not within {seconds} s"
        time.sleep(0.01)
    return time.monotonic() - started


def test_an_item_registered_on_one_replica_is_served_by_the_other_within_a_second(
    tiny_run: TinyRun, redis_target: RedisTarget
) -> None:
    with replicas(tiny_run.bundle, redis_target) as (a, b):
        body = {"embedding": tiny_run.embeddings[3].tolist(), "title": "fresh", "category_path": ["New"]}
        registered = a.put("/items/fresh-1", json=body, headers=KEY)
        assert registered.status_code == 200, registered.text
        waited = wait_for(lambda: b.get("/items/fresh-1").status_code == 200, 1.0)
        seen_by_b = b.get("/items/fresh-1").json()
        assert seen_by_b["codes"] == registered.json()["codes"] and seen_by_b["cold_start"], waited
        hit = b.post(
            "/recommend",
            json={"history": ["fresh-1"], "k": 3, "exclude_seen": False, "filter": {"tag_path": ["New"]}},
        )
        assert [i["item_id"] for i in hit.json()["items"]] == ["fresh-1"]
        again = b.put("/items/fresh-1", json=body, headers=KEY)
        assert again.status_code == 422 and "already" in again.text


def test_concurrent_registrations_on_two_replicas_get_distinct_ids(
    tiny_run: TinyRun, redis_target: RedisTarget
) -> None:
    """200 registrations, half on each replica, crowded into few ID tuples so that they race for the
    same disambiguation codes: 200 items, 200 IDs, the same on both replicas."""
    with replicas(tiny_run.bundle, redis_target) as (a, b):
        recommender = service(a).recommender
        free = Counter({tuple(s[:2]): 16 for s in tiny_run.sids}) - Counter(
            tuple(s[:2]) for s in tiny_run.sids
        )
        bodies: list[dict] = []
        for embedding in tiny_run.embeddings:
            codes, _ = recommender.tokenize(embedding.astype(np.float64))
            room = free.pop(tuple(codes.tolist()), 0)
            bodies += [{"embedding": embedding.tolist(), "title": "new"}] * min(room, 200 - len(bodies))
            if len(bodies) == 200:
                break
        assert len(bodies) == 200

        def put(n: int) -> dict:
            response = (a, b)[n % 2].put(f"/items/race-{n}", json=bodies[n], headers=KEY)
            assert response.status_code == 200, response.text
            return response.json()

        with ThreadPoolExecutor(16) as pool:
            items = list(pool.map(put, range(200)))
        ids = {tuple(item["codes"]) for item in items}
        assert len(ids) == 200
        assert not ids & {tuple(s) for s in tiny_run.sids.tolist()}
        for replica in (a, b):
            state = service(replica)

            def caught_up(state: ServiceState = state) -> bool:
                return state.recommender.snapshot.n_items == len(tiny_run.sids) + 200

            wait_for(caught_up, 2.0)
            assert {tuple(s) for s in state.recommender.snapshot.sids[-200:].tolist()} == ids
        fleet_ids = redis_target.client.hlen(
            f"{redis_target.prefix}:bundle:{{{service(a).bundle.bundle_id}}}:cold_ids"
        )
        assert fleet_ids == 200


def test_events_written_through_one_replica_are_read_by_the_other(
    tiny_run: TinyRun, redis_target: RedisTarget
) -> None:
    with replicas(tiny_run.bundle, redis_target) as (a, b):
        items = [tiny_run.dataset.items[i].item_id for i in (5, 9, 11)]
        assert (
            a.post("/events", json={"user_id": "u-shared", "item_ids": items}, headers=KEY).status_code == 200
        )
        answer = b.post("/recommend", json={"user_id": "u-shared", "k": 3})
        assert answer.status_code == 200 and answer.json()["history_used"] == 3
        more = b.post("/events", json={"user_id": "u-shared", "item_ids": items[:1]}, headers=KEY)
        assert more.json()["history_length"] == 4


def test_a_replica_publishes_the_tables_other_tools_read_and_keeps_the_ranking_tables(
    tiny_run: TinyRun, redis_target: RedisTarget
) -> None:
    """The store holds the manifest, ID table, catalogue and tags byte for byte; the prefix index and
    the ranking tables, which only the serving process reads, are not uploaded at every (re)load."""
    with replicas(tiny_run.bundle, redis_target, n=1) as (client,):
        bundle = service(client).bundle
        base = f"{redis_target.prefix}:bundle:{{{bundle.bundle_id}}}:"
        stored = {k.decode().removeprefix(base) for k in redis_target.client.scan_iter(f"{base}*")}
        published = {"manifest": "manifest.json"} | {
            name: bundle.manifest.tables[name].file for name in ("sids", "catalogue", "tags")
        }
        for name, file in published.items():
            assert redis_target.client.get(base + name) == (tiny_run.bundle / file).read_bytes()
        assert stored.isdisjoint({"prefix_index", "item_table", "text_encoder"})


def test_a_reload_moves_the_fleet_and_a_replica_that_cannot_follow_says_so(
    tiny_run: TinyRun, redis_target: RedisTarget, tmp_path: Path
) -> None:
    """Reload on A naming bundle ``two``: B follows within 5 s while answering requests without a
    failure. A replica started later follows at start; one whose ``two`` is damaged keeps serving
    ``one`` and says so in /readyz and /metrics."""
    root, damaged = tmp_path / "root", tmp_path / "damaged"
    for where in (root, damaged):
        shutil.copytree(tiny_run.bundle, where / "one")
        shutil.copytree(tiny_run.dot_bundle, where / "two")
    (damaged / "two" / "catalogue.jsonl").write_text("{}\n")
    two = service_id(tiny_run.dot_bundle)
    with replicas(root / "one", redis_target, bundle_root=root) as (a, b):
        one = a.get("/v1/model").json()["bundle_id"]
        failures: list[str] = []
        stop = threading.Event()

        def load() -> None:
            request = {"history": [tiny_run.dataset.items[1].item_id], "k": 3}
            while not stop.is_set():
                response = b.post("/recommend", json=request)
                if response.status_code != 200:
                    failures.append(response.text)

        loader = threading.Thread(target=load)
        loader.start()
        try:
            reloaded = a.post("/admin/reload", json={"bundle": "two"}, headers=KEY)
            assert reloaded.status_code == 200 and reloaded.json()["bundle_id"] == two
            wait_for(lambda: b.get("/readyz").json()["bundle_id"] == two, 5.0)
        finally:
            stop.set()
            loader.join()
        assert failures == []
        assert b.get("/readyz").json() == {
            "status": "ready",
            "store": "ok",
            "bundle_id": two,
            "queue": 0,
            "fleet": {"bundle_id": two, "in_sync": True, "error": None},
        }
        with replicas(root / "one", redis_target, bundle_root=root, n=1) as (late,):
            assert late.get("/readyz").json()["bundle_id"] == two
        with replicas(damaged / "one", redis_target, bundle_root=damaged, n=1) as (lagging,):
            ready = lagging.get("/readyz").json()
            assert ready["status"] == "degraded" and ready["bundle_id"] == one
            assert not ready["fleet"]["in_sync"] and "catalogue" in ready["fleet"]["error"]
            assert str(damaged) not in ready["fleet"]["error"]
            assert "sidrec_bundle_in_sync 0.0" in lagging.get("/metrics").text
            assert (
                lagging.post("/recommend", json={"history": [tiny_run.dataset.items[1].item_id]}).status_code
                == 200
            )


def service_id(bundle: Path) -> str:
    import json

    return str(json.loads((bundle / "manifest.json").read_text())["bundle_id"])


def test_a_registration_retried_after_a_lost_reply_gets_its_own_id(redis_target: RedisTarget) -> None:
    """The client library retries a command whose reply timed out; the retry finds the item it has just
    registered and must answer with that ID, while a different item under a taken id stays refused."""
    row = {"item_id": "retried", "title": "new", "category_path": [], "tags": [], "codes": [3, 5]}

    async def scenario() -> tuple[dict, dict]:
        store = RedisStore(redis_target.url, redis_target.prefix, 50, ServiceMetrics())
        await store.start("b", {"sids": b"x"})
        try:
            first = await store.register_item("b", row, taken=[0], codebook_size=8)
            again = await store.register_item("b", row, taken=[0], codebook_size=8)
            with pytest.raises(InvalidRequest, match="already in the catalogue"):
                await store.register_item("b", {**row, "title": "another item"}, taken=[0], codebook_size=8)
            with pytest.raises(InvalidRequest, match="already in the catalogue"):
                await store.register_item("b", {**row, "codes": [3, 6]}, taken=[0], codebook_size=8)
        finally:
            await store.close()
        return first, again

    first, again = asyncio.run(scenario())
    assert first == again and first["codes"] == [3, 5, 1]
