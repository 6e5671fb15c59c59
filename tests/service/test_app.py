"""The real HTTP app on the tiny real bundle with the real Redis: wire contract, invariants, bad input."""

from __future__ import annotations

import json
from collections import Counter

import pytest
from fastapi.testclient import TestClient

from service.app import create_app
from service.errors import BundleError
from tests.service.conftest import API_KEY, RedisTarget, settings_for
from tests.training.export.tiny_run import TinyRun

KEY = {"X-API-Key": API_KEY}


def catalogue(tiny_run: TinyRun) -> dict[str, dict]:
    rows = [json.loads(line) for line in (tiny_run.bundle / "catalogue.jsonl").read_text().splitlines()]
    return {row["item_id"]: row for row in rows}


def history_ids(tiny_run: TinyRun, user: int) -> list[str]:
    split = tiny_run.dataset.split()
    return [tiny_run.dataset.items[i].item_id for i in split.test_history[user]]


def check_items(items: list[dict], rows: dict[str, dict], k: int) -> None:
    ids = [item["item_id"] for item in items]
    assert 1 <= len(ids) <= k
    assert len(set(ids)) == len(ids), "duplicates"
    scores = [item["score"] for item in items]
    assert scores == sorted(scores, reverse=True)
    for item in items:
        row = rows[item["item_id"]]  # exists in the catalogue
        assert item["title"] == row["title"] and item["category_path"] == row["category_path"]
        assert len(item["codes"]) == 3


def test_recommend_invariants(client: TestClient, tiny_run: TinyRun) -> None:
    rows = catalogue(tiny_run)
    for user in range(20):
        history = history_ids(tiny_run, user)
        response = client.post("/recommend", json={"history": history, "k": 10})
        assert response.status_code == 200, response.text
        body = response.json()
        assert body["bundle_id"].startswith("sidrec-")
        check_items(body["items"], rows, 10)
        assert not set(history) & {item["item_id"] for item in body["items"]}, "exclude_seen"
        for item in body["items"]:  # the path stops at the deepest named level (test_explanations)
            assert len(item["tag_path"]) <= 2
            assert all(0 <= t["confidence"] <= 1 and t["tag"] for t in item["tag_path"])


def test_same_request_same_answer(client: TestClient, tiny_run: TinyRun) -> None:
    request = {"history": history_ids(tiny_run, 3), "k": 5, "beam": 12, "exclude_seen": False}
    first, second = (client.post("/recommend", json=request).json() for _ in range(2))
    assert first == second


def test_tag_filter_is_respected(client: TestClient, tiny_run: TinyRun) -> None:
    rows = catalogue(tiny_run)
    common = Counter(tuple(r["category_path"][1:3]) for r in rows.values()).most_common(1)[0][0]
    response = client.post(
        "/recommend", json={"history": history_ids(tiny_run, 0), "k": 5, "filter": {"tag_path": list(common)}}
    )
    assert response.status_code == 200, response.text
    items = response.json()["items"]
    assert items
    for item in items:
        assert tuple(item["category_path"][1:3]) == common
    bad = client.post(
        "/recommend", json={"history": history_ids(tiny_run, 0), "filter": {"tag_path": ["Nope"]}}
    )
    assert bad.status_code == 422 and "filter.tag_path" in bad.json()["detail"]


@pytest.mark.parametrize(
    ("body", "status", "needle"),
    [
        ({"history": ["__nope__"]}, 422, "history: none of its items are in this bundle's catalogue"),
        ({"history": []}, 422, "history"),
        ({}, 422, "user_id"),
        ({"user_id": "nobody"}, 422, "has no events"),
        ({"history": ["x"], "k": 0}, 422, "k"),
        ({"history": ["x"], "k": 1000}, 422, "k"),
        ({"history": ["x"], "k": 10, "beam": 5}, 422, "beam"),
        ({"history": ["x"], "k": "ten"}, 422, "k"),
        ({"history": "abc"}, 422, "history"),
        ({"history": ["x"], "colour": "red"}, 422, "colour"),
        ({"history": ["x"], "k": "3"}, 422, "k: Input should be a valid integer"),  # strict types
        ({"history": ["x"], "k": True}, 422, "k: Input should be a valid integer"),
        ({"history": ["x"], "k": 3.0}, 422, "k: Input should be a valid integer"),
        ({"history": ["x"], "explain": 0}, 422, "explain: Input should be a valid boolean"),
        ({"history": ["x"], "exclude_seen": "no"}, 422, "exclude_seen: Input should be a valid boolean"),
    ],
)
def test_bad_input_is_a_clear_4xx(
    client: TestClient, tiny_run: TinyRun, body: dict, status: int, needle: str
) -> None:
    if body.get("history") == ["x"]:
        body = {**body, "history": history_ids(tiny_run, 0)}
    response = client.post("/recommend", json=body)
    assert response.status_code == status, response.text
    assert needle in response.text


def test_oversized_body_is_413(client: TestClient) -> None:
    response = client.post(
        "/recommend", content=b"{" + b" " * 2_000_000 + b"}", headers={"content-type": "application/json"}
    )
    assert response.status_code == 413 and "SIDREC_MAX_BODY_BYTES" in response.text


