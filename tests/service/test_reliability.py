"""Reliability and security: Redis outages lose no accepted event, bad bundles never replace a good
one, reloads under load fail nothing, writes need the key, nothing is unpickled, expired work never
reaches the model, and a persistent Redis keeps histories across a restart.

Each test starts what it breaks (its own ``redis-server`` on a free port, its own bundle copies).
"""

from __future__ import annotations

import asyncio
import gc
import json
import logging
import random
import re
import shutil
import time
import weakref
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import onnx
import pytest
import redis
from fastapi.testclient import TestClient

from service.app import create_app
from service.batcher import MicroBatcher
from service.bundle import Pace, load_bundle
from service.errors import DeadlineExceeded
from service.manifest import SCHEMA_VERSION, sha256_file
from service.metrics import ServiceMetrics
from service.recommender import Query, Recommender
from service.store import Backoff, RedisStore
from tests.service.conftest import API_KEY, free_port, settings_for, start_redis_server
from tests.training.export.tiny_run import TEXT_ENCODER, TinyRun

REPO = Path(__file__).resolve().parents[2]
KEY = {"X-API-Key": API_KEY}


def item_ids(client: TestClient, n: int) -> list[str]:
    return [row["item_id"] for row in client.get("/items", params={"limit": n}).json()["items"]]


def metric(client: TestClient, name: str) -> float:
    match = re.search(rf"^{name} ([0-9.e+-]+)$", client.get("/metrics").text, re.MULTILINE)
    assert match, name
    return float(match.group(1))


def wait_for(condition, seconds: float = 15.0) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.05)


# ------------------------------------------------------------------------------------------ Redis
def test_backoff_grows_exponentially_with_jitter_and_a_cap() -> None:
    backoff, rng = Backoff(initial=0.05, cap=2.0), random.Random(0)
    delays = [backoff.delay(n, rng) for n in range(10)]
    for n, delay in enumerate(delays):
        ceiling = min(2.0, 0.05 * 2**n)
        assert ceiling / 2 <= delay <= ceiling


def test_outage_buffers_events_serves_from_memory_and_flushes_in_order(
    tiny_run: TinyRun, tmp_path: Path
) -> None:
    port = free_port()
    server = start_redis_server(port, tmp_path, persistent=True)
    settings = settings_for(
        tiny_run.bundle,
        redis_url=f"redis://127.0.0.1:{port}/0",
        redis_key_prefix="t",
        event_buffer_size=6,
        spool_dir=tmp_path / "spool",
    )
    try:
        with TestClient(create_app(settings)) as client:
            items = item_ids(client, 10)
            assert client.post(
                "/events", json={"user_id": "u", "item_ids": items[:2]}, headers=KEY
            ).is_success
            assert client.post("/recommend", json={"user_id": "u", "k": 3}).status_code == 200
            server.terminate()
            server.wait(10)
            down_since = time.monotonic()
            accepted = []
            for item in items[2:8]:  # fills the buffer of 6 events exactly
                response = client.post("/events", json={"user_id": "u", "item_id": item}, headers=KEY)
                assert response.status_code == 200 and response.json()["store"] == "degraded"
                accepted.append(item)
            refused = client.post("/events", json={"user_id": "u", "item_id": items[8]}, headers=KEY)
            assert refused.status_code == 503 and refused.headers["Retry-After"] == "2"
            assert "SIDREC_EVENT_BUFFER_SIZE" in refused.json()["detail"]
            assert metric(client, "sidrec_event_buffer_events") == 6
            assert metric(client, "sidrec_events_refused_total") == 1
            assert client.get("/readyz").json()["status"] == "degraded"
            # every kind of recommendation keeps working: explicit history, and a user from memory
            assert client.post("/recommend", json={"history": items[:3], "k": 3}).status_code == 200
            by_user = client.post("/recommend", json={"user_id": "u", "k": 3})
            assert by_user.status_code == 200 and by_user.json()["history_used"] == 8
            unknown = client.post("/recommend", json={"user_id": "stranger", "k": 3})
            assert unknown.status_code == 503 and "Retry-After" in unknown.headers
            time.sleep(2.0)
            server = start_redis_server(port, tmp_path, persistent=True)
            wait_for(lambda: client.get("/readyz").json()["status"] == "ready")
            outage_s = time.monotonic() - down_since
            stored = [s.decode() for s in redis.Redis(port=port).lrange("t:history:u", 0, -1)]
            assert stored == items[:2] + accepted, "every accepted event, in order, none refused"
            assert metric(client, "sidrec_event_buffer_events") == 0
            assert metric(client, "sidrec_events_flushed_total") == 6
            attempts = metric(client, "sidrec_redis_reconnect_attempts_total")
            assert 2 <= attempts <= 4 + outage_s / 0.5, (
                f"{attempts} attempts in {outage_s:.1f} s: no backoff?"
            )
    finally:
        server.terminate()
        server.wait(10)


