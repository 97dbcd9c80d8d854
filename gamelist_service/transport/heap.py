"""Keep CPython's full garbage collections off the connections' objects: gc.freeze as connections grow.

Each connection holds a few hundred objects the collector tracks, and CPython 3.11 runs a full (generation 2)
collection whenever the objects that survived into the oldest generation have grown by a quarter. While clients
connect, that happens again and again, each time over every connection held, with the event loop stopped (no
broadcast, no ack, no ping meanwhile; how long at 10,000 clients: bench/README.md, Garbage collection).

gc.freeze() moves every object the collector tracks to a permanent generation it never scans (an O(1) splice).
HeapPolicy collects what is not frozen (cheap: only what was allocated since the last freeze) and freezes the
survivors, every `freeze_every_s` seconds and whenever the connections open have grown by `grow` since the last
freeze. So CPython's own collections only ever look at the objects of the last few seconds (without the periodic
freeze, the connections' steady churn brings full collections back within a minute). What a freeze costs: objects that become cyclic garbage while frozen are not
freed. So when connections have closed (a `closed` fraction of those open), or every `full_every_s` seconds, it
unfreezes, runs one full collection (the stop CPython would make anyway; logged with its duration) and freezes
again.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

logger = logging.getLogger('gamelist_service.transport.heap')


@dataclass
class HeapPolicy:
    freeze_every_s: float = 10.0
    grow: float = 0.1  # freeze at once when open connections grew by this fraction (and min_grow) since the last
    min_grow: int = 200
    closed: float = 0.25  # a full collection when this fraction of the open connections (and min_grow) has closed
    full_every_s: float = 600.0  # ... and at least this often while anything is frozen
    clock: Callable[[], float] = time.monotonic
    frozen_at: int = -1  # connections open at the last freeze (-1: nothing frozen by us)
    closed_at_full: int = 0  # connections closed in all, at the last full collection
    last_freeze: float = 0.0
    last_full: float = 0.0
    freezes: int = 0
    fulls: int = 0

    def __post_init__(self) -> None:
        self.last_freeze = self.last_full = self.clock()

    def step(self, open_now: int, closed_total: int) -> str | None:
        """Decide and act, given the open connections and the closed ones so far: 'freeze', 'full' or None."""
        now = self.clock()
        if self.frozen_at >= 0:
            closed_since = closed_total - self.closed_at_full
            many_closed = closed_since >= max(self.min_grow, self.closed * open_now)
            if many_closed or now - self.last_full >= self.full_every_s:
                self._full(open_now, closed_total)
                return 'full'
        grown = open_now - max(self.frozen_at, 0) >= max(self.min_grow, self.grow * max(self.frozen_at, 0))
        if grown or now - self.last_freeze >= self.freeze_every_s:
            gc.collect()  # what is not frozen yet: garbage among it is freed, not frozen
            gc.freeze()
            self.frozen_at = open_now
            self.last_freeze = now
            self.freezes += 1
            return 'freeze'
        return None

    def _full(self, open_now: int, closed_total: int) -> None:
        started = time.perf_counter()
        gc.unfreeze()
        collected = gc.collect()
        gc.freeze()
        self.frozen_at = open_now
        self.closed_at_full = closed_total
        self.last_full = self.last_freeze = self.clock()
        self.fulls += 1
        logger.info(
            'full garbage collection with %d connections open: %d objects freed in %.0f ms',
            open_now,
            collected,
            (time.perf_counter() - started) * 1e3,
        )

    def release(self) -> None:
        """Give every frozen object back to the collector (at stop)."""
        if self.frozen_at >= 0:
            gc.unfreeze()
            self.frozen_at = -1


async def run(policy: HeapPolicy, counts: Callable[[], tuple[int, int]], every_s: float = 1.0) -> None:
    """Apply the policy every every_s seconds; counts() gives (connections open, connections closed so far)."""
    try:
        while True:
            await asyncio.sleep(every_s)
            policy.step(*counts())
    finally:
        policy.release()
