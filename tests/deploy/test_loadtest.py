"""The load-test harness: its arithmetic and checks on their own, then against the real service."""

from __future__ import annotations

import random

import pytest

from deploy.loadtest.checks import check_recommendation
from deploy.loadtest.config import LoadTestConfig, check_target
from deploy.loadtest.errors import ConfigError
from deploy.loadtest.report import LoadTestReport, Outcome, summarise_step
from deploy.loadtest.runner import arrival_offsets
from deploy.loadtest.workload import Catalogue, PlannedRequest

CATALOGUE = Catalogue(
    {
        "a": ("Shop", "Face", "Cream"),
        "b": ("Shop", "Face", "Serum"),
        "c": ("Shop", "Hair"),
        "d": ("Shop", "Face"),
    }
)


def _answer(*ids: str, scores: list[float] | None = None) -> dict:
    scores = scores if scores is not None else [-float(i) for i in range(len(ids))]
    return {
        "bundle_id": "b1",
        "items": [{"item_id": i, "score": s} for i, s in zip(ids, scores, strict=True)],
    }


def test_arrivals_are_scheduled_at_the_offered_rate():
    assert arrival_offsets(4.0, 2.0, "uniform", random.Random(0)) == [
        0.0,
        0.25,
        0.5,
        0.75,
        1.0,
        1.25,
        1.5,
        1.75,
    ]
    poisson = arrival_offsets(200.0, 50.0, "poisson", random.Random(0))
    assert abs(len(poisson) - 10_000) < 400  # 4 standard deviations of a Poisson(10 000) count
    assert poisson == sorted(poisson) and poisson[0] > 0 and poisson[-1] < 50.0


def test_only_loopback_targets_unless_named():
    check_target("http://127.0.0.1:8000", ())
    check_target("http://localhost:8000", ())
    with pytest.raises(ConfigError, match=r"--allow-remote 10\.1\.2\.3"):
        check_target("http://10.1.2.3:8000", ())
    check_target("http://10.1.2.3:8000", ("10.1.2.3",))
    with pytest.raises(ConfigError, match="url"):
        check_target("ftp://127.0.0.1", ())


def test_plans_are_bounded():
    with pytest.raises(ConfigError, match="max_requests"):
        LoadTestConfig(rates=(1000.0,), step_seconds=60, max_requests=10_000, mix={"history": 1.0})
    with pytest.raises(ConfigError, match="max_duration_s"):
        LoadTestConfig(rates=(1.0,) * 10, step_seconds=60, max_duration_s=300, mix={"history": 1.0})
    with pytest.raises(ConfigError, match="api_key"):
        LoadTestConfig(mix={"event": 1.0})
    with pytest.raises(ConfigError, match="mix"):
        LoadTestConfig(mix={"histories": 1.0})


def test_valid_answers_pass_every_check():
    request = PlannedRequest("filtered", "/recommend", {}, frozenset({"b"}), ("Face",))
    assert check_recommendation(request, _answer("a", "d"), CATALOGUE, k=10) == []
    rooted = PlannedRequest("filtered", "/recommend", {}, frozenset(), ("Shop", "Face"))
    assert check_recommendation(rooted, _answer("a", "b"), CATALOGUE, k=10) == []


@pytest.mark.parametrize(
    ("answer", "problem"),
    [
        (_answer("a", "zzz"), "unknown item 'zzz'"),
        (_answer("a", "a"), "duplicate items"),
        (_answer("b"), "in the history"),
        (_answer("c"), "outside the filter"),
        (_answer("a", "d", scores=[-2.0, -1.0]), "not sorted by score"),
        ({"items": _answer("a")["items"]}, "bundle_id missing"),
        (_answer(), "0 items returned"),
        (_answer("a", "d", "a", "b"), "4 items returned, expected 1..3"),
        ({"bundle_id": "b1", "items": "a"}, "items is not a list"),
    ],
)
def test_each_wrong_answer_is_caught(answer, problem):
    request = PlannedRequest("filtered", "/recommend", {}, frozenset({"b"}), ("Face",))
    problems = check_recommendation(request, answer, CATALOGUE, k=3)
    assert any(problem in found for found in problems), problems


