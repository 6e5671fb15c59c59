"""Redis outages, overload and the import boundary: the service keeps answering and says so."""

from __future__ import annotations

import asyncio
import itertools
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient

from service.app import create_app
from service.batcher import MicroBatcher
from service.beam_search import Steps
from service.bundle import load_bundle
from service.metrics import ServiceMetrics
from service.recommender import Query, Recommender
from tests.service.conftest import API_KEY, free_port, settings_for, start_redis_server
from tests.training.export.tiny_run import TinyRun

REPO = Path(__file__).resolve().parents[2]


def some_history(client: TestClient) -> list[str]:
    return [row["item_id"] for row in client.get("/items", params={"limit": 3}).json()["items"]]


def test_dead_redis_degrades_but_serves(tiny_run: TinyRun, tmp_path: Path) -> None:
    settings = settings_for(
        tiny_run.bundle, redis_url=f"redis://127.0.0.1:{free_port()}/0", spool_dir=tmp_path / "spool"
    )
    with TestClient(create_app(settings)) as client:
        ready = client.get("/readyz").json()
        assert ready["status"] == "degraded" and ready["store"] == "degraded"
        history = some_history(client)
        assert client.post("/recommend", json={"history": history, "k": 3}).status_code == 200
        events = client.post(
            "/events", json={"user_id": "u", "item_ids": history}, headers={"X-API-Key": API_KEY}
        )
        assert events.status_code == 200 and events.json()["store"] == "degraded"
        by_user = client.post("/recommend", json={"user_id": "u", "k": 3})  # from the in-memory fallback
        assert by_user.status_code == 200 and by_user.json()["history_used"] == 3
        assert "sidrec_redis_up 0.0" in client.get("/metrics").text


def test_redis_restart_is_picked_up(tiny_run: TinyRun, tmp_path: Path) -> None:
    port = free_port()
    server = start_redis_server(port, tmp_path)
    settings = settings_for(
        tiny_run.bundle, redis_url=f"redis://127.0.0.1:{port}/0", spool_dir=tmp_path / "spool"
    )
    try:
        with TestClient(create_app(settings)) as client:
            assert client.get("/readyz").json()["store"] == "ok"
            server.terminate()
            server.wait(10)
            history = some_history(client)
            events = client.post(
                "/events", json={"user_id": "u", "item_ids": history}, headers={"X-API-Key": API_KEY}
            )
            assert events.status_code == 200 and events.json()["store"] == "degraded"
            assert client.get("/readyz").json()["status"] == "degraded"
            server = start_redis_server(port, tmp_path)
            deadline = time.monotonic() + 15
            while client.get("/readyz").json()["store"] != "ok":
                assert time.monotonic() < deadline, "did not reconnect within 15 s"
                time.sleep(0.1)
            assert client.post("/recommend", json={"history": history}).status_code == 200
    finally:
        server.terminate()
        server.wait(10)


def test_the_service_holds_two_batches_of_recommendations_and_refuses_the_rest_at_once(
    tiny_run: TinyRun,
) -> None:
    """By default at most two batches of recommendations are in the service at once, counted from their
    admission (before the body is read) to their answer: under a flood the rest get 429, and the
    admitted ones are answered. (How fast a refusal is, is timed by ``benchmarks/reliability.py``, on a
    service with a core of its own; here the client threads share the interpreter with the app.)"""
    settings = settings_for(tiny_run.bundle, max_batch_size=3)
    assert settings.queue_size is None and settings.queue_limit == 6
    assert settings_for(tiny_run.bundle, queue_size=9).queue_limit == 9
    with TestClient(create_app(settings)) as client:
        service = client.app.state.service  # type: ignore[attr-defined]
        history = some_history(client)
        seen: list[int] = []  # requests in the service whenever a batch decodes
        original = service.recommender.recommend

        def slow(batch: list[Query], on_step: object = None) -> list:
            seen.append(service.batcher.admitted)
            time.sleep(0.05)
            return original(batch, on_step)

        service.recommender.recommend = slow
        with ThreadPoolExecutor(12) as pool:
            answers = pool.map(lambda _: client.post("/recommend", json={"history": history}), range(48))
            statuses = [answer.status_code for answer in answers]
        metrics = client.get("/metrics").text
    assert set(statuses) == {200, 429} and max(seen) <= 6, (statuses, seen)
    assert f"sidrec_rejected_total {statuses.count(429):.1f}" in metrics  # every 429 is a counted refusal
    assert "sidrec_expired_total 0.0" in metrics  # none was refused late, after queueing past its deadline


def test_overload_is_429_with_retry_after(tiny_run: TinyRun) -> None:
    settings = settings_for(tiny_run.bundle, queue_size=1, max_batch_size=1)
    with TestClient(create_app(settings)) as client:
        history = some_history(client)
        with ThreadPoolExecutor(16) as pool:
            responses = list(
                pool.map(
                    lambda _: client.post("/recommend", json={"history": history, "beam": 60}), range(48)
                )
            )
    statuses = {r.status_code for r in responses}
    assert statuses == {200, 429}, statuses
    refused = next(r for r in responses if r.status_code == 429)
    assert refused.headers["Retry-After"] == "1" and "queue is full" in refused.text


