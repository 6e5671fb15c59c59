"""Admission control: refuse at once the requests that could only be answered late.

How long a request takes is set by the work already in the service ahead of it, not only by the
micro-batcher's queue: much of a request's time is spent in the history lookup and on the event
loop, and the model queue stays short until the cores are saturated. So ``AdmissionControl`` counts
every recommendation *in the service* (admitted and not yet answered) and learns, from the answered
ones, how long a request takes with nobody ahead of it, and how much longer it took behind ``n``
others: a straight line ``a + b·n`` fitted by least squares with exponential forgetting
(``WaitModel``). The intercept is the batch already running, which a request waits for however few
are ahead; the slope is what each further request adds, well below a request's own time while
micro-batching answers concurrent requests together, rising to the full cost of one as the service
saturates. (A line through the origin, one average "time per request ahead", charges every request
ahead the intercept that is really paid once: fitted mostly on one or two ahead, it refused
requests near the rated load expecting 44–73 ms behind 6–10 others.) A new request's expected wait
is that line at ``in_service``; when it exceeds ``max_delay_ms`` (the latency budget,
``SIDREC_MAX_QUEUE_DELAY_MS``) or the deadline every request carries (``SIDREC_REQUEST_TIMEOUT_MS``),
the request is refused before it costs anything (``Overloaded`` -> 429 + Retry-After,
``sidrec_rejected_total``), so the ones admitted keep a bounded latency.

The budget applies only while the service is saturated (``service.saturation``: its decoder or its
CPUs busy at least ``SATURATED`` of the last quarter second or so, until the level falls below
``RELIEVED``). Below that, a long expected wait is a burst the service works off within the
deadline, not an overload, and refusing it fails a request at a load the service carries. The
deadline applies at any load. In exploratory runs on one service core at beam 100 and a 45 ms budget
(20-s steps of the request mix of benchmarks/reliability.py; README "Reliability" has the committed
reports): at 75 req/s 0, 0 and 0 refused with the gate, 0, 1 and 4 without; at 100 req/s 0 and 0
with it, 1 and 5 without; the overload's tail at twice those loads was the same either way (the
saturation level at the rated load: median 0.62, 90th percentile 0.75; at twice it, with the budget
shedding, 0.83–0.91).

Requests also wait before the service can count them: once the process is saturated, a request's
bytes sit in the socket until the event loop gets to them, and shed requests wait there as long as
admitted ones. That wait is the event loop's lag, which ``watch_loop`` measures with a timer (how late
it fires); it is added to the expected wait, so admission sheds as soon as the loop falls behind.

The line learns only from requests admitted behind others. Once it expects more than the budget
behind even one request it admits none of those, so nothing could correct it: a line the service
has outgrown (after an overload, say) would go on refusing about every request that finds another
in the service (measured: half the requests at the rated load, for the whole 300 s after an
overload step). So a line that has learnt nothing for ``_STARVED_S`` while in that state is
forgotten and learnt again from the requests it then admits. Under a real overload the line keeps
learning from the requests it still admits behind one or more others, so it is never forgotten.

A bundle reload is the service's own work, not demand. While one runs, and until the requests that
were in the service during it have been answered (the *reload pause*), the latency budget is not
applied (the deadline, the queue bound and the dropping of expired work still are), and requests
that overlapped the pause do not update the estimate: loading a bundle never turns into refused
requests, and its pause is not mistaken for a slower service afterwards. The budget stays off for
``RELOAD_GRACE_S`` after a reload ends as well: the first batches on a new bundle run slower
(caches and buffers filled anew), and with a tight budget they were refused (82 of 2,226 requests
under 7 reloads at a 15 ms budget).
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from collections.abc import Callable, Iterator

from service.errors import Overloaded
from service.metrics import ServiceMetrics
from service.saturation import Saturation

__all__ = ["RELIEVED", "RELOAD_GRACE_S", "SATURATED", "AdmissionControl", "WaitModel"]

_SMOOTHING = 0.05  # weight of each answered request in the moving averages
_POLL_S = 0.005  # how often ``pause_over`` looks
_LAG_PERIOD_S = 0.005  # the event-loop lag timer
#: variance of ``n`` (requests²) below which the samples are too alike to fit a slope on: a standard
#: deviation under half a request would turn noise in ``w`` into any slope
_MIN_SPREAD = 0.25
_LAG_DECAY = 0.9  # per timer tick: a lag spike counts at once and fades over ~50 ms
#: how long a line that refuses everyone behind even one request may go without learning (see above)
_STARVED_S = 1.0
#: how long after a reload the budget stays off (see above)
RELOAD_GRACE_S = 1.0
#: saturation from which the budget applies, and below which it stops applying again (see above and
#: ``service.saturation``). The gap is needed: with one threshold, shedding kept the level hovering
#: at it, and every dip below turned the budget off and let a wave of late requests in
SATURATED, RELIEVED = 0.8, 0.7


class AdmissionControl:
    def __init__(
        self,
        max_delay_ms: float,
        timeout_ms: float,
        metrics: ServiceMetrics,
        saturation: Saturation | None = None,
        clock: Callable[[], float] = time.perf_counter,
    ) -> None:
        """``max_delay_ms``: refuse when the expected wait is longer (0 = only the deadline,
        ``timeout_ms``); ``saturation``: the service's (the budget applies only while it is
        saturated; None = always); ``clock``: seconds, monotonic (a seam for tests)."""
        self._clock = clock
        self._saturation = saturation
        self._saturated = saturation is None
        self.max_delay_s = max_delay_ms / 1000 if max_delay_ms > 0 else math.inf
        self.timeout_s = timeout_ms / 1000
        self._metrics = metrics
        self._in_service = 0
        self._alone_s = 0.0  # moving average of a request's time with nobody ahead
        self._wait = WaitModel()  # what the requests ahead added to that
        self._learnt_at = clock()  # when ``_wait`` last learnt
        self._grace_until = -math.inf  # the budget is off until then (after a reload)
        self._reloads = 0  # reloads in progress
        self._epoch = 0  # changes when a reload starts and when it ends
        self._in_epoch = 0  # requests in the service admitted in the current epoch
        self._lag_s = 0.0  # event-loop lag: decaying maximum of how late the timer fired
        self._watch: asyncio.Task[None] | None = None

    @property
    def in_service(self) -> int:
        """Requests admitted and not yet answered."""
        return self._in_service

    @property
    def estimated_wait_s(self) -> float:
        """How long a request admitted now would wait: behind the ones already in the service, and
        for the event loop, which is late by its current lag."""
        return self._wait.expected_s(self._in_service) + self._lag_s

    @property
    def loop_lag_s(self) -> float:
        return self._lag_s

    def start(self) -> None:
        """Start measuring the event loop's lag (call from inside the running loop)."""
        self._watch = asyncio.get_running_loop().create_task(self._watch_loop())

    async def stop(self) -> None:
        if self._watch is not None:
            self._watch.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watch

    async def _watch_loop(self) -> None:
        while True:
            fired, epoch = self._clock(), self._epoch
            await asyncio.sleep(_LAG_PERIOD_S)
            late = max(0.0, self._clock() - fired - _LAG_PERIOD_S)
            # A reload's pause (loading, warming, collecting the old bundle) is not demand: a tick that
            # overlapped any of it (the epoch changes when one starts and ends) measures nothing.
            overlapped = self.reload_pause or epoch != self._epoch
            self._lag_s = 0.0 if overlapped else max(late, _LAG_DECAY * self._lag_s)

    @property
    def reload_pause(self) -> bool:
        """A reload runs, or requests that were in the service during one are not answered yet."""
        return self._reloads > 0 or self._in_epoch < self._in_service

    @property
    def _budget_off(self) -> bool:
        """The reload pause, or the grace after a reload: the budget is not applied, nothing learnt."""
        return self.reload_pause or self._clock() < self._grace_until

    @property
    def saturated(self) -> bool:
        """The decoder or the CPUs have been busy almost without a break (and have not had a real
        rest since): the budget applies."""
        if self._saturation is not None:
            level = self._saturation.level
            if level >= SATURATED:
                self._saturated = True
            elif level < RELIEVED:
                self._saturated = False
        return self._saturated

    def refusal(self) -> Overloaded | None:
        """Why a request arriving now would be refused (counted in ``sidrec_rejected_total``), or
        None. Cheap enough to ask before the request's body is read (``service.app.ShedEarly``)."""
        applies = not self._budget_off and self.saturated
        budget = min(self.timeout_s, self.max_delay_s) if applies else self.timeout_s
        if self._wait.expected_s(1) + self._lag_s > budget and self._clock() - self._learnt_at > _STARVED_S:
            self._wait, self._learnt_at = WaitModel(), self._clock()  # starved: see the module docstring
        wait = self.estimated_wait_s
        if wait <= budget:
            return None
        self._metrics.rejected.inc()
        return Overloaded(
            f"{self._in_service} requests ahead, about {wait * 1000:.0f} ms of work; retry shortly"
        )

    @contextlib.contextmanager
    def admit(self) -> Iterator[None]:
        """Run one request inside, or raise ``Overloaded`` at once if it could only be answered late."""
        refused = self.refusal()
        if refused is not None:
            raise refused
        ahead, paused = self._in_service, self._budget_off
        epoch, started = self._epoch, self._clock()
        self._in_service += 1
        self._in_epoch += 1
        try:
            yield
        finally:
            self._in_service -= 1
            if epoch == self._epoch:
                self._in_epoch -= 1
        if not paused and epoch == self._epoch:  # only what the demand cost, never a reload
            self._learn(ahead, self._clock() - started)

    def _learn(self, ahead: int, seconds: float) -> None:
        if not ahead:
            self._alone_s = _average(self._alone_s, seconds)
        elif self._alone_s:
            self._wait.learn(ahead, max(0.0, seconds - self._alone_s))
            self._learnt_at = self._clock()

    @contextlib.contextmanager
    def reloading(self) -> Iterator[None]:
        """Mark a bundle reload: see the module docstring."""
        self._reloads += 1
        self._new_epoch()
        try:
            yield
        finally:
            self._reloads -= 1
            self._new_epoch()
            self._grace_until = self._clock() + RELOAD_GRACE_S

    async def pause_over(self) -> None:
        """Return once no reload runs and every request that overlapped one has been answered (each
        is answered or dropped by its deadline, so this ends)."""
        while self.reload_pause:
            await asyncio.sleep(_POLL_S)

    def _new_epoch(self) -> None:
        self._epoch += 1
        self._in_epoch = 0  # everyone in the service now overlapped a reload