def test_persistent_redis_keeps_histories_across_a_restart(tiny_run: TinyRun, tmp_path: Path) -> None:
    port = free_port()
    server = start_redis_server(port, tmp_path, persistent=True)
    settings = settings_for(tiny_run.bundle, redis_url=f"redis://127.0.0.1:{port}/0", redis_key_prefix="p")
    try:
        with TestClient(create_app(settings)) as client:
            items = item_ids(client, 30)
            histories = {f"user-{n}": items[n : n + 5] for n in range(20)}
            for user, history in histories.items():
                assert client.post(
                    "/events", json={"user_id": user, "item_ids": history}, headers=KEY
                ).is_success
        server.terminate()  # SIGTERM: Redis flushes its append-only file and exits
        assert server.wait(10) == 0
        assert (tmp_path / "appendonlydir").is_dir()
        server = start_redis_server(port, tmp_path, persistent=True)
        with TestClient(create_app(settings)) as client:
            for user, history in histories.items():
                stored = redis.Redis(port=port).lrange(f"p:history:{user}", 0, -1)
                assert [s.decode() for s in stored] == history
                by_user = client.post("/recommend", json={"user_id": user, "k": 3, "exclude_seen": True})
                assert by_user.status_code == 200
                assert not {i["item_id"] for i in by_user.json()["items"]} & set(history)
    finally:
        server.terminate()
        server.wait(10)


# ----------------------------------------------------------------------------------------- bundles
def _rewrite_manifest(bundle: Path, edit) -> None:
    manifest = json.loads((bundle / "manifest.json").read_text())
    edit(manifest)
    (bundle / "manifest.json").write_text(json.dumps(manifest))


def _bad_bundles(source: Path, root: Path) -> dict[str, str]:
    """Broken copies of ``source`` under ``root``: name -> what the refusal must say."""
    made = {}

    def copy(name: str) -> Path:
        shutil.copytree(source, root / name)
        return root / name

    sids = copy("checksum") / "sids.npy"
    np.save(sids, np.load(sids)[::-1].copy())
    made["checksum"] = "sids.npy: sha256"

    (copy("missing") / "tags.json").unlink()
    made["missing"] = "tags.json: missing"

    bundle = copy("inputs")
    model = onnx.load(bundle / "generator_encoder.onnx")
    old = model.graph.input[0].name
    for node in model.graph.node:
        node.input[:] = ["renamed_input" if name == old else name for name in node.input]
    model.graph.input[0].name = "renamed_input"
    onnx.save(model, bundle / "generator_encoder.onnx")
    digest = sha256_file(bundle / "generator_encoder.onnx")
    _rewrite_manifest(bundle, lambda m: m["graphs"]["generator_encoder"].update(sha256=digest))
    made["inputs"] = "has inputs ['renamed_input'"

    _rewrite_manifest(copy("newer"), lambda m: m.update(schema_version=SCHEMA_VERSION + 1))
    made["newer"] = f"schema_version {SCHEMA_VERSION + 1} is newer"

    bundle = copy("pickled")  # an object array can only be read by unpickling: it must be refused
    np.save(bundle / "sids.npy", np.array([{"x": 1}], dtype=object), allow_pickle=True)
    digest = sha256_file(bundle / "sids.npy")
    _rewrite_manifest(bundle, lambda m: m["tables"]["sids"].update(sha256=digest))
    made["pickled"] = "unreadable table"
    return made


