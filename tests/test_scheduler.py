"""Scheduler with a clock the tests control: exact slots, no drift, no overlap, failures, max_runs, jitter, cron."""

from __future__ import annotations

import asyncio
import itertools
import logging
import random
from datetime import UTC, datetime

import pytest

from gamelist_service.config.settings import ScheduleSettings
from gamelist_service.core.scheduler import Clock, Scheduler, SystemClock

WAIT_S = 5.0  # real seconds a fake-time test may take at most; every run is bounded by max_runs too
START_WALL = datetime(2026, 1, 1, 0, 1, 30, tzinfo=UTC).timestamp()


class FakeClock:
    """Monotonic and wall time that move only when someone sleeps on this clock or calls advance()."""

    def __init__(self, monotonic: float = 1000.0, wall: float = START_WALL, *, early_wake_s: float = 0.0) -> None:
        self.now = monotonic
        self._wall_offset = wall - monotonic
        self.early_wake_s = early_wake_s  # a sleep that ends this much before it should (a coarse timer)
        self.sleeps: list[float] = []

    def monotonic(self) -> float:
        return self.now

    def wall(self) -> float:
        return self.now + self._wall_offset

    def advance(self, seconds: float) -> None:
        self.now += seconds

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += max(0.0, seconds - self.early_wake_s)
        await asyncio.sleep(0)


def _check_clock(clock: Clock) -> Clock:
    return clock  # FakeClock must satisfy the Clock protocol (checked by mypy)


class Recorder:
    """A run callback that records when it ran (monotonic and wall) and how many runs overlapped."""

    def __init__(self, clock: FakeClock, *, duration_s: float = 0.0, sleep_in_run: bool = False) -> None:
        self.clock = clock
        self.duration_s = duration_s
        self.sleep_in_run = sleep_in_run
        self.times: list[float] = []
        self.walls: list[float] = []
        self.in_flight = 0
        self.max_in_flight = 0

    async def __call__(self, schedule: ScheduleSettings) -> None:
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            self.times.append(self.clock.monotonic())
            self.walls.append(self.clock.wall())
            if self.sleep_in_run:
                await self.clock.sleep(self.duration_s)  # yields to the loop while the run is busy
            else:
                self.clock.advance(self.duration_s)
                await asyncio.sleep(0)
        finally:
            self.in_flight -= 1


async def _run_to_end(scheduler: Scheduler, *schedules: ScheduleSettings) -> None:
    scheduler.start(schedules)
    try:
        await asyncio.wait_for(scheduler.wait(), WAIT_S)
    finally:
        await scheduler.stop()


def test_fake_clock_is_a_clock() -> None:
    clock = FakeClock(monotonic=5.0, wall=100.0)
    assert _check_clock(clock) is clock
    assert clock.monotonic() == 5.0
    assert clock.wall() == 100.0


async def test_fake_clock_sleep_advances_and_yields() -> None:
    clock = FakeClock(monotonic=0.0, wall=0.0)
    await clock.sleep(2.5)
    assert clock.monotonic() == 2.5
    assert clock.wall() == 2.5


async def test_interval_runs_are_anchored_and_do_not_drift() -> None:
    clock = FakeClock(monotonic=1000.0)
    record = Recorder(clock, duration_s=0.3)
    scheduler = Scheduler(record, clock=clock, rng=random.Random(1))
    schedule = ScheduleSettings('tick', 'current', interval_s=1.0, max_runs=20)

    await _run_to_end(scheduler, schedule)

    assert len(record.times) == 20
    # anchor + n * interval, however long each run took: run 20 is at +19 s, not at +19 * 1.3 s
    assert record.times == [pytest.approx(1000.0 + n * 1.0, abs=1e-9) for n in range(20)]
    assert clock.sleeps == [pytest.approx(0.7, abs=1e-9)] * 19


async def test_interval_runs_exact_with_binary_fractions() -> None:
    clock = FakeClock(monotonic=0.0)
    record = Recorder(clock, duration_s=0.25, sleep_in_run=True)
    scheduler = Scheduler(record, clock=clock)
    schedule = ScheduleSettings('tick', 'current', interval_s=0.5, max_runs=8)

    await _run_to_end(scheduler, schedule)

    assert record.times == [n * 0.5 for n in range(8)]


async def test_overrun_skips_missed_slots_and_never_overlaps() -> None:
    clock = FakeClock(monotonic=0.0)
    record = Recorder(clock, duration_s=2.5, sleep_in_run=True)
    scheduler = Scheduler(record, clock=clock)
    schedule = ScheduleSettings('slow', 'current', interval_s=1.0, max_runs=4)

    await _run_to_end(scheduler, schedule)

    # each run ends at +2.5 s: slots 1 and 2 are skipped, not queued, and the next run waits for slot 3
    assert record.times == [0.0, 3.0, 6.0, 9.0]
    assert record.max_in_flight == 1
    assert scheduler.state['slow'].runs == 4


