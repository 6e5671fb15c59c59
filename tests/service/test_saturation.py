"""Saturation: the recent busy share of the decoder and of the CPUs, on fake clocks (no timing)."""

from __future__ import annotations

import math

import pytest

from service.saturation import WINDOW_S, Saturation


class Clocks:
    """A wall clock and a process CPU clock moved by hand."""

    def __init__(self) -> None:
        self.wall = 0.0
        self.cpu = 0.0

    def run(self, seconds: float, cpu_share: float = 0.0) -> None:
        self.wall += seconds
        self.cpu += seconds * cpu_share


def saturation(workers: int = 1, cpus: float = 1.0) -> tuple[Saturation, Clocks]:
    clocks = Clocks()
    return Saturation(workers, cpus, clock=lambda: clocks.wall, cpu_clock=lambda: clocks.cpu), clocks


def test_an_idle_service_reads_zero_and_a_busy_decoder_approaches_one() -> None:
    level, clocks = saturation()
    clocks.run(5.0)
    assert level.level == 0.0
    level.begin()
    clocks.run(WINDOW_S)
    assert level.level == pytest.approx(1 - math.exp(-1))
    clocks.run(4 * WINDOW_S)
    assert level.level == pytest.approx(1 - math.exp(-5))
    level.end()
    clocks.run(WINDOW_S)
    assert level.level == pytest.approx((1 - math.exp(-5)) * math.exp(-1))


def test_a_short_gap_between_batches_barely_moves_it() -> None:
    level, clocks = saturation()
    level.begin()
    clocks.run(10 * WINDOW_S)
    level.end()
    clocks.run(0.005)  # the event loop answers the batch and gathers the next one
    level.begin()
    assert level.level > 0.97


def test_the_cpu_share_counts_when_the_decoder_is_idle() -> None:
    """One core shared by the event loop and the decoder: the core is full while the decoder waits."""
    level, clocks = saturation(cpus=1.0)
    clocks.run(10 * WINDOW_S, cpu_share=1.0)
    assert level.level == pytest.approx(1.0, abs=1e-4)
    two_cores, clocks = saturation(cpus=2.0)
    clocks.run(10 * WINDOW_S, cpu_share=1.0)  # one of two CPUs busy
    assert two_cores.level == pytest.approx(0.5, abs=1e-4)


def test_with_two_workers_one_busy_is_half_saturated() -> None:
    level, clocks = saturation(workers=2)
    level.begin()
    clocks.run(10 * WINDOW_S)
    assert level.level == pytest.approx(0.5, abs=1e-4)
    level.begin()
    clocks.run(10 * WINDOW_S)
    assert level.level == pytest.approx(1.0, abs=1e-4)
    for _ in range(3):  # more ends than begins never reads below idle
        level.end()
    clocks.run(10 * WINDOW_S)
    assert level.level == pytest.approx(0.0, abs=1e-4)


def test_nonsense_sizes_are_refused() -> None:
    with pytest.raises(ValueError, match="workers must be >= 1"):
        Saturation(workers=0)
    with pytest.raises(ValueError, match="cpus > 0"):
        Saturation(cpus=0)