def test_bad_bundles_are_refused_and_the_old_one_keeps_serving(
    tiny_run: TinyRun, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    root = tmp_path / "bundles"
    root.mkdir()
    bad = _bad_bundles(tiny_run.bundle, root)
    with TestClient(create_app(settings_for(tiny_run.bundle, bundle_root=root))) as client:
        serving = client.get("/v1/model").json()["bundle_id"]
        history = item_ids(client, 3)
        for name, reason in bad.items():
            caplog.clear()
            with caplog.at_level(logging.ERROR, logger="sidrec.service"):
                response = client.post("/admin/reload", json={"bundle": name}, headers=KEY)
            assert response.status_code == 409, (name, response.text)
            detail = response.json()["detail"]
            assert reason in detail and f"still serving {serving}" in detail, (name, detail)
            assert str(tmp_path) not in detail, "no server path in the answer"
            logged = [r.getMessage() for r in caplog.records if "refused, still serving" in r.getMessage()]
            assert len(logged) == 1 and reason in logged[0] and str(root / name) in logged[0]
            answer = client.post("/recommend", json={"history": history, "k": 3})
            assert answer.status_code == 200 and answer.json()["bundle_id"] == serving
        for path in ("..", "../bundles", "/etc", "a/b", "~root"):
            refused = client.post("/admin/reload", json={"bundle": path}, headers=KEY)
            assert refused.status_code == 422 and refused.json()["detail"].startswith("bundle")
        legacy = client.post("/admin/reload", json={"bundle_path": "/etc"}, headers=KEY)
        assert legacy.status_code == 422 and "bundle_path" in legacy.text
        assert client.get("/v1/model").json()["bundle_id"] == serving


def test_service_never_unpickles() -> None:
    """Bundles are ONNX, JSON and numpy without pickle: no loader in service/ can run pickled code."""
    for path in sorted((REPO / "service").glob("*.py")):
        source = path.read_text()
        for banned in ("import pickle", "joblib", "torch.load", "allow_pickle=True"):
            assert banned not in source, f"{path.name}: {banned}"
        # Python's eval/exec, not a method such as Redis's EVAL of a Lua script (``client.eval(...)``)
        assert not re.search(r"(?<![\w.])(eval|exec)\(", source), f"{path.name}: eval/exec"
        for call in re.findall(r"np\.load\([^)]*\)", source):
            assert "allow_pickle=False" in call, f"{path.name}: {call}"


def test_reload_under_concurrent_requests_fails_nothing(tiny_run: TinyRun, tmp_path: Path) -> None:
    from training.export.bundle import BundleInputs, CatalogueRow, export_bundle

    root = tmp_path / "bundles"
    shutil.copytree(tiny_run.bundle, root / "a")
    dataset = tiny_run.dataset
    export_bundle(  # the same run exported again: a second bundle id
        BundleInputs(
            catalogue=[
                CatalogueRow(item.item_id, item.title, list(item.category_path), dataset.tag_ids[i].tolist())
                for i, item in enumerate(dataset.items)
            ],
            tag_levels=dataset.tags.levels,
            sids=tiny_run.sids,
            tokenizer=tiny_run.tokenizer,
            embedding_dim=tiny_run.embeddings.shape[1],
            generator=tiny_run.generator,
            text_encoder=TEXT_ENCODER,
            item_texts=dataset.item_texts(),
        ),
        root / "b",
    )
    ids = {json.loads((root / n / "manifest.json").read_text())["bundle_id"] for n in ("a", "b")}
    assert len(ids) == 2
    replaced: list[weakref.ref[Recommender]] = []
    gc.disable()  # what a reload replaces must go by reference counting alone (service.memory)
    try:
        with TestClient(create_app(settings_for(root / "a", bundle_root=root))) as client:
            service = client.app.state.service  # type: ignore[attr-defined]
            history = item_ids(client, 4)
            assert client.post("/events", json={"user_id": "u", "item_ids": history}, headers=KEY).is_success
            encoder = service.bundle.text_encoder
            done = False

            def hammer(n: int) -> list[tuple[int, str]]:
                answers = []
                body = {"history": history, "k": 5} if n % 2 else {"user_id": "u", "k": 5}
                while not done or not answers:
                    response = client.post("/recommend", json=body)
                    answers.append((response.status_code, response.json().get("bundle_id", "")))
                return answers

            with ThreadPoolExecutor(6) as pool:
                futures = [pool.submit(hammer, n) for n in range(6)]
                for name in ("b", "a", "b", "a", "b", "a", "b"):
                    replaced.append(weakref.ref(service.recommender))
                    reloaded = client.post("/admin/reload", json={"bundle": name}, headers=KEY)
                    assert reloaded.status_code == 200, reloaded.text
                done = True
                answers = [answer for future in futures for answer in future.result()]
            # one export's bundles share the text encoder: a reload takes it rather than read it again
            assert service.bundle.text_encoder is encoder
            assert [ref() is None for ref in replaced] == [True] * len(replaced), "a replaced bundle leaks"
            assert gc.get_freeze_count() > 0, "the heap stays frozen across reloads"
    finally:
        gc.enable()
    assert {status for status, _ in answers} == {200}
    assert {bundle for _, bundle in answers} <= ids and len(answers) >= 12


def test_a_paced_thread_takes_at_most_its_share_of_a_cpu() -> None:
    """``Pace``, which a reload loads under: whatever the machine does, it sleeps three seconds for
    each second of CPU at a quarter share."""
    pace = Pace(0.25)
    started, cpu = time.perf_counter(), time.thread_time()
    while time.thread_time() - cpu < 0.1:
        sum(range(10_000))
        pace()
    wall, used = time.perf_counter() - started, time.thread_time() - cpu
    assert used / wall <= 0.26, (used, wall)


# ------------------------------------------------------------------------------------------ access
def test_writes_need_the_key_and_cors_is_off(tiny_run: TinyRun, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.DEBUG), TestClient(create_app(settings_for(tiny_run.bundle))) as client:
        item = item_ids(client, 1)[0]
        writes = [
            ("put", f"/items/new-{n}", {"embedding": tiny_run.embeddings[0].tolist()}) for n in range(1)
        ] + [("post", "/events", {"user_id": "u", "item_id": item}), ("post", "/admin/reload", None)]
        wrong_keys = [{}, {"X-API-Key": ""}, {"X-API-Key": API_KEY[:-1]}, {"X-API-Key": b"\xe9" * 24}]
        for method, url, body in writes:
            for headers in wrong_keys:
                response = client.request(method, url, json=body, headers=headers)
                assert response.status_code == 401 and response.json()["detail"].startswith("X-API-Key")
            assert client.request(method, url, json=body, headers=KEY).status_code == 200
        preflight = client.options(
            "/recommend",
            headers={"Origin": "https://evil.example", "Access-Control-Request-Method": "POST"},
        )
        assert "access-control-allow-origin" not in preflight.headers
        plain = client.get("/healthz", headers={"Origin": "https://evil.example"})
        assert "access-control-allow-origin" not in plain.headers
        public = client.get("/v1/model").text + client.get("/metrics").text + client.get("/openapi.json").text
        assert API_KEY not in public and str(tiny_run.bundle.resolve()) not in public
    assert API_KEY not in caplog.text, "the key is never logged"
    assert "compare_digest" in (REPO / "service" / "deps.py").read_text()


def test_cors_and_open_events_only_when_configured(tiny_run: TinyRun) -> None:
    settings = settings_for(tiny_run.bundle, cors_origins="https://shop.example", events_need_key=False)
    with TestClient(create_app(settings)) as client:
        item = item_ids(client, 1)[0]
        assert client.post("/events", json={"user_id": "u", "item_id": item}).status_code == 200
        assert client.post("/admin/reload").status_code == 401
        ok = client.get("/healthz", headers={"Origin": "https://shop.example"})
        assert ok.headers["access-control-allow-origin"] == "https://shop.example"
        other = client.get("/healthz", headers={"Origin": "https://evil.example"})
        assert "access-control-allow-origin" not in other.headers
    with TestClient(create_app(settings_for(tiny_run.bundle, api_key=None))) as client:
        closed = client.post("/admin/reload", headers=KEY)
        assert closed.status_code == 401 and "SIDREC_API_KEY" in closed.text


# ------------------------------------------------------------------------------- overload, limits
class CountingRecommender(Recommender):
    """The real recommender, counting the queries that reach the model."""

    calls = 0

    def recommend(self, queries, on_step=None):
        CountingRecommender.calls += len(queries)
        return super().recommend(queries, on_step)


def test_expired_requests_never_reach_the_model(tiny_run: TinyRun) -> None:
    recommender = CountingRecommender(load_bundle(tiny_run.bundle, ["CPUExecutionProvider"], threads=1))
    metrics = ServiceMetrics()

    async def run() -> list[object]:
        batcher = MicroBatcher(max_batch_size=8, max_wait_ms=20, queue_size=64, metrics=metrics)
        batcher.start()
        now = time.perf_counter()
        query = Query(history=[1, 2, 3], k=3, beam=5)
        outcomes = await asyncio.gather(
            batcher.submit(recommender, query, now + 0.005),  # expires while the batch fills (20 ms)
            batcher.submit(recommender, query, now + 10),
            return_exceptions=True,
        )
        await batcher.stop()
        return outcomes

    expired, served = asyncio.run(run())
    assert isinstance(expired, DeadlineExceeded) and isinstance(served, list) and len(served) == 3
    assert CountingRecommender.calls == 1
    assert metrics.expired._value.get() == 1


def test_chunked_bodies_over_the_limit_are_413(tiny_run: TinyRun) -> None:
    with TestClient(create_app(settings_for(tiny_run.bundle, max_body_bytes=4096))) as client:

        def chunks():
            for _ in range(10):
                yield b" " * 1000

        response = client.post("/recommend", content=chunks(), headers={"content-type": "application/json"})
        assert response.status_code == 413 and "SIDREC_MAX_BODY_BYTES" in response.text


def test_one_outage_is_one_degraded_period_not_one_per_pooled_connection(tmp_path: Path) -> None:
    """After a restart every pooled connection is stale; the reconnect must drop them all at once."""
    port = free_port()
    server = start_redis_server(port, tmp_path)
    metrics = ServiceMetrics()

    async def scenario() -> tuple[str, float, float]:
        store = RedisStore(f"redis://127.0.0.1:{port}/0", "t", 50, metrics, spool_dir=tmp_path / "spool")
        await store.start("b", {"sids": b"x"})
        appends = [store.append(f"u{i}", ["a"]) for i in range(20)]
        await asyncio.gather(*appends)  # concurrent: the pool now holds many connections
        nonlocal server
        server.terminate()
        server.wait(10)
        server = start_redis_server(port, tmp_path)
        await store.append("u0", ["b"])  # notices the outage (a stale connection)
        for _ in range(200):
            if store.state == "ok":
                break
            await asyncio.sleep(0.05)
        errors_after_recovery = metrics.store_errors._value.get()
        await asyncio.gather(*(store.append(f"u{i}", ["c"]) for i in range(20)))
        state = store.state
        await store.close()
        return state, errors_after_recovery, metrics.store_errors._value.get()

    try:
        state, before, after = asyncio.run(scenario())
    finally:
        server.terminate()
        server.wait(10)
    assert state == "ok"
    assert after == before, "a stale pooled connection flipped the store back to degraded"
