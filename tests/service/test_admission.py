"""Admission control: the latency budget refuses at once what could only be answered late, a reload
never makes it refuse, and a loaded bundle stays out of the garbage collector's full collections.

The controller's arithmetic is checked on a fake clock (no timed assertions); the service-level
tests use the tiny real bundle, real ONNX and the real Redis, and order events with the event loop
itself rather than with sleeps.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import shutil
import time
import weakref
from pathlib import Path

import pytest

from service.admission import RELIEVED, RELOAD_GRACE_S, SATURATED, AdmissionControl, WaitModel
from service.errors import Overloaded
from service.metrics import ServiceMetrics
from service.saturation import WINDOW_S, Saturation
from service.schemas import RecommendRequest
from service.state import ServiceState
from tests.service.conftest import RedisTarget, settings_for
from tests.training.export.tiny_run import TinyRun


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def taught(
    max_delay_ms: float,
    timeout_ms: float = 2000.0,
    metrics: ServiceMetrics | None = None,
    saturation: Saturation | None = None,
    clock: FakeClock | None = None,
) -> tuple[AdmissionControl, FakeClock]:
    """A controller that has seen a request take 10 ms alone and 40 ms behind one other (+30 ms)."""
    clock = clock or FakeClock()
    control = AdmissionControl(
        max_delay_ms, timeout_ms, metrics or ServiceMetrics(), saturation=saturation, clock=clock
    )
    with control.admit():
        clock.now += 0.010
    with control.admit(), control.admit():  # the inner one is admitted behind the outer one
        clock.now += 0.040
    return control, clock


def hold(stack: contextlib.ExitStack, control: AdmissionControl, n: int) -> None:
    for _ in range(n):
        stack.enter_context(control.admit())


def test_the_budget_refuses_at_once_and_admits_again_once_the_service_drains() -> None:
    metrics = ServiceMetrics()
    control, clock = taught(max_delay_ms=50, metrics=metrics)
    with contextlib.ExitStack() as stack:
        hold(stack, control, 1)
        assert control.estimated_wait_s == pytest.approx(0.030)  # within the 50 ms budget: admitted
        hold(stack, control, 1)
        assert control.in_service == 2 and control.estimated_wait_s == pytest.approx(0.060)
        with pytest.raises(Overloaded, match="2 requests ahead, about 60 ms"), control.admit():
            pytest.fail("admitted past the budget")
        assert control.in_service == 2, "a refused request never counts as in the service"
        assert metrics.rejected._value.get() == 1
        clock.now += 0.030
    with control.admit():  # drained: admitted again
        assert control.in_service == 1


def test_the_budget_applies_only_while_the_service_is_saturated() -> None:
    """A long expected wait while the decoder idles most of the time is a burst: admitted. Once the
    decoder has been busy without a break the budget refuses, and goes on refusing until the level has
    fallen below ``RELIEVED``, not merely below ``SATURATED`` (no flapping at one threshold)."""
    clock = FakeClock()
    saturation = Saturation(clock=clock, cpu_clock=lambda: 0.0)
    control, clock = taught(max_delay_ms=50, saturation=saturation, clock=clock)
    with contextlib.ExitStack() as stack:
        hold(stack, control, 2)
        assert control.estimated_wait_s == pytest.approx(0.060)  # over the 50 ms budget
        with control.admit():  # but the decoder has been idle: a burst, admitted
            pass
        saturation.begin()
        clock.now += 2 * WINDOW_S
        assert saturation.level >= SATURATED
        with pytest.raises(Overloaded), control.admit():
            pytest.fail("admitted past the budget while saturated")
        saturation.end()
        clock.now += 0.2 * WINDOW_S  # resting, but not long enough to count as relieved
        assert RELIEVED <= saturation.level < SATURATED
        with pytest.raises(Overloaded), control.admit():
            pytest.fail("the budget stopped at the first dip")
        clock.now += WINDOW_S
        assert saturation.level < RELIEVED
        with control.admit():
            pass


def test_the_wait_is_a_line_whose_intercept_is_paid_once() -> None:
    """Micro-batching: one ahead costs the running batch (+30 ms), four ahead only +50 ms. The line
    through both expects 90 ms behind ten; the old average per request ahead expected 3-4x that."""
    model = WaitModel()
    assert model.expected_s(3) == 0.0, "nothing learnt: no wait expected"
    model.learn(1, 0.030)
    assert model.expected_s(3) == pytest.approx(0.090), "one n seen: through the origin"
    for _ in range(200):
        model.learn(1, 0.030)
        model.learn(4, 0.050)
    intercept, slope = model.line()
    assert intercept == pytest.approx(0.070 / 3, rel=1e-3) and slope == pytest.approx(0.020 / 3, rel=1e-3)
    assert model.expected_s(10) == pytest.approx(0.090, rel=1e-3)
    assert model.expected_s(0) == 0.0

    noisy = WaitModel()  # more ahead measured faster: flat at the mean, never negative
    for _ in range(200):
        noisy.learn(2, 0.040)
        noisy.learn(6, 0.020)
    intercept, slope = noisy.line()
    assert slope == 0.0 and intercept == pytest.approx(0.030, rel=0.02)  # the (recency-weighted) mean
    assert noisy.expected_s(50) == intercept


def test_a_line_that_can_no_longer_learn_is_forgotten() -> None:
    """After an overload taught it 120 ms behind one request, the line refuses everyone behind
    another, so it never sees that they are quick again; once it has learnt nothing for a second in
    that state it is forgotten, and the next request behind another is admitted and teaches it."""
    control, clock = taught(max_delay_ms=50)
    control.max_delay_s = 1.0  # a budget that let the overload in (as the line rose past 50 ms)
    for _ in range(100):  # the overload: alone 10 ms, but +120 ms for the one admitted behind it
        first, second = control.admit(), control.admit()
        first.__enter__()
        second.__enter__()
        clock.now += 0.010
        first.__exit__(None, None, None)
        clock.now += 0.120
        second.__exit__(None, None, None)
    control.max_delay_s = 0.050
    with contextlib.ExitStack() as stack:
        hold(stack, control, 1)
        assert control.estimated_wait_s == pytest.approx(0.120, rel=0.01)
        clock.now += 0.9
        with pytest.raises(Overloaded), control.admit():
            pytest.fail("forgotten before a second without learning")
        clock.now += 0.2
        with control.admit():  # starved for over a second: forgotten, admitted
            assert control.estimated_wait_s == 0.0
            clock.now += 0.015  # behind one other it now takes +5 ms
    with contextlib.ExitStack() as stack:
        hold(stack, control, 1)
        assert control.estimated_wait_s == pytest.approx(0.005, rel=0.01)


def test_a_line_within_the_budget_is_kept_however_long_it_learns_nothing() -> None:
    control, clock = taught(max_delay_ms=50)
    clock.now += 60.0  # a quiet minute: requests only ever alone
    with contextlib.ExitStack() as stack:
        hold(stack, control, 1)
        assert control.estimated_wait_s == pytest.approx(0.030)


def test_without_a_budget_only_the_deadline_refuses() -> None:
    control, _ = taught(max_delay_ms=0, timeout_ms=50)
    with contextlib.ExitStack() as stack:
        hold(stack, control, 1)  # 30 ms expected: within the deadline
        with control.reloading():  # the deadline holds during a reload as well
            hold(stack, control, 1)
            with pytest.raises(Overloaded), control.admit():
                pytest.fail("admitted past the deadline")


def test_a_reload_pause_suspends_the_budget_and_teaches_nothing() -> None:
    control, clock = taught(max_delay_ms=50)
    with contextlib.ExitStack() as busy:
        hold(busy, control, 2)  # 60 ms expected: over the budget
        with pytest.raises(Overloaded), control.admit():
            pass
        with contextlib.ExitStack() as during:
            with control.reloading():
                assert control.reload_pause
                hold(during, control, 3)  # admitted although 60, 90, 120 ms are expected
                clock.now += 1.0  # the reload makes everything slow
            assert control.reload_pause, "requests that overlapped the reload are still in the service"
            hold(during, control, 1)  # so the budget is still suspended
        assert control.reload_pause  # the two held from before the reload overlapped it too
    assert not control.reload_pause
    with contextlib.ExitStack() as after:
        hold(after, control, 2)  # 60 ms expected, but admitted: a new bundle's first batches are slow
        clock.now += RELOAD_GRACE_S
    with contextlib.ExitStack() as after:
        hold(after, control, 1)
        assert control.estimated_wait_s == pytest.approx(0.030), "the slow reload taught nothing"
        hold(after, control, 1)
        with pytest.raises(Overloaded), control.admit():
            pass


@pytest.fixture
def bundle_root(tiny_run: TinyRun, tmp_path: Path) -> Path:
    root = tmp_path / "bundles"
    shutil.copytree(tiny_run.bundle, root / "a")
    return root


def test_a_request_arriving_during_a_reload_is_served_where_the_budget_would_refuse(
    bundle_root: Path, redis_target: RedisTarget
) -> None:
    settings = settings_for(
        bundle_root / "a",
        bundle_root=bundle_root,
        max_queue_delay_ms=5,
        redis_url=redis_target.url,
        redis_key_prefix=redis_target.prefix,
    )

    async def run() -> None:
        state = await ServiceState.open(settings, ServiceMetrics())
        try:
            control = state.admission
            request = RecommendRequest(history=state.bundle.catalogue.item_ids[:3], k=3)
            state.batcher.saturation.begin()  # as if the decoder had been busy: the budget applies
            await asyncio.sleep(2 * WINDOW_S)
            assert control.saturated
            with control.admit():
                pass
            with control.admit(), control.admit():  # each request ahead adds at least 20 ms
                time.sleep(0.02)
            with contextlib.ExitStack() as held:
                hold(held, control, 1)  # one request in the service: a new one expects >= 20 ms > 5 ms
                with pytest.raises(Overloaded):
                    await state.recommend(request)
                reload = asyncio.create_task(state.reload("a"))
                await asyncio.sleep(0)  # the reload starts and waits for its loader thread
                assert control.reload_pause
                served = await state.recommend(request)
                assert served.bundle_id == state.bundle.bundle_id and len(served.items) == 3
            await reload  # it returns once the requests that overlapped it are answered
            await asyncio.sleep(RELOAD_GRACE_S)
            with control.admit(), control.admit():  # (a second idle: the line is taught afresh)
                time.sleep(0.02)
            with control.admit(), pytest.raises(Overloaded):  # pause and grace over: the budget is back
                await state.recommend(request)
        finally:
            await state.close()

    asyncio.run(run())


def test_the_bundle_is_frozen_out_of_full_collections_and_a_replaced_one_is_freed(
    bundle_root: Path,
) -> None:
    async def run() -> None:
        settings = settings_for(bundle_root / "a", bundle_root=bundle_root)
        state = await ServiceState.open(settings, ServiceMetrics())
        try:
            assert gc.get_freeze_count() > 0
            replaced = weakref.ref(state.recommender)
            await state.reload("a")
            assert replaced() is None, "a replaced bundle must be freed once no request holds it"
        finally:
            await state.close()
        assert gc.get_freeze_count() == 0

    asyncio.run(run())


def test_a_late_event_loop_refuses_and_a_reload_pause_does_not() -> None:
    """The loop's lag counts as wait: a process too busy to read its sockets sheds at once. Blocking the
    loop guarantees lateness (more under load, never less), so the assertions cannot flake."""

    async def scenario() -> None:
        control = AdmissionControl(50.0, 2000.0, ServiceMetrics())
        control.start()
        await asyncio.sleep(0.02)  # the watcher is ticking
        time.sleep(0.3)  # the process does something else; no socket is read meanwhile
        await asyncio.sleep(0.001)  # the watcher wakes, 0.3 s late
        assert control.loop_lag_s > 0.1
        with pytest.raises(Overloaded), control.admit():
            pass
        with control.reloading():  # the same stop during a reload is the service's own work
            await asyncio.sleep(0.02)
            time.sleep(0.3)
            await asyncio.sleep(0.001)
            assert control.loop_lag_s == 0.0
        await asyncio.sleep(0.001)
        assert control.loop_lag_s < 0.05  # the tick that overlapped the reload measured nothing
        with control.admit():
            pass
        await control.stop()

    asyncio.run(scenario())
