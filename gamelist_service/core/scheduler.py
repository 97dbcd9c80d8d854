"""The built-in scheduler: one task per schedule, anchored to a monotonic clock, never overlapping itself."""

from __future__ import annotations

import asyncio
import hashlib
import logging
import math
import random
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Protocol

from ..config.settings import ScheduleSettings

logger = logging.getLogger('gamelist_service.core.scheduler')

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

    def first(self, last_wall: float | None = None) -> float:
        """The first due time; after a run recorded elsewhere (another leader), the rhythm continues from it."""
        now = self.clock.monotonic()
        self.anchor = now
        if last_wall is None:
            return now if self.schedule.run_at_start else self.after(now)
        if self.schedule.interval_s is not None:
            self.anchor = now + max(0.0, last_wall + self.schedule.interval_s - self.clock.wall())
            return self.anchor
        self.last_slot_wall = last_wall
        return self.after(now)

    def after(self, now: float) -> float:
        """The first due time strictly after now: slots that passed while a run was busy are skipped, not queued."""
        if self.schedule.interval_s is not None:
            interval = self.schedule.interval_s
            slots = math.floor((now - self.anchor) / interval) + 1
            return self.anchor + slots * interval
        assert self.schedule.cron is not None
        # imported when the file was loaded (config/loader.py checks each cron expression with it), not in the loop
        from croniter import croniter  # noqa: PLC0415

        wall_now = self.clock.wall()
        # never the slot just run, even if the sleep woke a little before it on the wall clock
        start = datetime.fromtimestamp(max(wall_now, self.last_slot_wall), UTC)
        next_wall = float(croniter(self.schedule.cron, start).get_next(float))
        self.last_slot_wall = next_wall
        return now + max(0.0, next_wall - wall_now)

    def jitter(self) -> float:
        return self.rng.uniform(0.0, self.schedule.jitter_s) if self.schedule.jitter_s > 0 else 0.0


class RunLedger(Protocol):
    """Where a schedule's runs are counted. In memory for one process; in Redis, under the lease, for many."""

    async def load(self, schedule: ScheduleSettings) -> tuple[int, float | None]:
        """(runs so far, wall time of the last run or None)."""
        ...

    async def claim(self, schedule: ScheduleSettings, now_wall: float) -> int:
        """Record the next run: its number; LOST_LEASE or MAX_RUNS_REACHED when it must not run."""
        ...


LOST_LEASE = -1
MAX_RUNS_REACHED = -2


class MemoryLedger:
    """Counts runs in this process only (tests, and a scheduler without Redis)."""

    def __init__(self) -> None:
        self._runs: dict[str, tuple[str, int, float | None]] = {}

    async def load(self, schedule: ScheduleSettings) -> tuple[int, float | None]:
        definition, runs, last = self._runs.get(schedule.name, ('', 0, None))
        return (runs, last) if definition == definition_hash(schedule) else (0, None)

    async def claim(self, schedule: ScheduleSettings, now_wall: float) -> int:
        runs, _ = await self.load(schedule)
        if schedule.max_runs is not None and runs >= schedule.max_runs:
            return MAX_RUNS_REACHED
        self._runs[schedule.name] = (definition_hash(schedule), runs + 1, now_wall)
        return runs + 1


def definition_hash(schedule: ScheduleSettings) -> str:
    """Identifies a schedule's definition: a reload that changes it starts it afresh."""
    return hashlib.sha256(repr(schedule).encode()).hexdigest()[:16]