def _average(average: float, sample: float) -> float:
    return sample if not average else (1 - _SMOOTHING) * average + _SMOOTHING * sample


class WaitModel:
    """The extra time ``n >= 1`` requests ahead cost a request: ``a + b·n``, a least-squares line over
    moving averages of ``n``, ``w``, ``n²`` and ``n·w`` (each answered request weighs ``_SMOOTHING``).

    Until the requests seen ahead vary (``n``'s variance under ``_MIN_SPREAD``) the line goes through
    the origin: ``w / n`` per request ahead. A slope the noise made negative is taken as flat (more
    requests ahead never shorten the wait).
    """

    def __init__(self) -> None:
        self._n = self._w = self._nn = self._nw = 0.0
        self._seen = False

    def learn(self, ahead: int, extra_s: float) -> None:
        """Record that a request admitted behind ``ahead >= 1`` others took ``extra_s`` longer."""
        sample = (float(ahead), extra_s, float(ahead * ahead), ahead * extra_s)
        if not self._seen:
            self._n, self._w, self._nn, self._nw = sample
            self._seen = True
            return
        keep = 1 - _SMOOTHING
        self._n, self._w, self._nn, self._nw = (
            keep * old + _SMOOTHING * new
            for old, new in zip((self._n, self._w, self._nn, self._nw), sample, strict=True)
        )

    def line(self) -> tuple[float, float]:
        """(intercept a, slope b) in seconds."""
        if not self._seen:
            return 0.0, 0.0
        spread = self._nn - self._n * self._n
        if spread < _MIN_SPREAD:
            return 0.0, self._w / self._n
        slope = max(0.0, (self._nw - self._n * self._w) / spread)
        return self._w - slope * self._n, slope

    def expected_s(self, ahead: int) -> float:
        """Expected extra seconds behind ``ahead`` requests (0 with nobody ahead)."""
        if ahead <= 0:
            return 0.0
        intercept, slope = self.line()
        return max(0.0, intercept + slope * ahead)
