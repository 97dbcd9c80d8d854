"""The in-memory list for main:screen: versions only grow, and an entry never outlives the key's TTL."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from gamelist_service.config.settings import ListSettings
from gamelist_service.core.listcache import ListCache

LIST = ListSettings(name='current', key='gamelist:current', ttl_s=300.0, games=(), event='e', namespaces=('/',))


class Clock:
    def __init__(self) -> None:
        self.mono = 1000.0
        self.wall = datetime(2026, 1, 1, tzinfo=UTC).timestamp()

    def advance(self, seconds: float) -> None:
        self.mono += seconds
        self.wall += seconds


def data(version: int, clock: Clock, age_s: float = 0.0) -> dict[str, Any]:
    written = datetime.fromtimestamp(clock.wall - age_s, UTC).strftime('%Y-%m-%dT%H:%M:%S.%fZ')
    return {'gamelist': [], 'updated_at': written, 'version': version}


def cache(clock: Clock) -> ListCache:
    return ListCache(clock=lambda: clock.mono, wall=lambda: clock.wall)


def test_serves_the_newest_version_and_never_goes_back() -> None:
    clock = Clock()
    lists = cache(clock)
    assert lists.get(LIST) is None
    assert lists.remember(LIST, data(5, clock))
    assert not lists.remember(LIST, data(4, clock))  # a late read of an older version
    got = lists.get(LIST)
    assert got is not None and got['version'] == 5
    assert lists.remember(LIST, data(6, clock))
    assert lists.version('current') == 6


def test_expires_with_the_ttl_counted_from_updated_at() -> None:
    clock = Clock()
    lists = cache(clock)
    lists.remember(LIST, data(1, clock, age_s=100))  # arrived late: 200 s are left, less the margin
    clock.advance(198.5)
    assert lists.get(LIST) is not None
    clock.advance(0.6)
    assert lists.get(LIST) is None


def test_an_already_expired_list_is_not_kept() -> None:
    clock = Clock()
    lists = cache(clock)
    assert not lists.remember(LIST, data(1, clock, age_s=400))
    assert lists.get(LIST) is None


def test_a_read_from_redis_uses_the_pttl() -> None:
    clock = Clock()
    lists = cache(clock)
    lists.remember(LIST, data(2, clock), ttl_left_s=10.0)
    clock.advance(8.9)
    assert lists.get(LIST) is not None
    clock.advance(0.2)  # 10 s less a margin of 1 s
    assert lists.get(LIST) is None


def test_another_key_or_no_version_is_not_served() -> None:
    clock = Clock()
    lists = cache(clock)
    lists.remember(LIST, data(3, clock))
    moved = ListSettings(name='current', key='gamelist:other', ttl_s=300.0, games=(), event='e', namespaces=('/',))
    assert lists.get(moved) is None
    assert not lists.remember(LIST, {'gamelist': []})
    lists.clear()
    assert lists.get(LIST) is None
