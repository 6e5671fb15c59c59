"""The service on a real three-master Redis Cluster (``redis+cluster://``; ``benchmarks.redis_cluster``).

The store's tests from ``test_app`` and the replica tests from ``test_fleet`` run here a second time,
with ``redis_target`` pointing at the cluster: every transaction and script they drive would fail
with CROSSSLOT if its keys were not in one slot. Then a master is killed mid-run: recommendations
are still answered (degraded, from the mirror and the request) and every acknowledged event is in
the cluster once the master is back.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from fastapi.testclient import TestClient
from redis.crc import key_slot

from benchmarks.redis_cluster import LoopbackCluster
from service.app import create_app
from tests.service.conftest import API_KEY, RedisTarget, require_binaries, settings_for
from tests.service.test_app import (  # noqa: F401  (collected again, here against the cluster)
    test_a_command_redis_refuses_gets_503_and_is_not_taken_for_an_outage,
    test_cold_start_item,
    test_events_then_recommend_by_user,
    test_result_cache_in_redis,
)
from tests.service.test_fleet import (  # noqa: F401
    test_a_reload_moves_the_fleet_and_a_replica_that_cannot_follow_says_so,
    test_concurrent_registrations_on_two_replicas_get_distinct_ids,
    test_events_written_through_one_replica_are_read_by_the_other,
    wait_for,
)
from tests.training.export.tiny_run import TinyRun

KEY = {"X-API-Key": API_KEY}


def _cluster(workdir: Path) -> LoopbackCluster:
    require_binaries("redis-server", "redis-cli", reason="no Redis Cluster to start")
    return LoopbackCluster(workdir).start()


@pytest.fixture(scope="session")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LoopbackCluster]:
    """One cluster for the session's tests that leave it whole."""
    started = _cluster(tmp_path_factory.mktemp("cluster"))
    yield started
    started.stop()


@pytest.fixture
def redis_target(cluster: LoopbackCluster) -> Iterator[RedisTarget]:
    """Overrides the plain Redis of ``conftest``: the tests imported above run on the cluster."""
    prefix = f"sidrec-test-{uuid.uuid4().hex[:8]}"
    client = cluster.client()
    yield RedisTarget(cluster.url, prefix, client)  # type: ignore[arg-type]  # same commands
    for key in list(client.scan_iter(f"{prefix}:*")):
        client.delete(key)
    client.close()


@pytest.fixture
def client(tiny_run: TinyRun, redis_target: RedisTarget) -> Iterator[TestClient]:
    """``conftest``'s app on the cluster, once its store is connected (a cluster client's first
    connections may time out on a loaded machine; it reconnects by itself)."""
    settings = settings_for(tiny_run.bundle, redis_url=redis_target.url, redis_key_prefix=redis_target.prefix)
    with TestClient(create_app(settings)) as test_client:
        wait_for(lambda: test_client.get("/readyz").json()["store"] == "ok", 20.0)
        yield test_client


def test_a_bundles_keys_share_one_slot(
    client: TestClient, tiny_run: TinyRun, redis_target: RedisTarget
) -> None:
    """What the transactions and scripts rely on: a bundle's tables and cold-start keys hash alike,
    and a cluster holds the keys of different bundles and users on different masters."""
    bundle_id = client.get("/v1/model").json()["bundle_id"]
    body = {"embedding": tiny_run.embeddings[7].tolist(), "title": "x"}
    assert client.put("/items/one-slot", json=body, headers=KEY).status_code == 200
    keys = [k.decode() for k in redis_target.client.scan_iter(f"{redis_target.prefix}:bundle:*")]
    names = {k.rsplit(":", 1)[1] for k in keys}
    assert {"manifest", "sids", "catalogue", "cold_ids", "cold_items", "cold_log"} <= names
    assert len({key_slot(k.encode()) for k in keys if f"{{{bundle_id}}}" in k}) == 1
    users = [f"{redis_target.prefix}:history:u{n}" for n in range(30)]
    assert len({key_slot(u.encode()) for u in users}) > 1


def test_a_master_killed_mid_run_keeps_answering_and_loses_no_acknowledged_event(
    tiny_run: TinyRun, tmp_path: Path
) -> None:
    lab = _cluster(tmp_path / "cluster")
    try:
        settings = settings_for(
            tiny_run.bundle, redis_url=lab.url, redis_key_prefix="kill", spool_dir=tmp_path / "spool"
        )
        items = [item.item_id for item in tiny_run.dataset.items[:40]]
        users = [f"u{n}" for n in range(24)]
        acknowledged: dict[str, list[str]] = {user: [] for user in users}
        with TestClient(create_app(settings)) as client:

            def send(round_: int) -> None:
                for n, user in enumerate(users):
                    item = items[(n + round_) % len(items)]
                    response = client.post("/events", json={"user_id": user, "item_ids": [item]}, headers=KEY)
                    assert response.status_code == 200, response.text
                    acknowledged[user].append(item)
                    by_user = client.post("/recommend", json={"user_id": user, "k": 3})
                    assert by_user.status_code == 200, by_user.text
                    explicit = client.post("/recommend", json={"history": acknowledged[user], "k": 3})
                    assert explicit.status_code == 200, explicit.text

            send(0)
            assert client.get("/readyz").json()["store"] == "ok"
            victim = lab.ports[1]
            lab.kill(victim)
            for round_ in range(1, 4):
                send(round_)
            assert client.get("/readyz").json()["status"] == "degraded"
            lab.start_node(victim)  # its append-only file brings its acknowledged writes back
            lab.wait_ok()
            wait_for(lambda: client.get("/readyz").json()["store"] == "ok", 20.0)
        stored = lab.client()
        for user, sent in acknowledged.items():
            history = [i.decode() for i in stored.lrange(f"kill:history:{user}", 0, -1)]
            assert history == sent, user
        stored.close()
    finally:
        lab.stop()


def test_a_plain_client_is_refused_by_the_cluster_so_the_url_form_matters(cluster: LoopbackCluster) -> None:
    """Why ``redis+cluster://`` exists: a plain client is sent MOVED for most keys."""
    plain = redis.Redis(port=cluster.ports[0])
    with pytest.raises(redis.exceptions.MovedError):  # redis-py strips "MOVED" from the message
        for n in range(20):
            plain.get(f"probe-{n}")
    plain.close()