def test_a_step_passes_only_when_fast_and_every_answer_valid():
    fast = [Outcome("history", "200", 0.010, 0.1 * i) for i in range(100)]
    step = summarise_step(10.0, 10.0, fast, p99_target_ms=100.0)
    assert step.within_target and step.achieved_rps == 10.0 and step.latency_ms["p50"] == pytest.approx(10.0)
    one_invalid = [*fast[:-1], Outcome("history", "200", 0.01, 9.9, ("unknown item 'x'",))]
    assert summarise_step(10.0, 10.0, one_invalid, 100.0).invalid_responses == 1
    assert not summarise_step(10.0, 10.0, one_invalid, 100.0).within_target
    with_500 = [*fast[:-1], Outcome("history", "500", 0.01, 9.9)]
    assert summarise_step(10.0, 10.0, with_500, 100.0).server_errors == 1
    slow_tail = [*fast[:-2], *(Outcome("user", "timeout", 2.0, 11.0) for _ in range(2))]
    slow = summarise_step(10.0, 10.0, slow_tail, 100.0)
    assert slow.client_failures == 2 and slow.latency_ms["max"] == 2000.0 and not slow.within_target


def test_capacity_is_the_highest_passing_rate():
    report = LoadTestReport(command="x", url="u", p99_target_ms=100.0, config={}, model={})
    for rate, latency in ((10.0, 0.01), (20.0, 0.05), (40.0, 0.5)):
        outcomes = [Outcome("history", "200", latency, 0.01 * i) for i in range(50)]
        report.steps.append(summarise_step(rate, 5.0, outcomes, 100.0))
    assert report.max_rps_within_p99_target == 20.0
    assert report.to_json()["max_rps_within_p99_target"] == 20.0
    assert "20 req/s" in report.table()


def test_the_harness_never_imports_training():
    """It runs beside a deployed service, where the training package need not be installed."""
    import subprocess
    import sys

    from tests.deploy.conftest import REPO

    code = (
        "import sys, deploy.loadtest, deploy.loadtest.__main__, deploy.loadtest.workload\n"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in {'torch', 'training'})\n"
        "assert not bad, bad\n"
    )
    subprocess.run([sys.executable, "-c", code], cwd=REPO, check=True, timeout=120)


def test_dataset_histories_read_the_documented_files(tmp_path):
    """Test-user histories from items.jsonl + sequences.jsonl (CONTRACTS §1): all but the last item."""
    import json

    from deploy.loadtest.errors import DataError
    from deploy.loadtest.workload import dataset_histories

    items = [
        {"item_id": f"item-{n}", "index": n, "title": "t", "category_path": [], "tags": []} for n in range(5)
    ]
    (tmp_path / "items.jsonl").write_text("".join(json.dumps(row) + "\n" for row in items))
    sequences = [{"user_id": "a", "items": [0, 1, 2, 3], "timestamps": [0, 1, 2, 3]}]
    sequences += [{"user_id": "b", "items": [4, 2, 1], "timestamps": [0, 1, 2]}]
    (tmp_path / "sequences.jsonl").write_text("".join(json.dumps(row) + "\n" for row in sequences))
    histories = dataset_histories(tmp_path, n_users=5, max_history=2, rng=random.Random(0))
    assert sorted(histories) == [["item-1", "item-2"], ["item-4", "item-2"]]
    (tmp_path / "sequences.jsonl").write_text('{"user_id": "c", "items": [9]}\n')
    with pytest.raises(DataError, match="not a prepared dataset"):
        dataset_histories(tmp_path, n_users=5, max_history=2, rng=random.Random(0))


