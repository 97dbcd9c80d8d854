"""How long the event loop stops: every callback that runs long (a full garbage collection, a burst of pings, a big
broadcast) delays everything else in the process, broadcasts and acks included.

watch() wakes every `every_s` and measures how late it woke: that lateness is the longest stall of the interval, to
within the interval. Each is observed in a histogram (gamelist_event_loop_lag_seconds), the longest since start is
a gauge (gamelist_event_loop_stall_max_seconds), and a stall over `warn_s` is logged (at most one line per minute).
"""

from __future__ import annotations

import asyncio
import logging
import time

from .. import metrics
from ..logs import RateLimitedLog

logger = logging.getLogger('gamelist_service.web.stalls')
_warnings = RateLimitedLog(logger, interval_s=60.0)


async def watch(every_s: float = 0.1, warn_s: float = 1.0) -> None:
    """Run until cancelled."""
    longest = 0.0
    while True:
        started = time.monotonic()
        await asyncio.sleep(every_s)
        lag = max(0.0, time.monotonic() - started - every_s)
        metrics.LOOP_LAG.observe(lag)
        if lag > longest:
            longest = lag
            metrics.LOOP_STALL_MAX.set(lag)
        if lag > warn_s:
            _warnings.warning('stall', 'the event loop stopped for %.2f s (longest since start: %.2f s)', lag, longest)