async def test_failing_run_is_logged_and_the_next_run_happens(caplog: pytest.LogCaptureFixture) -> None:
    clock = FakeClock(monotonic=0.0)
    times: list[float] = []

    async def run(schedule: ScheduleSettings) -> None:
        times.append(clock.monotonic())
        if len(times) == 1:
            raise RuntimeError('redis went away')

    scheduler = Scheduler(run, clock=clock)
    schedule = ScheduleSettings('flaky', 'current', interval_s=2.0, max_runs=3)
    with caplog.at_level(logging.ERROR, logger='gamelist_service.core.scheduler'):
        await _run_to_end(scheduler, schedule)

    assert times == [0.0, 2.0, 4.0]
    state = scheduler.state['flaky']
    assert state.runs == 3
    assert state.failures == 1
    assert state.last_error is None  # cleared by the runs that succeeded
    errors = [r for r in caplog.records if r.name == 'gamelist_service.core.scheduler' and r.levelno == logging.ERROR]
    assert len(errors) == 1
    assert 'flaky' in errors[0].getMessage()
    assert 'RuntimeError: redis went away' in errors[0].getMessage()


async def test_last_error_kept_while_runs_fail() -> None:
    clock = FakeClock(monotonic=0.0)

    async def run(schedule: ScheduleSettings) -> None:
        raise ValueError(f'bad list {schedule.list}')

    scheduler = Scheduler(run, clock=clock)
    await _run_to_end(scheduler, ScheduleSettings('broken', 'current', interval_s=1.0, max_runs=2))

    state = scheduler.state['broken']
    assert (state.runs, state.failures, state.done) == (2, 2, True)
    assert state.last_error == 'ValueError: bad list current'


async def test_max_runs_is_honoured() -> None:
    clock = FakeClock(monotonic=0.0)
    record = Recorder(clock)
    scheduler = Scheduler(record, clock=clock)
    schedule = ScheduleSettings('limited', 'current', interval_s=30.0, max_runs=5)

    scheduler.start([schedule])
    assert scheduler.running == ['limited']
    await asyncio.wait_for(scheduler.wait(), WAIT_S)

    state = scheduler.state['limited']
    assert state.done
    assert state.runs == 5
    assert len(record.times) == 5
    assert state.last_run_wall == pytest.approx(START_WALL + 4 * 30.0)
    assert scheduler.running == []
    await scheduler.stop()


async def test_run_at_start_false_waits_one_interval() -> None:
    clock = FakeClock(monotonic=50.0)
    record = Recorder(clock)
    scheduler = Scheduler(record, clock=clock)
    schedule = ScheduleSettings('later', 'current', interval_s=10.0, max_runs=3, run_at_start=False)

    await _run_to_end(scheduler, schedule)

    assert record.times == [60.0, 70.0, 80.0]


async def test_run_at_start_true_runs_immediately() -> None:
    clock = FakeClock(monotonic=50.0)
    record = Recorder(clock)
    scheduler = Scheduler(record, clock=clock)

    await _run_to_end(scheduler, ScheduleSettings('now', 'current', interval_s=10.0, max_runs=2))

    assert record.times == [50.0, 60.0]
    assert clock.sleeps == [10.0]


async def test_jitter_stays_within_bounds() -> None:
    clock = FakeClock(monotonic=0.0)
    record = Recorder(clock)
    scheduler = Scheduler(record, clock=clock, rng=random.Random(42))
    schedule = ScheduleSettings('jittery', 'current', interval_s=10.0, jitter_s=2.0, max_runs=50)

    await _run_to_end(scheduler, schedule)

    assert len(record.times) == 50
    offsets = [t - n * 10.0 for n, t in enumerate(record.times)]
    assert all(-1e-9 <= offset <= 2.0 + 1e-9 for offset in offsets), offsets
    assert len({round(offset, 6) for offset in offsets}) > 10  # jitter is applied, and differs per run
    # jitter delays a run but never moves the anchor: run n stays in its own slot
    assert all(n * 10.0 <= t < (n + 1) * 10.0 for n, t in enumerate(record.times))


async def test_jitter_is_reproducible_with_a_seeded_rng() -> None:
    runs: list[list[float]] = []
    for _ in range(2):
        clock = FakeClock(monotonic=0.0)
        record = Recorder(clock)
        scheduler = Scheduler(record, clock=clock, rng=random.Random(7))
        await _run_to_end(scheduler, ScheduleSettings('j', 'current', interval_s=1.0, jitter_s=0.5, max_runs=5))
        runs.append(record.times)
    assert runs[0] == runs[1]


async def test_cron_fires_at_wall_clock_slots() -> None:
    clock = FakeClock(monotonic=0.0, wall=START_WALL)  # 2026-01-01T00:01:30Z
    record = Recorder(clock, duration_s=4.0)
    scheduler = Scheduler(record, clock=clock)
    schedule = ScheduleSettings('cron', 'current', cron='*/5 * * * *', max_runs=4, run_at_start=False)

    await _run_to_end(scheduler, schedule)

    fired = [datetime.fromtimestamp(wall, UTC).isoformat() for wall in record.walls]
    assert fired == [
        '2026-01-01T00:05:00+00:00',
        '2026-01-01T00:10:00+00:00',
        '2026-01-01T00:15:00+00:00',
        '2026-01-01T00:20:00+00:00',
    ]


