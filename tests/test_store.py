"""Store against a real Redis: the list write (TTL, version), sessions, users, pub/sub, errors; and the service core."""

from __future__ import annotations

import asyncio
import json
import random
import socket
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from redis.asyncio import Redis
from redis.exceptions import RedisError

from gamelist_service.config.settings import (
    GameTemplate,
    ListSettings,
    NamespaceSettings,
    PlayerCounts,
    RedisSettings,
    ServerSettings,
    Settings,
)
from gamelist_service.core.service import GamelistService
from gamelist_service.errors import GamelistError, StoreError
from gamelist_service.storage.store import (
    CURRENT_LIST_KEY,
    UPDATES_CHANNEL,
    VERSION_KEY_SUFFIX,
    Store,
    redact_url,
)

from .helpers import CONTRACT_GAME

WAIT_S = 5.0
LIST = {
    'gamelist': [CONTRACT_GAME],
    'updated_at': '2024-01-01T12:00:00Z',
    'cache_duration': '300 seconds',
    'total_games': 1,
    'active_games': 1,
    'total_players': 15000,
}


@pytest.fixture
async def store(redis_client: Redis, redis_url: str) -> AsyncIterator[Store]:
    """A Store on the session's Redis, flushed first (by redis_client)."""
    opened = Store(redis_url)
    yield opened
    await opened.close()


@pytest.fixture
def closed_url() -> str:
    """A loopback URL where nothing listens: a port just bound and released."""
    with socket.socket() as sock:
        sock.bind(('127.0.0.1', 0))
        port: int = sock.getsockname()[1]
    return f'redis://127.0.0.1:{port}/0'


async def wait_for_missing(client: Redis, key: str, timeout_s: float = WAIT_S) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if not await client.exists(key):
            return
        await asyncio.sleep(0.02)
    raise AssertionError(f'{key} did not expire within {timeout_s}s')


# -- the list write ------------------------------------------------------------------------------------------------


async def test_write_list_sets_json_with_ttl(store: Store, redis_client: Redis) -> None:
    stored = await store.write_list(CURRENT_LIST_KEY, LIST, 300)

    assert stored == {**LIST, 'version': 1}
    raw = await redis_client.get('gamelist:current')
    assert raw is not None
    assert json.loads(raw) == {**LIST, 'version': 1}
    assert await redis_client.ttl('gamelist:current') == 300
    assert 299_000 < await redis_client.pttl('gamelist:current') <= 300_000
    assert 299.0 < await store.ttl(CURRENT_LIST_KEY) <= 300.0


async def test_write_list_ignores_a_version_given_by_the_caller(store: Store, redis_client: Redis) -> None:
    stored = await store.write_list('gamelist:current', {**LIST, 'version': 999}, 300)

    assert stored['version'] == 1
    raw = await redis_client.get('gamelist:current')
    assert raw is not None
    assert json.loads(raw)['version'] == 1


async def test_write_empty_list_is_valid_json(store: Store, redis_client: Redis) -> None:
    stored = await store.write_list('gamelist:empty', {}, 60)

    assert stored == {'version': 1}
    raw = await redis_client.get('gamelist:empty')
    assert raw is not None
    assert json.loads(raw) == {'version': 1}


async def test_write_list_keeps_unicode(store: Store) -> None:
    data = {'gamelist': [{'game_name': 'Jeu de l\u2019oie \u2660'}]}
    await store.write_list('gamelist:current', data, 60)

    assert await store.read_list('gamelist:current') == {**data, 'version': 1}


async def test_version_grows_and_is_shared_by_two_stores(store: Store, redis_url: str, redis_client: Redis) -> None:
    other = Store(redis_url)
    try:
        versions = [
            (await store.write_list('gamelist:current', LIST, 300))['version'],
            (await other.write_list('gamelist:current', LIST, 300))['version'],
            (await store.write_list('gamelist:current', LIST, 300))['version'],
            (await other.write_list('gamelist:current', LIST, 300))['version'],
        ]
        assert versions == [1, 2, 3, 4]
        assert await redis_client.get('gamelist:current' + VERSION_KEY_SUFFIX) == b'4'
        assert await store.list_version('gamelist:current') == 4
        assert await other.list_version('gamelist:current') == 4
        stored = await other.read_list('gamelist:current')
        assert stored is not None
        assert stored['version'] == 4  # the stored list always carries the highest version
    finally:
        await other.close()


async def test_concurrent_writes_get_distinct_versions(store: Store, redis_url: str) -> None:
    other = Store(redis_url)
    try:
        results = await asyncio.gather(
            *(s.write_list('gamelist:current', LIST, 300) for _ in range(10) for s in (store, other))
        )
        assert sorted(r['version'] for r in results) == list(range(1, 21))
        stored = await store.read_list('gamelist:current')
        assert stored is not None
        assert stored['version'] == 20
    finally:
        await other.close()