def test_a_full_service_refuses_before_reading_the_body(tiny_run: TinyRun) -> None:
    """With the service full a recommendation is refused on its headers: even a malformed body gets
    429 (not 422), so refusing costs no parsing; other routes answer as usual, and once there is room
    again recommendations are parsed and answered. A ``/recommend/batch`` larger than the limit is
    admitted whole when there is room."""
    with TestClient(create_app(settings_for(tiny_run.bundle, queue_size=1))) as client:
        service = client.app.state.service  # type: ignore[attr-defined]
        malformed = {"content": b"{not json", "headers": {"content-type": "application/json"}}
        assert client.post("/recommend", **malformed).status_code == 422  # room: parsed, and invalid
        service.batcher.admitted += 1  # one recommendation in the service, as ShedEarly counts it
        for path in ("/recommend", "/recommend/batch"):
            refused = client.post(path, **malformed)
            assert refused.status_code == 429 and refused.headers["Retry-After"] == "1"
            assert refused.json() == {"detail": "request queue is full (SIDREC_QUEUE_SIZE 1); retry shortly"}
        assert client.get("/items", params={"limit": 1}).status_code == 200
        metrics = client.get("/metrics").text
        assert 'sidrec_request_latency_seconds_count{route="/recommend",status="429"} 1.0' in metrics
        assert "sidrec_rejected_total 2.0" in metrics
        service.batcher.admitted -= 1
        history = some_history(client)
        whole = client.post("/recommend/batch", json={"requests": [{"history": history, "k": 2}] * 64})
        assert [result["status"] for result in whole.json()["results"]] == [200] * 64
        assert service.batcher.admitted == 0


def test_service_never_imports_torch_or_training(tiny_run: TinyRun) -> None:
    code = (
        "import sys, service.app, service.__main__, service.bundle, service.recommender\n"
        "from service.app import create_app\n"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in {'torch', 'training'})\n"
        "assert not bad, bad\n"
    )
    subprocess.run([sys.executable, "-c", code], cwd=REPO, check=True, timeout=120)


def test_cli_refuses_a_tampered_bundle(tiny_run: TinyRun, tmp_path: Path) -> None:
    import shutil

    copy = tmp_path / "bundle"
    shutil.copytree(tiny_run.bundle, copy)
    sids = np.load(copy / "sids.npy")
    np.save(copy / "sids.npy", sids[::-1].copy())
    result = subprocess.run(
        [sys.executable, "-m", "service", "--bundle", str(copy)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2
    assert "refusing to serve" in result.stderr and "sids.npy: sha256" in result.stderr


def test_batch_workers_decode_batches_at_once(tiny_run: TinyRun) -> None:
    """With two workers a second batch starts while the first decodes (a barrier both must reach),
    and every caller still gets its own answer: the items it gets alone."""
    recommender = Recommender(load_bundle(tiny_run.bundle, ["CPUExecutionProvider"], threads=1))
    queries = [Query(history=[1 + i, 2 + i], k=5, beam=10) for i in range(4)]
    alone = [[hit.item for hit in recommender.recommend([q])[0]] for q in queries]
    both_inside = threading.Barrier(2, timeout=10)
    original = recommender.recommend

    def meets_the_other_batch(batch: list[Query], on_step: object = None) -> list:
        both_inside.wait()  # raises BrokenBarrierError if the batches ran one after the other
        return original(batch)

    recommender.recommend = meets_the_other_batch  # type: ignore[method-assign]

    async def two_batches() -> list[list]:
        batcher = MicroBatcher(
            max_batch_size=2, max_wait_ms=50, queue_size=8, metrics=ServiceMetrics(), workers=2
        )
        batcher.start()
        try:
            return list(await asyncio.gather(*(batcher.submit(recommender, q) for q in queries)))
        finally:
            await batcher.stop()

    answers = asyncio.run(two_batches())
    assert [[hit.item for hit in answer] for answer in answers] == alone


def test_decoding_on_the_event_loop_answers_as_a_thread_does_and_lets_the_loop_in_between_steps(
    tiny_run: TinyRun,
) -> None:
    recommender = Recommender(load_bundle(tiny_run.bundle, ["CPUExecutionProvider"], threads=1))
    queries = [Query(history=[1, 2, 3], k=5, beam=20), Query(history=[4, 5], k=3, beam=10)]
    expected = [[hit.item for hit in answer] for answer in recommender.recommend(queries)]
    ticks = 0  # how often another task got the event loop
    seen: list[int] = []  # ``ticks`` at each step of the decode
    original = recommender.recommend_steps

    def watched(batch: list[Query], on_step: object = None) -> Steps[list]:
        steps = original(batch)
        while True:
            seen.append(ticks)
            try:
                next(steps)
            except StopIteration as done:
                return done.value
            yield

    recommender.recommend_steps = watched  # type: ignore[method-assign]

    async def decode(in_loop: bool) -> list[list]:
        async def ticker() -> None:
            nonlocal ticks
            while True:
                ticks += 1
                await asyncio.sleep(0)

        batcher = MicroBatcher(
            max_batch_size=2, max_wait_ms=50, queue_size=8, metrics=ServiceMetrics(), in_loop=in_loop
        )
        batcher.start()
        tick = asyncio.get_running_loop().create_task(ticker())
        try:
            return list(await asyncio.gather(*(batcher.submit(recommender, q) for q in queries)))
        finally:
            tick.cancel()
            await batcher.stop()

    for in_loop in (False, True):
        seen.clear()  # (a thread runs the same steps, through ``recommend``)
        answers = asyncio.run(decode(in_loop))
        assert [[hit.item for hit in answer] for answer in answers] == expected
    levels = recommender.snapshot.index.id_length  # the code levels and the collision suffix
    assert len(seen) == levels + 2, "the encoder, each level and the end: a step each"
    assert all(later > earlier for earlier, later in itertools.pairwise(seen)), (
        f"the event loop ran nothing between two steps of the decode: {seen}"
    )


def test_batcher_refuses_zero_workers() -> None:
    with pytest.raises(ValueError, match="workers must be >= 1"):
        MicroBatcher(max_batch_size=2, max_wait_ms=1, queue_size=4, metrics=ServiceMetrics(), workers=0)
