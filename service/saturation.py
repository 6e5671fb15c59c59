"""How saturated the service has been lately: the signal that tells an overload from a burst.

A latency budget that refuses whatever would wait too long also refuses the odd slow moment at a
normal load (a garbage collection, a stalled virtual CPU, ten requests arriving at once), and each of
those refusals is a request the service would have answered well within its deadline. What an
overload has and a burst does not is a service that never gets a break: at twice the rated load the
decoder always has a batch, or the process uses every CPU it has; at the rated load both idle a good
part of every second. ``Saturation`` measures both shares of wall time, each exponentially weighted
over about ``WINDOW_S``, and reports the larger, so admission (``service.admission``) can apply its
budget only while the service is saturated.

Both are watched. On a GPU, or with CPUs to spare, the decoder is the bottleneck and its busy share
says when it is full. With the event loop and the decoder sharing one core, the core is: the decoder
idles while the loop answers the batch it just finished and reads the next requests, so its busy
share alone understates how full the service is.

With several batch workers the decoder's busy level is the share of workers decoding. The batcher
counts a worker busy from the moment it takes a batch's first request (gathering the rest is part of
that batch's time) until the batch is answered.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable

__all__ = ["WINDOW_S", "Saturation"]

#: time constant of the weighting: a service busy without a break for this long from half-busy reads
#: 0.82, for twice as long 0.93; an idle moment of a few milliseconds barely moves it
WINDOW_S = 0.25


class Saturation:
    def __init__(
        self,
        workers: int = 1,
        cpus: float = 1.0,
        clock: Callable[[], float] = time.perf_counter,
        cpu_clock: Callable[[], float] = time.process_time,
    ) -> None:
        """``workers``: batches that can decode at once; ``cpus``: CPUs the process may use;
        ``clock``/``cpu_clock``: wall and process CPU seconds (seams for tests)."""
        if workers < 1 or cpus <= 0:
            raise ValueError(f"workers must be >= 1 and cpus > 0, got {workers} and {cpus}")
        self._workers = workers
        self._cpus = cpus
        self._clock = clock
        self._cpu_clock = cpu_clock
        self._running = 0
        self._decoder = self._cpu = 0.0
        self._since, self._cpu_since = clock(), cpu_clock()

    def begin(self) -> None:
        """A worker took a batch."""
        self._advance()
        self._running += 1

    def end(self) -> None:
        """A worker finished its batch."""
        self._advance()
        self._running = max(0, self._running - 1)

    @property
    def level(self) -> float:
        """Recent share of wall time the decoder was busy or the CPUs were, whichever is larger."""
        self._advance()
        return max(self._decoder, self._cpu)

    def _advance(self) -> None:
        now, cpu_now = self._clock(), self._cpu_clock()
        elapsed = now - self._since
        if elapsed <= 0:
            return
        keep = math.exp(-elapsed / WINDOW_S)
        decoding = min(1.0, self._running / self._workers)
        computing = min(1.0, (cpu_now - self._cpu_since) / (elapsed * self._cpus))
        self._decoder = keep * self._decoder + (1 - keep) * decoding
        self._cpu = keep * self._cpu + (1 - keep) * computing
        self._since, self._cpu_since = now, cpu_now
