"""Who runs the schedules: one process among all workers and instances on a Redis, chosen by a fenced lease."""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import uuid
from collections.abc import Awaitable, Callable

from .. import metrics
from ..config.settings import ScheduleSettings
from ..errors import GamelistError
from ..storage.store import Store
from .scheduler import LOST_LEASE, RunLedger, definition_hash

logger = logging.getLogger('gamelist_service.core.leadership')


def process_identity(port: int) -> str:
    """host:port:pid:random, unique per process and per start."""
    return f'{socket.gethostname()}:{port}:{os.getpid()}:{uuid.uuid4().hex[:8]}'


class Leadership:
    """Holds the lease `gamelist:leader` while alive: renewed every third of its period, given up on stop.

    Followers try to take it at the same pace, so after a leader dies another takes over within
    lease + lease/3. The lease value carries an epoch from INCR: writes on a schedule and run claims are
    fenced with it in Redis, so a paused old leader cannot write once its lease has gone.
    """

    def __init__(
        self,
        store: Store,
        identity: str,
        lease_s: float,
        on_gain: Callable[[], None],
        on_loss: Callable[[], Awaitable[None]],
    ) -> None:
        self.store = store
        self.identity = identity
        self.lease_s = lease_s
        self._on_gain = on_gain
        self._on_loss = on_loss
        self.value: str | None = None
        self._renewed_at = 0.0
        self.changed = asyncio.Event()

    @property
    def leading(self) -> bool:
        return self.value is not None

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            try:
                if self.value is None:
                    value = await self.store.acquire_lease(self.identity, self.lease_s)
                    if value is not None:
                        self.value, self._renewed_at = value, loop.time()
                        logger.info('this process leads the schedules (lease %s)', value)
                        self._changed()
                        self._on_gain()
                elif await self.store.renew_lease(self.value, self.lease_s):
                    self._renewed_at = loop.time()
                else:
                    await self._lose('the lease was taken over or expired')
            except GamelistError as exc:
                logger.warning('scheduler lease: %s', exc)
                if self.value is not None and loop.time() - self._renewed_at >= self.lease_s:
                    await self._lose('it could not be renewed in time')
            await asyncio.sleep(self.lease_s / 3)

    async def _lose(self, why: str) -> None:
        logger.warning('this process no longer leads the schedules: %s', why)
        self.value = None
        self._changed()
        await self._on_loss()

    def _changed(self) -> None:
        metrics.LEADER.set(1 if self.value is not None else 0)
        self.changed.set()
        self.changed = asyncio.Event()

    async def release(self) -> None:
        """Give the lease up at once, so another process takes over without waiting for it to expire."""
        value, self.value = self.value, None
        if value is not None:
            try:
                await self.store.release_lease(value)
                logger.info('scheduler lease released')
            except GamelistError as exc:
                logger.warning('could not release the scheduler lease: %s', exc)


class RedisLedger(RunLedger):
    """Schedule runs counted in Redis, under the lease: max_runs and the rhythm survive a change of leader."""

    def __init__(self, store: Store, leadership: Leadership) -> None:
        self.store = store
        self.leadership = leadership

    async def load(self, schedule: ScheduleSettings) -> tuple[int, float | None]:
        return await self.store.schedule_state(schedule.name, definition_hash(schedule))

    async def claim(self, schedule: ScheduleSettings, now_wall: float) -> int:
        fence = self.leadership.value
        if fence is None:
            return LOST_LEASE
        return await self.store.claim_run(
            schedule.name, definition_hash(schedule), fence, now_wall, schedule.max_runs or 0
        )
