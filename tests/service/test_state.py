"""The service's lifecycle: shutdown ends in bounded time whatever one of its parts does."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time

import pytest

from service.state import finish_within


async def _swallows_one_cancellation() -> None:
    """Like a loop that catches the cancellation meant for it (asyncio.wait_for's race in 3.11)."""
    with contextlib.suppress(asyncio.CancelledError):
        await asyncio.sleep(3600)
    await asyncio.sleep(3600)


def test_a_shutdown_part_that_never_ends_is_abandoned_in_time(caplog: pytest.LogCaptureFixture) -> None:
    async def scenario() -> tuple[bool, float, bool]:
        stuck = asyncio.ensure_future(_swallows_one_cancellation())
        started = time.perf_counter()
        finished = await finish_within("the stuck part", stuck, 0.3)
        took = time.perf_counter() - started
        await asyncio.sleep(0.05)
        still_running = not stuck.done()  # it swallowed the cancellation: it was left behind, not awaited
        stuck.cancel()
        await asyncio.wait({stuck})
        return finished, took, still_running

    with caplog.at_level(logging.ERROR, logger="sidrec.service"):
        finished, took, still_running = asyncio.run(scenario())
    assert not finished and still_running and took < 2.0
    assert "the stuck part did not finish" in caplog.text and "_swallows_one_cancellation" in caplog.text


def test_a_shutdown_part_that_ends_or_fails_is_awaited(caplog: pytest.LogCaptureFixture) -> None:
    async def quick() -> None:
        await asyncio.sleep(0.01)

    async def broken() -> None:
        raise RuntimeError("the part broke")

    async def scenario() -> tuple[bool, bool]:
        return await finish_within("quick", quick(), 5), await finish_within("broken", broken(), 5)

    with caplog.at_level(logging.ERROR, logger="sidrec.service"):
        assert asyncio.run(scenario()) == (True, True)
    assert "shutdown: broken failed" in caplog.text and "the part broke" in caplog.text
