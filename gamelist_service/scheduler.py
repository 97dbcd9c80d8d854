"""The built-in scheduler: one task per schedule, anchored to a monotonic clock, never overlapping itself."""

from __future__ import annotations

import asyncio
import logging
import math
import random
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Protocol

from croniter import croniter

from .settings import ScheduleSettings

logger = logging.getLogger('gamelist_service.scheduler')

RunFn = Callable[[ScheduleSettings], Awaitable[object]]


class Clock(Protocol):
    """What the scheduler needs of time; tests pass a clock they control."""

    def monotonic(self) -> float: ...

    def wall(self) -> float: ...

    async def sleep(self, seconds: float) -> None: ...


class SystemClock:
    def monotonic(self) -> float:
        return time.monotonic()

    def wall(self) -> float:
        return time.time()

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(max(0.0, seconds))


@dataclass(slots=True)
class ScheduleState:
    """What a schedule has done so far (for logs, /ready and tests)."""

    runs: int = 0
    failures: int = 0
    last_error: str | None = None
    last_run_wall: float | None = None
    done: bool = False


@dataclass(slots=True)
class _Plan:
    """When a schedule's runs are due, on the monotonic clock."""

    schedule: ScheduleSettings
    clock: Clock
    rng: random.Random
    anchor: float = field(default=0.0)
    last_slot_wall: float = field(default=0.0)

    def first(self) -> float:
        now = self.clock.monotonic()
        self.anchor = now
        return now if self.schedule.run_at_start else self.after(now)

    def after(self, now: float) -> float:
        """The first due time strictly after now: slots that passed while a run was busy are skipped, not queued."""
        if self.schedule.interval_s is not None:
            interval = self.schedule.interval_s
            slots = math.floor((now - self.anchor) / interval) + 1
            return self.anchor + slots * interval
        assert self.schedule.cron is not None
        wall_now = self.clock.wall()
        # never the slot just run, even if the sleep woke a little before it on the wall clock
        start = datetime.fromtimestamp(max(wall_now, self.last_slot_wall), UTC)
        next_wall = float(croniter(self.schedule.cron, start).get_next(float))
        self.last_slot_wall = next_wall
        return now + max(0.0, next_wall - wall_now)

    def jitter(self) -> float:
        return self.rng.uniform(0.0, self.schedule.jitter_s) if self.schedule.jitter_s > 0 else 0.0


class Scheduler:
    """Runs each schedule's callback at its times; a failing run is logged and the next one still happens."""

    def __init__(self, run: RunFn, *, clock: Clock | None = None, rng: random.Random | None = None) -> None:
        self._run = run
        self.clock = clock or SystemClock()
        self._rng = rng or random.Random()
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self.state: dict[str, ScheduleState] = {}

    def start(self, schedules: Iterable[ScheduleSettings]) -> None:
        """Start a task per schedule; call once (stop() first to start again)."""
        for schedule in schedules:
            self.state[schedule.name] = ScheduleState()
            task = asyncio.get_running_loop().create_task(self._loop(schedule), name=f'schedule:{schedule.name}')
            self._tasks[schedule.name] = task
            logger.info(
                'schedule %s started: list %s, %s%s',
                schedule.name,
                schedule.list,
                _describe(schedule),
                f', max {schedule.max_runs} runs' if schedule.max_runs else '',
            )

    async def stop(self) -> None:
        """Cancel every schedule and wait for them; a run in progress is cancelled too."""
        tasks = list(self._tasks.values())
        self._tasks.clear()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    @property
    def running(self) -> list[str]:
        return [name for name, task in self._tasks.items() if not task.done()]

    async def wait(self) -> None:
        """Wait until every schedule has finished (all reached max_runs)."""
        await asyncio.gather(*self._tasks.values(), return_exceptions=True)

    async def _loop(self, schedule: ScheduleSettings) -> None:
        state = self.state[schedule.name]
        plan = _Plan(schedule, self.clock, self._rng)
        due = plan.first()
        while schedule.max_runs is None or state.runs < schedule.max_runs:
            delay = due - self.clock.monotonic() + plan.jitter()
            if delay > 0:
                await self.clock.sleep(delay)
            state.runs += 1
            state.last_run_wall = self.clock.wall()
            started = self.clock.monotonic()
            try:
                await self._run(schedule)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - a failed tick must never stop the schedule
                state.failures += 1
                state.last_error = f'{type(exc).__name__}: {exc}'
                logger.error('schedule %s run %d failed: %s', schedule.name, state.runs, state.last_error)
            else:
                state.last_error = None
                logger.debug(
                    'schedule %s run %d done in %.3fs', schedule.name, state.runs, self.clock.monotonic() - started
                )
            due = plan.after(max(due, self.clock.monotonic()))
        state.done = True
        logger.info('schedule %s finished after %d runs (max_runs)', schedule.name, state.runs)


def _describe(schedule: ScheduleSettings) -> str:
    if schedule.interval_s is not None:
        return f'every {schedule.interval_s:g}s'
    return f'cron {schedule.cron!r} (UTC)'