async def test_version_survives_the_list_expiring(store: Store, redis_client: Redis) -> None:
    await store.write_list('gamelist:current', LIST, 0.2)
    assert await redis_client.ttl('gamelist:current:version') == -1  # the version key never expires

    await wait_for_missing(redis_client, 'gamelist:current')
    assert await store.read_list('gamelist:current') is None

    stored = await store.write_list('gamelist:current', LIST, 300)
    assert stored['version'] == 2


async def test_list_version_is_zero_before_any_write(store: Store) -> None:
    assert await store.list_version('gamelist:never') == 0


async def lua_set_commands(client: Redis, write: Any) -> list[str]:
    """The SET commands the write script ran, as MONITOR saw them."""
    seen: list[str] = []
    async with client.monitor() as monitor:
        await write()
        deadline = time.monotonic() + WAIT_S
        while time.monotonic() < deadline:
            info = await asyncio.wait_for(monitor.next_command(), WAIT_S)
            if info['client_type'] == 'lua' and info['command'].startswith('SET '):
                seen.append(info['command'])
                break
    return seen


async def test_integral_ttl_uses_seconds(store: Store, redis_client: Redis) -> None:
    commands = await lua_set_commands(redis_client, lambda: store.write_list('gamelist:current', LIST, 2.0))

    assert len(commands) == 1
    assert commands[0].endswith(' EX 2')
    assert 1000 < await redis_client.pttl('gamelist:current') <= 2000


async def test_fractional_ttl_uses_milliseconds(store: Store, redis_client: Redis) -> None:
    commands = await lua_set_commands(redis_client, lambda: store.write_list('gamelist:current', LIST, 1.5))

    assert len(commands) == 1
    assert commands[0].endswith(' PX 1500')
    # 1.5 s is honoured, not rounded to 1 s or 2 s
    assert 1000 < await redis_client.pttl('gamelist:current') <= 1500
    assert await redis_client.ttl('gamelist:current') in (1, 2)


async def test_read_list_returns_what_was_written(store: Store) -> None:
    await store.write_list('gamelist:current', LIST, 300)

    assert await store.read_list('gamelist:current') == {**LIST, 'version': 1}


async def test_read_list_missing_is_none(store: Store) -> None:
    assert await store.read_list('gamelist:current') is None
    assert await store.ttl('gamelist:current') == -2.0


async def test_read_list_expired_is_none(store: Store, redis_client: Redis) -> None:
    await store.write_list('gamelist:current', LIST, 0.1)
    assert await store.read_list('gamelist:current') is not None

    await wait_for_missing(redis_client, 'gamelist:current')

    assert await store.read_list('gamelist:current') is None


async def test_read_list_rejects_non_json(store: Store, redis_client: Redis) -> None:
    await redis_client.set('gamelist:current', 'not json {')

    with pytest.raises(StoreError, match='gamelist:current in Redis does not hold JSON'):
        await store.read_list('gamelist:current')


async def test_read_list_rejects_json_that_is_not_an_object(store: Store, redis_client: Redis) -> None:
    await redis_client.set('gamelist:current', '[1, 2]')

    with pytest.raises(StoreError, match='does not hold a JSON object'):
        await store.read_list('gamelist:current')


async def test_ttl_of_a_key_without_expiry(store: Store, redis_client: Redis) -> None:
    await redis_client.set('gamelist:forever', '{}')
    assert await store.ttl('gamelist:forever') == -1.0


# -- sessions, users, pub/sub --------------------------------------------------------------------------------------


async def test_save_session(store: Store, redis_client: Redis) -> None:
    data = {'device_id': 'd-1', 'platform': 'web', 'screen': {'width': 1920, 'height': 1080}}

    key = await store.save_session('abc123', data, 3600)

    assert key == 'session:abc123'
    raw = await redis_client.get('session:abc123')
    assert raw is not None
    assert json.loads(raw) == data
    assert await redis_client.ttl('session:abc123') == 3600
    assert 3_599_000 < await redis_client.pttl('session:abc123') <= 3_600_000


async def test_save_user(store: Store, redis_client: Redis) -> None:
    key = await store.save_user('u42', {'user_id': 'u42', 'locale': 'fr-FR'}, 86400)

    assert key == 'user:u42'
    raw = await redis_client.get('user:u42')
    assert raw is not None
    assert json.loads(raw) == {'user_id': 'u42', 'locale': 'fr-FR'}
    assert await redis_client.ttl('user:u42') == 86400