async def test_cron_run_at_start_runs_now_then_on_slots() -> None:
    clock = FakeClock(monotonic=0.0, wall=START_WALL)
    record = Recorder(clock)
    scheduler = Scheduler(record, clock=clock)
    schedule = ScheduleSettings('cron', 'current', cron='*/5 * * * *', max_runs=3)

    await _run_to_end(scheduler, schedule)

    fired = [datetime.fromtimestamp(wall, UTC).strftime('%H:%M:%S') for wall in record.walls]
    assert fired == ['00:01:30', '00:05:00', '00:10:00']


async def test_cron_never_fires_twice_for_one_slot_when_woken_early() -> None:
    # a sleep that ends 0.2 s early lands just before the slot on the wall clock: the next run must still be
    # the following slot, not the one just run
    clock = FakeClock(monotonic=0.0, wall=START_WALL, early_wake_s=0.2)
    record = Recorder(clock)
    scheduler = Scheduler(record, clock=clock)
    schedule = ScheduleSettings('cron', 'current', cron='*/5 * * * *', max_runs=4, run_at_start=False)

    await _run_to_end(scheduler, schedule)

    slots = [round(wall / 300) * 300 for wall in record.walls]
    assert len(set(slots)) == 4
    assert [b - a for a, b in itertools.pairwise(slots)] == [300, 300, 300]
    first_slot = datetime(2026, 1, 1, 0, 5, tzinfo=UTC).timestamp()
    assert slots[0] == first_slot
    assert all(abs(wall - slot) <= 0.2 + 1e-6 for wall, slot in zip(record.walls, slots, strict=True))


async def test_cron_slot_missed_by_a_long_run_is_skipped() -> None:
    clock = FakeClock(monotonic=0.0, wall=START_WALL)
    record = Recorder(clock, duration_s=400.0)  # longer than one 5-minute slot
    scheduler = Scheduler(record, clock=clock)
    schedule = ScheduleSettings('cron', 'current', cron='*/5 * * * *', max_runs=3, run_at_start=False)

    await _run_to_end(scheduler, schedule)

    fired = [datetime.fromtimestamp(wall, UTC).strftime('%H:%M:%S') for wall in record.walls]
    assert fired == ['00:05:00', '00:15:00', '00:25:00']
    assert record.max_in_flight == 1


async def test_stop_cancels_a_run_in_progress() -> None:
    clock = FakeClock(monotonic=0.0)
    started = asyncio.Event()
    cancelled: list[bool] = []

    async def run(schedule: ScheduleSettings) -> None:
        started.set()
        try:
            await asyncio.Event().wait()  # never set: only stop() ends this run
        except asyncio.CancelledError:
            cancelled.append(True)
            raise

    scheduler = Scheduler(run, clock=clock)
    scheduler.start([ScheduleSettings('stuck', 'current', interval_s=1.0)])
    await asyncio.wait_for(started.wait(), WAIT_S)
    assert scheduler.running == ['stuck']

    await asyncio.wait_for(scheduler.stop(), 1.0)

    assert cancelled == [True]
    assert scheduler.running == []
    assert not scheduler.state['stuck'].done


async def test_stop_cancels_every_schedule_promptly_on_the_system_clock() -> None:
    ran: list[str] = []

    async def run(schedule: ScheduleSettings) -> None:
        ran.append(schedule.name)

    scheduler = Scheduler(run, clock=SystemClock())
    scheduler.start(
        [
            ScheduleSettings('hourly', 'current', interval_s=3600.0, run_at_start=False),
            ScheduleSettings('daily', 'current', cron='0 0 * * *', run_at_start=False),
        ]
    )
    assert sorted(scheduler.running) == ['daily', 'hourly']

    loop = asyncio.get_running_loop()
    began = loop.time()
    await asyncio.wait_for(scheduler.stop(), 1.0)

    assert loop.time() - began < 1.0
    assert scheduler.running == []
    assert ran == []


async def test_stop_ends_a_schedule_that_never_waits() -> None:
    clock = FakeClock(monotonic=0.0)
    record = Recorder(clock)
    scheduler = Scheduler(record, clock=clock)
    scheduler.start([ScheduleSettings('busy', 'current', interval_s=1.0)])  # no max_runs: runs for ever

    for _ in range(1000):  # bounded: wait until it has run a few times
        if len(record.times) >= 5:
            break
        await asyncio.sleep(0)
    assert len(record.times) >= 5

    await asyncio.wait_for(scheduler.stop(), 1.0)
    count = len(record.times)
    for _ in range(10):
        await asyncio.sleep(0)
    assert len(record.times) == count
    assert scheduler.running == []
    assert record.max_in_flight == 1
