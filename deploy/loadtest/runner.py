"""The open-loop scheduler: requests leave at scheduled times, whatever the service is doing.

Each step draws its send times up front (Poisson or uniform gaps at the offered rate). A dispatcher
sleeps until each time and starts the request as its own task, so a slow answer never delays the next
send. At most ``max_concurrency`` requests are in flight; a request that has to wait for a slot keeps
its scheduled time, so the wait shows up in its latency instead of silently lowering the rate. A
request not answered within ``timeout_s`` of its scheduled time is abandoned and counted as a failure.

With several targets (replicas of one service, ``LoadTestConfig.targets``) requests go to them in
turn, one each, every target through its own connection pool; the histories are seeded the same
way, so a user's events and the recommendations read from them usually meet different replicas.

The client is aiohttp, not httpx: the harness runs on one core and its own CPU time per request is
latency it adds to every answer it times. httpx's connection pool scans every connection per request
(and httpcore retries a failed import each time): at 125 req/s through 256 connections the client
used a third of a core, and at 250 req/s its own queueing reached seconds of p99.

For the same reason the harness's heap is frozen out of the garbage collector while a step runs
(``_steady_heap``): with the catalogue, the histories and the outcomes on its heap, each full
collection paused the client 40–64 ms, every 20–30 s, and every request in flight was timed that much
slower (the service's own full collections take ~1.5 ms: it freezes its bundle the same way).
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import itertools
import json
import random
import secrets
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import aiohttp
from tqdm import tqdm

from deploy.loadtest.checks import check_recommendation
from deploy.loadtest.config import LoadTestConfig
from deploy.loadtest.errors import DataError
from deploy.loadtest.report import LoadTestReport, Outcome, summarise_step
from deploy.loadtest.workload import (
    Catalogue,
    PlannedRequest,
    Workload,
    dataset_histories,
    random_histories,
)

__all__ = ["arrival_offsets", "run_load_test"]

#: Concurrency of the untimed history seeding before the first step.
SEED_CONCURRENCY = 16
#: Seconds an idle connection is kept for reuse: under uvicorn's 5 s keep-alive (aiohttp's default is
#: 15 s), so a request is never sent on a connection the server is closing, which fails it with
#: ServerDisconnectedError (seen while seeding on a loaded machine).
KEEPALIVE_S = 2.0


def arrival_offsets(rate: float, seconds: float, arrivals: str, rng: random.Random) -> list[float]:
    """Send times (seconds from the step start) for one step at ``rate`` requests/s."""
    if arrivals == "uniform":
        return [i / rate for i in range(round(rate * seconds))]
    offsets, t = [], rng.expovariate(rate)
    while t < seconds:
        offsets.append(t)
        t += rng.expovariate(rate)
    return offsets


class _Client:
    """Sends planned requests, to each target in turn, and turns each answer into an ``Outcome``
    (checked when it is a 2xx)."""

    def __init__(
        self, sessions: Sequence[aiohttp.ClientSession], config: LoadTestConfig, workload: Workload
    ) -> None:
        self.sessions = list(sessions)  # one per target, in the order of config.targets
        self.config = config
        self.workload = workload
        self.slots = asyncio.Semaphore(config.max_concurrency)
        self.headers = {"X-API-Key": config.api_key} if config.api_key else {}
        self._turns = itertools.cycle(range(len(self.sessions)))

    def next_target(self) -> tuple[str, aiohttp.ClientSession]:
        """The next target in turn: its base URL and its session."""
        turn = next(self._turns)
        return self.config.targets[turn], self.sessions[turn]

    async def send(self, request: PlannedRequest, scheduled: float, step_start: float) -> Outcome:
        loop = asyncio.get_running_loop()
        problems: list[str] = []
        target, http = self.next_target()
        try:
            async with (
                asyncio.timeout_at(scheduled + self.config.timeout_s),
                self.slots,
                http.post(request.path, json=request.body, headers=self.headers) as response,
            ):
                body = await response.read()
            status = str(response.status)
            if request.kind != "event" and response.status == 200:
                problems = check_recommendation(
                    request, json.loads(body), self.workload.catalogue, self.config.k
                )
        except TimeoutError:
            status = "timeout"
        except aiohttp.ClientError as exc:
            status = type(exc).__name__
        except ValueError:  # a 200 whose body is not JSON
            status, problems = "200", ["body is not JSON"]
        now = loop.time()
        return Outcome(request.kind, status, now - scheduled, now - step_start, tuple(problems), target)


@contextlib.contextmanager
def _steady_heap() -> Iterator[None]:
    """Collect once, then keep what is on the heap out of the collections until the step ends (the
    step's own garbage is still collected: only what existed before it is exempt)."""
    gc.collect()
    gc.freeze()
    try:
        yield
    finally:
        gc.unfreeze()


async def _run_step(client: _Client, rate: float, rng: random.Random) -> list[Outcome]:
    config = client.config
    offsets = arrival_offsets(rate, config.step_seconds, config.arrivals, rng)
    requests = [client.workload.draw(rng) for _ in offsets]
    loop = asyncio.get_running_loop()
    start = loop.time()
    tasks: list[asyncio.Task[Outcome]] = []
    with tqdm(total=len(offsets), desc=f"{rate:g} req/s", unit="req", leave=False, disable=None) as bar:
        for offset, request in zip(offsets, requests, strict=True):
            delay = start + offset - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            task = asyncio.create_task(client.send(request, start + offset, start))
            task.add_done_callback(lambda _: bar.update())
            tasks.append(task)
        return list(await asyncio.gather(*tasks))


async def _seed_histories(client: _Client) -> dict[str, int]:
    """Send the seeding events in order per user (they build each user's history oldest first)."""
    gate = asyncio.Semaphore(SEED_CONCURRENCY)
    statuses: Counter[str] = Counter()

    async def seed_user(events: list[PlannedRequest]) -> None:
        async with gate:
            for event in events:
                _, http = client.next_target()
                async with http.post(event.path, json=event.body, headers=client.headers) as response:
                    statuses[str(response.status)] += 1
                    if not response.ok:
                        raise DataError(
                            f"POST {event.path} while seeding histories: HTTP {response.status}: "
                            f"{(await response.text())[:200]}"
                        )

    by_user: dict[str, list[PlannedRequest]] = {}
    for event in client.workload.seed_events():
        by_user.setdefault(event.body["user_id"], []).append(event)
    await asyncio.gather(*(seed_user(events) for events in by_user.values()))
    return dict(statuses)


async def _model_info(http: aiohttp.ClientSession, url: str, headers: dict[str, str]) -> dict[str, Any]:
    """``GET /v1/model``, with the API key when there is one (the service shows its details then)."""
    try:
        async with http.get("/v1/model", headers=headers) as response:
            text = await response.text()
    except aiohttp.ClientError as exc:
        raise DataError(f"cannot reach the service at {url}: {exc!r} (is it running?)") from exc
    if response.status != 200:
        raise DataError(f"GET /v1/model: HTTP {response.status}: {text[:200]}")
    info = json.loads(text)
    return info if isinstance(info, dict) else {"v1_model": info}


async def run_load_test(
    config: LoadTestConfig,
    command: str,
    on_step: Callable[[float, list[Outcome]], None] | None = None,
    before_step: Callable[[float], None] | None = None,
) -> LoadTestReport:
    """Read the catalogue, seed the users' histories, then run every rate step in order.

    ``before_step(rate)`` runs just before a step starts and ``on_step(rate, outcomes)`` gets its raw
    outcomes: seams for drivers that inject faults during a step or summarise it their own way
    (``benchmarks/reliability.py``).
    """
    rng = random.Random(config.seed)
    timeout = aiohttp.ClientTimeout(total=config.timeout_s)
    async with contextlib.AsyncExitStack() as stack:
        sessions = [
            await stack.enter_async_context(
                aiohttp.ClientSession(
                    target,
                    connector=aiohttp.TCPConnector(
                        limit=config.max_concurrency, keepalive_timeout=KEEPALIVE_S
                    ),
                    timeout=timeout,
                )
            )
            for target in config.targets
        ]
        key = {"X-API-Key": config.api_key} if config.api_key else {}
        models = [
            await _model_info(http, target, key)
            for target, http in zip(config.targets, sessions, strict=True)
        ]
        served = {target: info.get("bundle_id") for target, info in zip(config.targets, models, strict=True)}
        if len(set(served.values())) > 1:
            raise DataError(f"the targets serve different bundles: {served}")
        model = models[0]
        catalogue = await Catalogue.fetch(sessions[0])  # the same on every replica of a fleet
        if config.data is not None:
            histories = dataset_histories(config.data, config.n_users, config.max_history, rng)
        else:
            histories = random_histories(catalogue, config.n_users, config.max_history, rng)
        workload = Workload(config, catalogue, histories, run_tag=secrets.token_hex(4))
        client = _Client(sessions, config, workload)
        report = LoadTestReport(
            command=command,
            url=config.url,
            p99_target_ms=config.p99_target_ms,
            config={
                key: str(value) if isinstance(value, Path) else value
                for key, value in asdict(config).items()
                if key != "api_key"
            },
            model=model,
            seeding=await _seed_histories(client),
        )
        for rate in config.rates:
            if before_step is not None:  # seams for drivers that inject faults during a step
                before_step(rate)
            with _steady_heap():
                outcomes = await _run_step(client, rate, rng)
            if on_step is not None:
                on_step(rate, outcomes)
            report.steps.append(summarise_step(rate, config.step_seconds, outcomes, config.p99_target_ms))
    return report
