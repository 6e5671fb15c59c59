"""Micro-batching: many concurrent requests, one model call.

Requests wait in a bounded ``asyncio.Queue``; a single batcher task takes the first waiting request,
gathers more for at most ``max_wait_ms`` (or until ``max_batch_size``), and runs the batch in a
worker thread so the event loop keeps accepting requests meanwhile. Up to ``workers`` batches decode
at once, each in its own thread (``SIDREC_BATCH_WORKERS``; see ``service.settings.decoding_layout``
for when that pays). A batch is only gathered once a worker is free, so requests wait in the queue,
not in a thread.

On a single CPU a thread buys no parallelism, only contention: the decoding thread and the event
loop hand the GIL and the core back and forth, and under load each of them waits for the other.
There (``in_loop``) the event loop runs the decode itself, one step at a time (the encoder call,
then each level of the beam search: ``Recommender.recommend_steps``), and between two steps answers
whatever has arrived, so a request is still refused or read within a step's time, not a batch's.
There a batch does not wait to fill up either (``Settings.batch_wait_ms``: 0 unless
``SIDREC_MAX_WAIT_MS`` says otherwise): while it waits nothing decodes, and under load the requests it
waits for arrive during the decode anyway and make up the next batch. Measured side by side
(``benchmarks/results/ab-gather-wait.json``, one CPU, beam 100): at 100 req/s, twice the rated load,
admitted p99 71.6 ms without the wait and 98.3 ms with 2 ms, 18 and 129 requests shed.
Every request carries its own future: a batch that fails is retried one request at a time so each
caller gets its own result or its own error. A full queue refuses at once (``Overloaded`` -> 429 +
Retry-After) instead of letting latency grow without bound for everyone already admitted.

How long a request may wait is decided before it gets here (``service.admission``, which sees the
whole service, not only this queue). Every job carries a deadline; a job whose deadline has passed
while it queued is dropped before it reaches the model (``DeadlineExceeded`` -> 503,
``sidrec_expired_total``), so work nobody waits for any more never delays the requests behind it.

Each job also carries the ``Recommender`` its ids were resolved against; a batch only groups jobs of
the same one, so after ``/admin/reload`` queued requests still finish on the bundle they started on.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from dataclasses import dataclass, field
from typing import TypeVar

from service.beam_search import Steps
from service.errors import DeadlineExceeded, Overloaded, ServiceError
from service.metrics import ServiceMetrics
from service.recommender import Query, Recommendation, Recommender
from service.saturation import Saturation

__all__ = ["MicroBatcher"]

T = TypeVar("T")


@dataclass
class _Job:
    recommender: Recommender
    query: Query
    future: asyncio.Future[list[Recommendation]]
    deadline: float  # time.perf_counter() by which the caller needs the answer
    queued_at: float = field(default_factory=time.perf_counter)


class MicroBatcher:
    def __init__(
        self,
        max_batch_size: int,
        max_wait_ms: float,
        queue_size: int,
        metrics: ServiceMetrics,
        workers: int = 1,
        saturation: Saturation | None = None,
        in_loop: bool = False,
    ) -> None:
        """``workers``: batches decoding at once (each ``Recommender.recommend`` in its own thread);
        ``saturation``: where the workers' busy time is recorded (``service.saturation``);
        ``in_loop``: decode on the event loop, step by step, instead of in threads (see above)."""
        if workers < 1:
            raise ValueError(f"workers must be >= 1, got {workers}")
        self.saturation = saturation or Saturation(workers)
        self.max_batch_size = max_batch_size
        self.workers = workers
        self.in_loop = in_loop
        self.max_wait_s = max_wait_ms / 1000
        self._queue: asyncio.Queue[_Job] = asyncio.Queue(maxsize=queue_size)
        self._metrics = metrics
        self._free = asyncio.Semaphore(workers)
        self._task: asyncio.Task[None] | None = None
        self._running: set[asyncio.Task[None]] = set()

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(), name="sidrec-batcher")

    async def stop(self) -> None:
        """Stop gathering, let the batches already decoding finish, refuse what is still queued."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        await asyncio.gather(*self._running, return_exceptions=True)
        while not self._queue.empty():
            job = self._queue.get_nowait()
            if not job.future.done():
                job.future.set_exception(Overloaded("the service is shutting down", retry_after=1.0))

    @property
    def depth(self) -> int:
        return self._queue.qsize()

    async def submit(
        self, recommender: Recommender, query: Query, deadline: float = math.inf
    ) -> list[Recommendation]:
        """Queue a query that must be answered by ``deadline`` (``time.perf_counter()``), or refuse it."""
        if self._queue.full():
            self._metrics.rejected.inc()
            raise Overloaded(f"request queue is full ({self._queue.qsize()} waiting); retry shortly")
        job = _Job(recommender, query, asyncio.get_running_loop().create_future(), deadline)
        self._queue.put_nowait(job)
        return await job.future

    async def _collect(self) -> list[_Job]:
        batch = [await self._queue.get()]
        self.saturation.begin()  # busy from here until ``_run_batch`` ends
        try:
            await self._fill(batch)
        except BaseException:  # cancelled while gathering: the batch never runs
            self.saturation.end()
            raise
        return batch

    async def _fill(self, batch: list[_Job]) -> None:
        """Add waiting requests for up to ``max_wait_ms`` or until the batch is full."""
        deadline = time.perf_counter() + self.max_wait_s
        while len(batch) < self.max_batch_size:
            remaining = deadline - time.perf_counter()
            if remaining <= 0:
                while len(batch) < self.max_batch_size and not self._queue.empty():
                    batch.append(self._queue.get_nowait())
                return
            try:
                batch.append(await asyncio.wait_for(self._queue.get(), remaining))
            except TimeoutError:
                return

    async def _run(self) -> None:
        while True:
            await self._free.acquire()  # gather only when a worker can take the batch
            try:
                jobs = await self._collect()
            except BaseException:
                self._free.release()
                raise
            task = asyncio.get_running_loop().create_task(self._run_batch(jobs))
            self._running.add(task)
            task.add_done_callback(self._running.discard)

    async def _run_batch(self, jobs: list[_Job]) -> None:
        try:
            groups: dict[int, list[_Job]] = {}
            for job in jobs:
                groups.setdefault(id(job.recommender), []).append(job)
            for group in groups.values():
                await self._run_group(group)
        finally:
            self.saturation.end()
            self._free.release()

    async def _run_group(self, jobs: list[_Job]) -> None:
        started = time.perf_counter()
        live = []
        for job in jobs:
            if job.future.done():  # the caller went away
                continue
            if job.deadline <= started:  # nobody waits for this answer any more: skip the model
                self._metrics.expired.inc()
                _fail(job, DeadlineExceeded("request deadline passed while queued; retry shortly"))
                continue
            live.append(job)
        if not live:
            return
        for job in live:
            self._metrics.queue_wait.observe(started - job.queued_at)
        self._metrics.batch_size.observe(len(live))
        recommender, queries = live[0].recommender, [job.query for job in live]
        try:
            if self.in_loop:
                steps = recommender.recommend_steps(queries, self._metrics.observe_step)
                results = await _step_by_step(steps)
            else:
                results = await asyncio.to_thread(recommender.recommend, queries, self._metrics.observe_step)
        except ServiceError as exc:
            if len(live) == 1:
                _fail(live[0], exc)
            else:  # one bad request must not fail its neighbours: retry them one by one
                for job in live:
                    await self._run_group([job])
            return
        except Exception as exc:  # an unexpected fault: every caller of this batch learns of it
            for job in live:
                _fail(job, exc)
            return
        for job, result in zip(live, results, strict=True):
            if not job.future.done():
                job.future.set_result(result)


async def _step_by_step(steps: Steps[T]) -> T:
    """Run ``steps`` on the event loop, letting it do whatever is ready between two of them."""
    while True:
        try:
            next(steps)
        except StopIteration as done:
            return done.value
        await asyncio.sleep(0)


def _fail(job: _Job, exc: BaseException) -> None:
    if not job.future.done():
        job.future.set_exception(exc)