def test_events_then_recommend_by_user(
    client: TestClient, tiny_run: TinyRun, redis_target: RedisTarget
) -> None:
    history = history_ids(tiny_run, 5)
    assert client.post("/events", json={"user_id": "u1", "item_ids": history}).status_code == 401
    response = client.post("/events", json={"user_id": "u1", "item_ids": history}, headers=KEY)
    assert response.status_code == 200 and response.json()["store"] == "ok"
    stored = redis_target.client.lrange(f"{redis_target.prefix}:history:u1", 0, -1)
    assert [s.decode() for s in stored] == history
    by_user = client.post("/recommend", json={"user_id": "u1", "k": 5}).json()
    explicit = client.post("/recommend", json={"history": history, "k": 5}).json()
    assert by_user["items"] == explicit["items"]
    bad = client.post("/events", json={"user_id": "u1", "item_id": "__nope__"}, headers=KEY)
    assert bad.status_code == 422 and "item_ids[0]" in bad.text


def test_batch_gives_each_request_its_own_result(client: TestClient, tiny_run: TinyRun) -> None:
    good = {"history": history_ids(tiny_run, 1), "k": 3}
    response = client.post("/recommend/batch", json={"requests": [good, {"history": ["__nope__"]}, good]})
    assert response.status_code == 200
    results = response.json()["results"]
    assert [r["status"] for r in results] == [200, 422, 200]
    assert results[0]["response"]["items"] == results[2]["response"]["items"]
    assert "none of its items" in results[1]["error"]


def test_unknown_history_items_are_skipped_and_listed(client: TestClient, tiny_run: TinyRun) -> None:
    history = history_ids(tiny_run, 2)
    mixed = ["__new__", *history[:1], "__gone__", *history[1:], "__new__"]
    known_only = client.post("/recommend", json={"history": history, "k": 5}).json()
    answer = client.post("/recommend", json={"history": mixed, "k": 5})
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert body["ignored_history"] == ["__new__", "__gone__"]  # each once, in the order given
    assert body["items"] == known_only["items"] and body["history_used"] == known_only["history_used"]
    assert known_only["ignored_history"] == []


def test_items_listing_and_lookup(client: TestClient, tiny_run: TinyRun) -> None:
    page = client.get("/items", params={"limit": 50, "offset": 10}).json()
    assert (
        page["total"] == len(tiny_run.sids) and len(page["items"]) == 50 and page["items"][0]["index"] == 10
    )
    item_id = page["items"][0]["item_id"]
    one = client.get(f"/items/{item_id}").json()
    assert one["codes"] == tiny_run.sids[10].tolist() and one["tag_path"] == page["items"][0]["tag_path"]
    assert client.get("/items/__nope__").status_code == 404
    assert client.get("/items", params={"limit": 5000}).status_code == 422


def test_cold_start_item(client: TestClient, tiny_run: TinyRun, redis_target: RedisTarget) -> None:
    body = {"embedding": tiny_run.embeddings[0].tolist(), "title": "new thing", "category_path": ["X"]}
    assert client.put("/items/new-1", json=body).status_code == 401
    response = client.put("/items/new-1", json=body, headers=KEY)
    assert response.status_code == 200, response.text
    item = response.json()
    assert item["cold_start"] and item["index"] == len(tiny_run.sids)
    assert item["codes"][:2] == tiny_run.sids[0, :2].tolist()  # the tuple of the item it was copied from
    taken = {int(s[2]) for s in tiny_run.sids if s[:2].tolist() == item["codes"][:2]}
    assert item["codes"][2] == min(set(range(16)) - taken)  # the smallest free disambiguation code
    assert client.get("/items/new-1").json()["codes"] == item["codes"]
    assert redis_target.client.hget(
        f"{redis_target.prefix}:bundle:{{{client.get('/v1/model').json()['bundle_id']}}}:cold_items", "new-1"
    )
    hit = client.post("/recommend", json={"history": ["new-1"], "k": 3, "filter": {"tag_path": ["X"]}}).json()
    assert hit["items"] == [] or {i["item_id"] for i in hit["items"]} <= {"new-1"}
    seen = client.post(
        "/recommend",
        json={"history": ["new-1"], "k": 3, "exclude_seen": False, "filter": {"tag_path": ["X"]}},
    )
    assert [i["item_id"] for i in seen.json()["items"]] == ["new-1"]
    wrong = client.put("/items/new-2", json={"embedding": [1.0, 2.0]}, headers=KEY)
    assert wrong.status_code == 422 and "embedding" in wrong.text
    # found by the fuzzer: a finite double past float32's range became infinity in the cast (a 500 where
    # numpy's overflow warning is an error, an infinite embedding otherwise)
    huge = {"embedding": [3.4028235677973366e38] * len(body["embedding"])}
    past_float32 = client.put("/items/new-2", json=huge, headers=KEY)
    assert past_float32.status_code == 422 and "float32" in past_float32.json()["detail"]
    again = client.put("/items/new-1", json=body, headers=KEY)
    assert again.status_code == 422 and "already" in again.text