async def test_session_fractional_ttl(store: Store, redis_client: Redis) -> None:
    await store.save_session('short', {'a': 1}, 0.5)

    assert 0 < await redis_client.pttl('session:short') <= 500
    await wait_for_missing(redis_client, 'session:short')


async def test_publish_update_reaches_a_subscriber(store: Store, redis_client: Redis) -> None:
    pubsub = redis_client.pubsub(ignore_subscribe_messages=True)
    try:
        await pubsub.subscribe(UPDATES_CHANNEL)
        assert UPDATES_CHANNEL == 'gamelist:updates'
        data = {**LIST, 'version': 3}

        receivers = await store.publish_update('current', data)

        assert receivers >= 1
        message = None
        deadline = time.monotonic() + WAIT_S
        while message is None and time.monotonic() < deadline:
            message = await pubsub.get_message(timeout=0.5)
        assert message is not None, 'no message on gamelist:updates'
        assert message['channel'] == b'gamelist:updates'
        assert json.loads(message['data']) == {'list': 'current', 'data': data}
    finally:
        await pubsub.aclose()  # type: ignore[no-untyped-call]


async def test_publish_without_subscribers_returns_zero(store: Store) -> None:
    assert await store.publish_update('current', {'version': 1}) == 0


async def test_store_pubsub_receives_what_is_published(store: Store) -> None:
    pubsub = store.pubsub()
    try:
        await pubsub.subscribe(UPDATES_CHANNEL)
        await store.publish_update('current', {'version': 9})
        message = None
        deadline = time.monotonic() + WAIT_S
        while message is None and time.monotonic() < deadline:
            message = await pubsub.get_message(timeout=0.5)
        assert message is not None
        assert json.loads(message['data'])['data'] == {'version': 9}
    finally:
        await pubsub.aclose()  # type: ignore[no-untyped-call]


async def test_ping_and_server_info(store: Store) -> None:
    assert 0 <= await store.ping() < WAIT_S
    info = await store.server_info()
    assert 'redis_version' in info


# -- errors --------------------------------------------------------------------------------------------------------


@pytest.mark.timeout(30)
async def test_unreachable_redis_raises_store_error(closed_url: str) -> None:
    store = Store(closed_url, timeout_s=1.0)
    try:
        calls = [
            ('answer PING', store.ping()),
            ('SET gamelist:current', store.write_list('gamelist:current', LIST, 300)),
            ('GET gamelist:current', store.read_list('gamelist:current')),
            ('GET gamelist:current:version', store.list_version('gamelist:current')),
            ('PTTL gamelist:current', store.ttl('gamelist:current')),
            ('SET session:s1', store.save_session('s1', {}, 60)),
            ('SET user:u1', store.save_user('u1', {}, 60)),
            ('PUBLISH gamelist:updates', store.publish_update('current', {})),
            ('answer INFO', store.server_info()),
        ]
        for action, call in calls:
            with pytest.raises(StoreError) as caught:
                await asyncio.wait_for(call, WAIT_S)
            error = caught.value
            assert isinstance(error, GamelistError)
            assert not isinstance(error, RedisError)
            assert error.message.startswith(f'Redis at {closed_url} failed to {action}: '), error.message
            assert error.url == closed_url
            assert error.status_code == 503
            assert isinstance(error.__cause__, RedisError | OSError)
    finally:
        await store.close()


async def test_store_error_hides_the_password(closed_url: str) -> None:
    url = closed_url.replace('redis://', 'redis://:s3cret-pw@')
    store = Store(url, timeout_s=1.0)
    try:
        with pytest.raises(StoreError) as caught:
            await asyncio.wait_for(store.ping(), WAIT_S)
    finally:
        await store.close()
    assert 's3cret-pw' not in str(caught.value)
    assert 's3cret-pw' not in repr(caught.value)
    assert ':***@127.0.0.1' in str(caught.value)


@pytest.mark.parametrize(
    ('url', 'expected'),
    [
        ('redis://:secret@127.0.0.1:6379/0', 'redis://:***@127.0.0.1:6379/0'),
        ('redis://alice:secret@redis.internal:6379/0', 'redis://alice:***@redis.internal:6379/0'),
        ('rediss://alice:p@ss:w0rd@host:6380/1', 'rediss://alice:***@host:6380/1'),
        ('redis://127.0.0.1:6379/0', 'redis://127.0.0.1:6379/0'),
        ('unix:///tmp/redis.sock', 'unix:///tmp/redis.sock'),
        ('embedded', 'embedded'),
        ('redis://127.0.0.1:6379/0?password=secret', 'redis://127.0.0.1:6379/0?password=***'),
        ('unix:///tmp/r.sock?db=0&password=secret', 'unix:///tmp/r.sock?db=0&password=***'),
        ('redis://h:6379/0?password=se@cret&db=1', 'redis://h:6379/0?password=***&db=1'),
        ('redis://:secret@h:6379/0?password=secret', 'redis://:***@h:6379/0?password=***'),
    ],
)
def test_redact_url(url: str, expected: str) -> None:
    assert redact_url(url) == expected
    assert 'secret' not in redact_url(url)


