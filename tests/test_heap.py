"""The garbage-collection policy: freeze as connections grow and every few seconds, a full collection when they close."""

from __future__ import annotations

import asyncio
import gc
import logging
from collections.abc import Iterator

import pytest

from gamelist_service.transport import heap


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Iterator[Clock]:
    yield Clock()
    gc.unfreeze()  # whatever a test froze goes back to the collector


def test_freezes_when_connections_grow_and_every_few_seconds(clock: Clock) -> None:
    policy = heap.HeapPolicy(clock=clock)
    assert policy.step(0, 0) is None
    assert policy.step(199, 0) is None
    assert policy.step(200, 0) == 'freeze' and gc.get_freeze_count() > 0
    assert policy.step(399, 0) is None  # 10 % of 200 is less than 200 more
    assert policy.step(400, 0) == 'freeze'
    assert policy.step(439, 0) is None
    clock.now += policy.freeze_every_s
    assert policy.step(439, 0) == 'freeze'  # the steady churn of the connections' objects
    assert policy.freezes == 3 and policy.fulls == 0


def test_garbage_is_collected_before_it_is_frozen(clock: Clock) -> None:
    class Node:
        other: object = None

    a, b = Node(), Node()
    a.other, b.other = b, a  # a cycle: only the collector frees it
    del a, b
    before = gc.get_freeze_count()
    policy = heap.HeapPolicy(clock=clock)
    assert policy.step(500, 0) == 'freeze'
    assert not any(isinstance(o, Node) for o in gc.get_objects())  # freed, not frozen
    assert gc.get_freeze_count() >= before


def test_a_full_collection_when_connections_close_or_after_a_while(
    clock: Clock, caplog: pytest.LogCaptureFixture
) -> None:
    policy = heap.HeapPolicy(clock=clock)
    assert policy.step(1000, 0) == 'freeze'
    assert policy.step(1000, 249) is None  # fewer than a quarter of those open have closed
    with caplog.at_level(logging.INFO, 'gamelist_service.transport.heap'):
        assert policy.step(800, 250) == 'full'
    assert 'full garbage collection with 800 connections open' in caplog.text
    assert gc.get_freeze_count() > 0  # frozen again after it
    assert policy.step(800, 300) is None  # counted from the last full collection
    clock.now += policy.full_every_s
    assert policy.step(800, 300) == 'full'
    assert policy.fulls == 2


def test_release_gives_the_objects_back(clock: Clock) -> None:
    policy = heap.HeapPolicy(clock=clock)
    policy.step(300, 0)
    assert gc.get_freeze_count() > 0
    policy.release()
    assert gc.get_freeze_count() == 0
    policy.release()  # twice is fine


async def test_run_applies_it_and_releases_when_cancelled(clock: Clock) -> None:
    policy = heap.HeapPolicy(clock=clock)
    calls: list[int] = []

    def counts() -> tuple[int, int]:
        calls.append(1)
        return 250, 0

    task = asyncio.get_running_loop().create_task(heap.run(policy, counts, every_s=0.01))
    for _ in range(500):
        if policy.freezes:
            break
        await asyncio.sleep(0.01)
    assert policy.freezes == 1 and gc.get_freeze_count() > 0
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    assert gc.get_freeze_count() == 0
