"""The event-loop stall watch: a callback that blocks the loop shows as lag, in the metrics and in one log line."""

from __future__ import annotations

import asyncio
import logging
import time

import pytest

from gamelist_service import metrics
from gamelist_service.web import stalls


async def test_a_blocked_loop_is_measured_and_logged(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger='gamelist_service.web.stalls')
    observed_before = metrics.LOOP_LAG._sum.get()
    watcher = asyncio.get_running_loop().create_task(stalls.watch(every_s=0.02, warn_s=0.1))
    try:
        await asyncio.sleep(0.05)
        time.sleep(0.3)  # noqa: ASYNC251 - the stall under test: the loop is blocked on purpose
        for _ in range(100):
            if any('event loop stopped' in r.getMessage() for r in caplog.records):
                break
            await asyncio.sleep(0.02)
    finally:
        watcher.cancel()
        await asyncio.gather(watcher, return_exceptions=True)
    assert metrics.LOOP_STALL_MAX._value.get() >= 0.25
    assert metrics.LOOP_LAG._sum.get() - observed_before >= 0.25
    (line,) = [r.getMessage() for r in caplog.records if 'event loop stopped' in r.getMessage()]
    assert line.startswith(('the event loop stopped for 0.', 'the event loop stopped for 1.'))