class Scheduler:
    """Runs each schedule's callback at its times; a failing run is logged and the next one still happens."""

    def __init__(
        self,
        run: RunFn,
        *,
        clock: Clock | None = None,
        rng: random.Random | None = None,
        ledger: RunLedger | None = None,
    ) -> None:
        self._run = run
        self.clock = clock or SystemClock()
        self._rng = rng or random.Random()
        self.ledger: RunLedger = ledger or MemoryLedger()
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._schedules: dict[str, ScheduleSettings] = {}
        self._busy: set[str] = set()
        self._retiring: set[asyncio.Task[None]] = set()
        self.state: dict[str, ScheduleState] = {}

    def start(self, schedules: Iterable[ScheduleSettings]) -> None:
        """Start a task per schedule; call once (stop() first to start again)."""
        for schedule in schedules:
            self._start_one(schedule)

    def _start_one(self, schedule: ScheduleSettings) -> None:
        self.state[schedule.name] = ScheduleState()
        self._schedules[schedule.name] = schedule
        task = asyncio.get_running_loop().create_task(self._loop(schedule), name=f'schedule:{schedule.name}')
        self._tasks[schedule.name] = task
        logger.info(
            'schedule %s started: list %s, %s%s',
            schedule.name,
            schedule.list,
            _describe(schedule),
            f', max {schedule.max_runs} runs' if schedule.max_runs else '',
        )

    def update(self, schedules: Iterable[ScheduleSettings]) -> dict[str, list[str]]:
        """Apply a new set of schedules: unchanged ones keep their rhythm, changed ones restart, removed ones stop.

        A run in progress is never cut short: its schedule retires after it finishes.
        """
        wanted = {schedule.name: schedule for schedule in schedules}
        changes: dict[str, list[str]] = {'kept': [], 'restarted': [], 'stopped': [], 'started': []}
        for name in list(self._schedules):
            if name in wanted and wanted[name] == self._schedules[name]:
                changes['kept'].append(name)
                continue
            self._retire(name)
            changes['restarted' if name in wanted else 'stopped'].append(name)
        for name, schedule in wanted.items():
            if name not in self._schedules:
                if name not in changes['restarted']:
                    changes['started'].append(name)
                self._start_one(schedule)
        return changes

    def _retire(self, name: str) -> None:
        task = self._tasks.pop(name)
        del self._schedules[name]
        if name in self._busy:
            self._retiring.add(task)  # its loop sees it is no longer current and ends after the run
            task.add_done_callback(self._retiring.discard)
        else:
            task.cancel()
        logger.info('schedule %s stopped', name)

    async def stop(self) -> None:
        """Cancel every schedule and wait for them; a run in progress is cancelled too."""
        tasks = [*self._tasks.values(), *self._retiring]
        self._tasks.clear()
        self._schedules.clear()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    @property
    def running(self) -> list[str]:
        return [name for name, task in self._tasks.items() if not task.done()]

    async def wait(self) -> None:
        """Wait until every schedule has finished (all reached max_runs)."""
        await asyncio.gather(*self._tasks.values(), return_exceptions=True)

    def _current(self, schedule: ScheduleSettings) -> bool:
        task = self._tasks.get(schedule.name)
        return task is not None and task is asyncio.current_task()

    async def _loop(self, schedule: ScheduleSettings) -> None:
        state = self.state[schedule.name]
        plan = _Plan(schedule, self.clock, self._rng)
        state.runs, last_wall = await self._load(schedule)
        due = plan.first(last_wall)
        while self._current(schedule) and (schedule.max_runs is None or state.runs < schedule.max_runs):
            delay = due - self.clock.monotonic() + plan.jitter()
            if delay > 0:
                await self.clock.sleep(delay)
            self._busy.add(schedule.name)
            try:
                if not await self._tick(schedule, state):
                    return
            finally:
                self._busy.discard(schedule.name)
            due = plan.after(max(due, self.clock.monotonic()))
        if self._current(schedule):
            state.done = True
            logger.info('schedule %s finished after %d runs (max_runs)', schedule.name, state.runs)

    async def _load(self, schedule: ScheduleSettings) -> tuple[int, float | None]:
        try:
            return await self.ledger.load(schedule)
        except Exception as exc:  # noqa: BLE001 - no history (Redis down): start afresh rather than not at all
            logger.warning('schedule %s: could not read its past runs (%s); starting afresh', schedule.name, exc)
            return 0, None

    async def _tick(self, schedule: ScheduleSettings, state: ScheduleState) -> bool:
        """One run; False when the schedule must end (lease lost, max_runs reached elsewhere)."""
        started = self.clock.monotonic()
        logger.debug('schedule %s: run starting', schedule.name)
        try:
            number = await self.ledger.claim(schedule, self.clock.wall())
            if number == LOST_LEASE:
                logger.warning('schedule %s: this process no longer leads; it stops here', schedule.name)
                return False
            if number == MAX_RUNS_REACHED:
                state.runs = schedule.max_runs or state.runs
                state.done = True
                return False
            state.runs = number
            state.last_run_wall = self.clock.wall()
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
        return True


def _describe(schedule: ScheduleSettings) -> str:
    if schedule.interval_s is not None:
        return f'every {schedule.interval_s:g}s'
    return f'cron {schedule.cron!r} (UTC)'