def test_ops_endpoints(client: TestClient) -> None:
    assert client.get("/healthz").json() == {"status": "ok"}
    ready = client.get("/readyz").json()
    assert ready["status"] == "ready" and ready["store"] == "ok"
    public = client.get("/v1/model").json()  # what a client needs, nothing about how it is built or run
    assert public["id_spec"]["id_length"] == 3 and public["decoding"]["max_k"] >= 1
    assert not {"git_sha", "created_at", "provider", "batching", "metrics", "bundle"} & public.keys()
    info = client.get("/v1/model", headers={"X-API-Key": API_KEY}).json()
    assert info["provider"] == "CPUExecutionProvider" and info["id_spec"]["id_length"] == 3
    assert info["batching"]["batch_workers"] >= 1 and info["batching"]["threads_per_session"] >= 1
    assert info["batching"]["cpu_limit"] >= 1 and "git_sha" in info
    client.post("/recommend", json={"history": [client.get("/items").json()["items"][0]["item_id"]]})
    text = client.get("/metrics").text
    for name in (
        "sidrec_batch_size",
        "sidrec_queue_wait_seconds",
        "sidrec_beam_step_seconds",
        "sidrec_request_latency_seconds",
        "sidrec_redis_up 1.0",
    ):
        assert name in text


def test_reload_swaps_and_refuses_bad_bundles(tiny_run: TinyRun, tmp_path) -> None:
    (tmp_path / "bad").mkdir()
    with TestClient(create_app(settings_for(tiny_run.bundle, bundle_root=tmp_path))) as client:
        before = client.get("/v1/model").json()["bundle_id"]
        assert client.post("/admin/reload").status_code == 401
        refused = client.post("/admin/reload", json={"bundle": "bad"}, headers=KEY)
        assert refused.status_code == 409 and "no manifest" in refused.text
        assert str(tmp_path) not in refused.text
        assert client.get("/v1/model").json()["bundle_id"] == before
        swapped = client.post("/admin/reload", headers=KEY)
        assert swapped.status_code == 200 and swapped.json()["previous"] == before


def test_tampered_bundle_refuses_to_start(tiny_run: TinyRun, tmp_path) -> None:
    import shutil

    copy = tmp_path / "bundle"
    shutil.copytree(tiny_run.bundle, copy)
    (copy / "catalogue.jsonl").write_text("{}\n")
    with pytest.raises(BundleError, match="catalogue"), TestClient(create_app(settings_for(copy))):
        pass


def test_result_cache_in_redis(tiny_run: TinyRun, redis_target: RedisTarget) -> None:
    settings = settings_for(
        tiny_run.bundle, redis_url=redis_target.url, redis_key_prefix=redis_target.prefix, cache_ttl_s=30
    )
    with TestClient(create_app(settings)) as client:
        request = {"history": history_ids(tiny_run, 2), "k": 4}
        first, second = (client.post("/recommend", json=request).json() for _ in range(2))
        assert not first["cached"] and second["cached"] and first["items"] == second["items"]
        keys = list(redis_target.client.scan_iter(f"{redis_target.prefix}:cache:{first['bundle_id']}:*"))
        assert len(keys) == 1 and 0 < redis_target.client.pttl(keys[0]) <= 30_000
        assert "sidrec_cache_hits_total 1.0" in client.get("/metrics").text


def test_an_empty_event_list_is_refused_and_leaves_the_store_up(client: TestClient) -> None:
    """``item_ids: []`` once reached Redis as a bare RPUSH: Redis refused it, the store took that for an
    outage, buffered the empty event and retried it forever, degraded, without Redis being down."""
    response = client.post("/events", json={"user_id": "u-empty", "item_ids": []}, headers=KEY)
    assert response.status_code == 422 and "item_ids" in response.json()["detail"]
    assert client.get("/readyz").json()["store"] == "ok"


def test_a_command_redis_refuses_gets_503_and_is_not_taken_for_an_outage(
    client: TestClient, tiny_run: TinyRun, redis_target: RedisTarget
) -> None:
    redis_target.client.set(f"{redis_target.prefix}:history:u-wrongtype", b"not a list")  # WRONGTYPE
    events = {"user_id": "u-wrongtype", "item_ids": history_ids(tiny_run, 2)}
    response = client.post("/events", json=events, headers=KEY)
    assert response.status_code == 503 and response.json()["detail"].startswith("store:")
    assert client.get("/readyz").json()["store"] == "ok"
    assert client.post("/events", json={**events, "user_id": "u-fine"}, headers=KEY).status_code == 200


def test_an_unknown_key_with_spaces_colons_or_control_characters_is_named_as_one_token(
    client: TestClient, tiny_run: TinyRun
) -> None:
    body = {"history": history_ids(tiny_run, 1), "\x1c\u00d1: x": 1}  # found by the fuzzer
    response = client.post("/recommend", json=body)
    assert response.status_code == 422
    detail = response.json()["detail"]
    assert detail.startswith('["\\u001c\\u00d1\\u003a\\u0020x"]: ') and "Extra inputs" in detail