def test_several_urls_share_the_requests_in_turn():
    """``--url`` repeated or comma-joined: one config, the targets in order; each must be loopback
    (or named), and the single-URL default is unchanged."""
    from deploy.loadtest.__main__ import build_parser, config_from_args

    def targets(*argv: str) -> tuple[str, ...]:
        args = build_parser().parse_args([*argv, "--mix", "history=1"])
        return config_from_args(args).targets

    assert targets() == ("http://127.0.0.1:8000",)
    assert targets("--url", "http://127.0.0.1:1/") == ("http://127.0.0.1:1",)
    assert targets("--url", "http://127.0.0.1:1", "--url", "http://localhost:2,http://127.0.0.1:3") == (
        "http://127.0.0.1:1",
        "http://localhost:2",
        "http://127.0.0.1:3",
    )
    with pytest.raises(ConfigError, match=r"--allow-remote 10\.1\.2\.3"):
        LoadTestConfig(url="http://127.0.0.1:1,http://10.1.2.3:2", mix={"history": 1.0})
    with pytest.raises(ConfigError, match="url"):
        LoadTestConfig(url=" , ", mix={"history": 1.0})


def test_a_run_over_two_replicas_alternates_between_them():
    """Two stand-in replicas sharing one history store: every request of the step and every seeding
    event goes to each in turn, and a user seeded through both is read back whole by either."""
    import asyncio

    from aiohttp import web

    from deploy.loadtest.runner import run_load_test

    items = [{"item_id": f"i{n}", "category_path": ["Shop", "Face"]} for n in range(30)]
    histories: dict[str, list[str]] = {}  # the fleet's shared store
    hits: list[dict[str, int]] = []

    def replica() -> web.Application:
        seen = {"events": 0, "recommend": 0}
        hits.append(seen)

        async def model(_: web.Request) -> web.Response:
            return web.json_response({"bundle_id": "b1"})

        async def catalogue(_: web.Request) -> web.Response:
            return web.json_response({"items": items})

        async def events(request: web.Request) -> web.Response:
            seen["events"] += 1
            body = await request.json()
            histories.setdefault(body["user_id"], []).append(body["item_id"])
            return web.json_response({"history_length": len(histories[body["user_id"]])})

        async def recommend(request: web.Request) -> web.Response:
            seen["recommend"] += 1
            body = await request.json()
            history = body.get("history") or histories.get(body.get("user_id", ""), [])
            fresh = [i["item_id"] for i in items if i["item_id"] not in history][: body["k"]]
            answer = [{"item_id": i, "score": -float(n)} for n, i in enumerate(fresh)]
            return web.json_response({"bundle_id": "b1", "items": answer})

        app = web.Application()
        app.router.add_get("/v1/model", model)
        app.router.add_get("/items", catalogue)
        app.router.add_post("/events", events)
        app.router.add_post("/recommend", recommend)
        return app

    async def scenario() -> tuple[LoadTestReport, list[str]]:
        runners = [web.AppRunner(replica()) for _ in range(2)]
        urls = []
        for runner in runners:
            await runner.setup()
            site = web.TCPSite(runner, "127.0.0.1", 0)
            await site.start()
            urls.append(f"http://127.0.0.1:{runner.addresses[0][1]}")
        try:
            config = LoadTestConfig(
                url=",".join(urls),
                rates=(20.0,),
                step_seconds=1.0,
                timeout_s=60.0,  # no timeouts on a loaded machine: the split is what is tested
                mix={"user": 1.0, "history": 1.0, "event": 1.0},
                api_key="k" * 16,
                n_users=5,
                max_history=4,
                k=3,
                p99_target_ms=1e9,
            )
            return await run_load_test(config, "test"), urls
        finally:
            for runner in runners:
                await runner.cleanup()

    report, urls = asyncio.run(scenario())
    step = report.steps[0]
    assert step.invalid_responses == 0 and step.ok == step.requests, step.status_counts
    assert set(step.by_target) == set(urls) and abs(step.by_target[urls[0]] - step.by_target[urls[1]]) <= 1
    seeded = report.seeding["200"]
    assert seeded > 2 and abs(hits[0]["events"] - hits[1]["events"]) <= seeded // 2
    assert sum(h["events"] + h["recommend"] for h in hits) == seeded + step.requests
    assert all(h["recommend"] > 0 for h in hits)
