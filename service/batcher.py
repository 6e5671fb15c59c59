"""Micro-batching: many concurrent requests, one model call, and the service's overload control.

Requests wait in a bounded ``asyncio.Queue``; a single batcher task takes the first waiting request,
gathers more for at most ``max_wait_ms`` (or until ``max_batch_size``), and decodes the batch. How
it decodes follows from the CPUs the process may use (``service.layout.DecodingLayout``): in up to
``workers`` threads at once, or, on a single CPU (``in_loop``), on the event loop itself, one step
at a time (the encoder call, then each level of the beam search: ``Recommender.recommend_steps``),
answering whatever has arrived between two steps. A batch is only gathered once a worker is free,
so requests wait in the queue, not in a thread. Every request carries its own future: a batch that
fails is retried one request at a time so each caller gets its own result or its own error.

Overload control is two fixed rules. The first bounds the recommendations in the service at once,
from the moment ``service.app.ShedEarly`` admits one (before its body is read) to its answer:
``SIDREC_QUEUE_SIZE``, by default two batches (2 x ``SIDREC_MAX_BATCH_SIZE``); a ``/recommend/batch``
is admitted as one and, once read, counts as all it holds (it is never refused in part). The next is
refused at once (``Overloaded`` -> 429 + Retry-After, ``sidrec_rejected_total``), so whatever the
load an admitted request waits for at most the batch being decoded and then decodes in the next: the
batch size, not the load, sets the admitted latency. Two batches, not one: with one, the next batch
cannot gather while the current one decodes, and a burst below capacity is refused although it would
be answered in time. A larger bound would carry no more: past capacity it is always full, and every
admitted request waits through all of it, which turns what should be a fast refusal into a slow
answer. It counts requests, not only the queue, because on a busy core a request spends as long being
read and parsed as waiting: bounded only in the queue, those in between pile up unseen and are refused
late, after the work of parsing them. The second rule: every job carries a deadline
(``SIDREC_REQUEST_TIMEOUT_MS``); one that passed while it queued is dropped before the model
(``DeadlineExceeded`` -> 503, ``sidrec_expired_total``), so work nobody waits for never delays the
requests behind it.

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
        in_loop: bool = False,
    ) -> None:
        """``queue_size``: recommendations admitted at once (``full``, see above); ``workers``: batches
        decoding at once (each ``Recommender.recommend`` in its own thread); ``in_loop``: decode on
        the event loop, step by step, instead of in threads (see above)."""
        if workers < 1:
            raise ValueError(f"workers must be >= 1, got {workers}")
        self.max_batch_size = max_batch_size
        self.workers = workers
        self.in_loop = in_loop
        self.max_wait_s = max_wait_ms / 1000
        self.limit = queue_size
        self.admitted = 0  # recommendations let in (``service.app.ShedEarly``) and not answered yet
        self._queue: asyncio.Queue[_Job] = asyncio.Queue()  # bounded by what is admitted
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

    @property
    def full(self) -> bool:
        return self.admitted >= self.limit

    def refusal(self) -> Overloaded:
        """Count and return the refusal of a request that finds the service full."""
        self._metrics.rejected.inc()
        return Overloaded(f"request queue is full (SIDREC_QUEUE_SIZE {self.limit}); retry shortly")

    async def submit(
        self, recommender: Recommender, query: Query, deadline: float = math.inf
    ) -> list[Recommendation]:
        """Queue an admitted query that must be answered by ``deadline`` (``time.perf_counter()``)."""
        job = _Job(recommender, query, asyncio.get_running_loop().create_future(), deadline)
        self._queue.put_nowait(job)
        return await job.future

    async def _fill(self, batch: list[_Job]) -> None:
        """Add waiting requests for up to ``max_wait_ms`` or until the batch is full."""
        deadline = time.perf_counter() + self.max_wait_s
        while len(batch) < self.max_batch_size:
            remaining = deadline - time.perf_counter()
            if remaining <= 0:
                while len(batch) < self.max_batch_size and not self._queue.empty():
                    batch.append(self._queue.get_nowait())
                return
            try:  # not asyncio.wait_for: in 3.11 it can swallow a cancellation that meets a result
                async with asyncio.timeout(remaining):
                    batch.append(await self._queue.get())
            except TimeoutError:
                return

    async def _run(self) -> None:
        while True:
            await self._free.acquire()  # gather only when a worker can take the batch
            try:
                jobs = [await self._queue.get()]
                await self._fill(jobs)
            except BaseException:
                self._free.release()
                raise
            task = asyncio.get_running_loop().create_task(self._run_batch(jobs))
            self._running.add(task)
            task.add_done_callback(self._running.discard)
            # the batch is its task's now: held here while the next one is awaited, its jobs would keep
            # the bundle they were resolved against alive after a reload until the next request
            del jobs, task

    async def _run_batch(self, jobs: list[_Job]) -> None:
        try:
            groups: dict[int, list[_Job]] = {}
            for job in jobs:
                groups.setdefault(id(job.recommender), []).append(job)
            for group in groups.values():
                await self._run_group(group)
        finally:
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