# -- the service core with a real Store ----------------------------------------------------------------------------


def settings_for(redis_url: str) -> Settings:
    games = (
        GameTemplate('game_1', 'Poker', 'card', 2, 8, 'active', PlayerCounts('simulated', 5000, 20000), 'c'),
        GameTemplate('game_4', 'Chess', 'board', 2, 2, 'maintenance', PlayerCounts('fixed', 0, 0), 'c'),
    )
    return Settings(
        source=Path('games.yaml'),
        server=ServerSettings(),
        redis=RedisSettings(url=redis_url),
        namespaces=(NamespaceSettings('/', 'current'), NamespaceSettings('/gameplay', 'current')),
        games=games,
        lists=(
            ListSettings(
                'current', 'gamelist:current', 300.0, ('game_1', 'game_4'), 'game_list:updated', ('/', '/gameplay')
            ),
        ),
        schedules=(),
    )


class FakeEmit:
    def __init__(self) -> None:
        self.calls: list[tuple[str, dict[str, Any], str]] = []
        self.changed = asyncio.Event()

    async def __call__(self, event: str, data: dict[str, Any], namespace: str) -> int:
        self.calls.append((event, data, namespace))
        self.changed.set()
        return 2


@pytest.fixture
async def service(store: Store, redis_url: str) -> AsyncIterator[tuple[GamelistService, FakeEmit]]:
    emit = FakeEmit()
    core = GamelistService(settings_for(redis_url), store, emit, rng=random.Random(1))
    yield core, emit
    await core.stop()


async def test_refresh_writes_the_list(service: tuple[GamelistService, FakeEmit], redis_client: Redis) -> None:
    core, _ = service

    first = await core.refresh('current')
    second = await core.refresh('current')

    assert (first['version'], second['version']) == (1, 2)
    assert [game['game_id'] for game in second['gamelist']] == ['game_1', 'game_4']
    assert second['total_games'] == 2
    assert second['active_games'] == 1
    raw = await redis_client.get('gamelist:current')
    assert raw is not None
    assert json.loads(raw) == second
    assert await redis_client.ttl('gamelist:current') == 300


async def test_current_returns_the_stored_list(service: tuple[GamelistService, FakeEmit], store: Store) -> None:
    core, _ = service
    written = await core.refresh('current')

    assert await core.current('current') == written
    assert await store.list_version('gamelist:current') == 1  # not rebuilt


async def test_current_rebuilds_an_expired_list(
    service: tuple[GamelistService, FakeEmit], store: Store, redis_client: Redis
) -> None:
    core, _ = service
    await core.refresh('current')
    await redis_client.delete('gamelist:current')  # as if its TTL had run out

    data = await core.current('current')

    assert data['version'] == 2
    assert data['total_games'] == 2
    assert await store.read_list('gamelist:current') == data
    assert await redis_client.ttl('gamelist:current') == 300


async def test_many_concurrent_current_calls_rebuild_once(
    service: tuple[GamelistService, FakeEmit], store: Store
) -> None:
    core, _ = service

    results = await asyncio.wait_for(asyncio.gather(*(core.current('current') for _ in range(25))), WAIT_S)

    assert await store.list_version('gamelist:current') == 1
    assert {r['version'] for r in results} == {1}
    assert all(r == results[0] for r in results)


async def test_refresh_is_broadcast_to_every_namespace(service: tuple[GamelistService, FakeEmit]) -> None:
    core, emit = service
    core.start(schedules=False)
    await asyncio.wait_for(core.listening.wait(), WAIT_S)

    stored = await core.refresh('current')

    deadline = time.monotonic() + WAIT_S
    while len(emit.calls) < 2 and time.monotonic() < deadline:
        emit.changed.clear()
        await asyncio.wait_for(emit.changed.wait(), max(0.01, deadline - time.monotonic()))
    assert sorted(namespace for _, _, namespace in emit.calls) == ['/', '/gameplay']
    for event, message, _ in emit.calls:
        assert event == 'game_list:updated'
        assert message['status'] == 'success'
        assert message['message'] == 'Game list has been updated'
        assert message['event'] == 'game_list:updated'
        assert message['data'] == stored
    assert core.broadcasts == 1
