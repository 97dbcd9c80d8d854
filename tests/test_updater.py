"""GameListUpdater, the prototype's Python API, against the session's real Redis and a running serve."""

from __future__ import annotations

import inspect
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from gamelist_service import GameListUpdater
from gamelist_service.config.settings import GameTemplate
from gamelist_service.errors import GamelistError, PayloadError, StoreError
from gamelist_service.producers.validation import GAME_FIELDS, GameListInvalid, validate_games
from gamelist_service.storage.store import UPDATES_CHANNEL

from .conftest import free_port
from .helpers import Recorder, serve_in, shipped_data, wait_until, write_config


@pytest.fixture
def updater(redis_url: str, flushed: redis.Redis) -> Iterator[GameListUpdater]:
    with GameListUpdater(redis_url=redis_url) as made:
        yield made


def stored(client: redis.Redis, key: str = 'gamelist:current') -> dict[str, Any]:
    raw = client.get(key)
    assert raw is not None, f'{key} is not in Redis'
    loaded: dict[str, Any] = json.loads(raw)
    return loaded


def test_prototype_defaults_and_the_package_export() -> None:
    params = inspect.signature(GameListUpdater).parameters
    assert params['redis_host'].default == '127.0.0.1'
    assert params['redis_port'].default == 6379
    assert params['socketio_url'].default == 'http://localhost:3000'
    assert inspect.signature(GameListUpdater.continuous_updates).parameters['max_updates'].default is None
    with GameListUpdater() as default:  # no connection is made until a call needs one
        assert default.redis_url == 'redis://127.0.0.1:6379/0'
        assert (default.list.key, default.list.ttl_s, default.list.event) == (
            'gamelist:current',
            300,
            'game_list:updated',
        )
        assert default.list.namespaces == ('/', '/gameplay')
        names = [t.name for t in default.game_templates if isinstance(t, GameTemplate)]
        assert names == ['Poker', 'Blackjack', 'Roulette', 'Chess', 'Battle Royale']


def test_update_writes_the_contract_with_ttl_and_a_growing_version(
    updater: GameListUpdater, flushed: redis.Redis
) -> None:
    first = updater.update_game_list_in_redis()
    assert first == stored(flushed)
    assert first['version'] == 1
    assert 295 <= flushed.ttl('gamelist:current') <= 300
    assert first['cache_duration'] == '300 seconds'
    assert first['total_games'] == 5 and first['active_games'] == 3
    assert first['total_players'] == sum(g['active_gamepalye'] for g in first['gamelist']) > 0
    for game in first['gamelist']:
        assert list(game) == list(GAME_FIELDS)
    assert {g['status'] for g in first['gamelist']} == {'active', 'maintenance', 'coming_soon'}
    second = updater.update_game_list_in_redis()
    assert second['version'] == 2 == stored(flushed)['version']


def test_custom_games_are_validated_and_filled_with_defaults(updater: GameListUpdater, flushed: redis.Redis) -> None:
    custom = [
        {'game_name': 'Custom Game', 'active_gamepalye': 1000, 'livegameplaye': 500, 'status': 'active'},
        {'game_id': 'tourney', 'game_name': 'Tourney', 'game_type': 'card', 'min_players': 12, 'status': 'maintenance'},
    ]
    data = updater.update_game_list_in_redis(custom, cache_duration=60)
    assert data == stored(flushed)
    assert 55 <= flushed.ttl('gamelist:current') <= 60
    assert data['cache_duration'] == '60 seconds'
    assert (data['total_games'], data['active_games'], data['total_players']) == (2, 1, 1000)
    first, second = data['gamelist']
    assert first['game_id'].startswith('game_1_') and first['game_type'] == 'custom'
    assert (first['min_players'], first['max_players'], first['livegameplaye']) == (1, 10, 500)
    assert first['created_at'].endswith('Z')
    assert second['game_id'] == 'tourney'
    assert (second['min_players'], second['max_players'], second['active_gamepalye']) == (12, 12, 0)


def test_invalid_custom_games_name_each_field_and_write_nothing(updater: GameListUpdater, flushed: redis.Redis) -> None:
    bad: list[Any] = [
        {'game_name': 'ok'},
        {'game_name': 'Chess', 'min_players': 4, 'max_players': 2},
        {'game_name': 'Dice', 'status': 'closed', 'active_gamepalye': -1, 'max_players': '8'},
        {'name': 'Typo'},
        'Poker',
        {'game_name': 'Live', 'active_gamepalye': 5, 'livegameplaye': 6},
        {'game_name': 'ok too', 'game_id': 'same'},
        {'game_name': 'again', 'game_id': 'same'},
    ]
    with pytest.raises(GameListInvalid) as caught:
        updater.update_game_list_in_redis(bad)
    paths = [error.path for error in caught.value.errors]
    assert paths == [
        'custom_games[1].min_players',
        'custom_games[2].active_gamepalye',
        'custom_games[2].max_players',
        'custom_games[2].status',
        'custom_games[3].name',
        'custom_games[3].game_name',
        'custom_games[4]',
        'custom_games[5].livegameplaye',
        'custom_games[7].game_id',
    ]
    messages = {error.path: error.message for error in caught.value.errors}
    assert messages['custom_games[1].min_players'] == 'min_players (4) is greater than max_players (2)'
    assert "did you mean 'game_name'" in messages['custom_games[3].name']
    assert 'custom_games[2].status' in caught.value.message
    assert isinstance(caught.value, PayloadError) and caught.value.status_code == 422
    assert flushed.exists('gamelist:current') == 0
    with pytest.raises(GameListInvalid, match='expected a list of games'):
        updater.update_game_list_in_redis({'game_name': 'not a list'})  # type: ignore[arg-type]
    with pytest.raises(GameListInvalid, match='cache_duration: must be a positive number'):
        updater.update_game_list_in_redis(cache_duration=0)


def test_validate_games_keeps_given_fields_and_order() -> None:
    values = ['g', 'G', 'card', 9, 3, 2, 4, 'active', '2024-01-01T12:00:00Z']
    full = dict(zip(GAME_FIELDS, values, strict=True))
    assert validate_games([dict(reversed(list(full.items())))]) == [full]


def test_notification_reaches_subscribers_and_reports_none(updater: GameListUpdater, flushed: redis.Redis) -> None:
    data = updater.update_game_list_in_redis()
    assert updater.send_game_list_update_notification(data) is False  # nobody listens: said, not hidden
    assert updater.last_receivers == 0
    pubsub = flushed.pubsub(ignore_subscribe_messages=True)  # type: ignore[no-untyped-call]
    pubsub.subscribe(UPDATES_CHANNEL)
    try:
        assert wait_until(lambda: flushed.pubsub_numsub(UPDATES_CHANNEL)[0][1] == 1)
        assert updater.send_game_list_update_notification(data) is True
        assert updater.last_receivers == 1
        deadline = time.monotonic() + 5
        message = None
        while message is None and time.monotonic() < deadline:  # the subscribe confirmation comes first, as None
            message = pubsub.get_message(timeout=1)
        assert message is not None
        assert json.loads(message['data']) == {'list': 'current', 'data': data}
    finally:
        pubsub.close()
    with pytest.raises(PayloadError, match='game_list_data must be'):
        updater.send_game_list_update_notification({'games': []})


def test_continuous_updates_run_max_updates_times(updater: GameListUpdater, flushed: redis.Redis) -> None:
    seen: list[tuple[int, Any]] = []
    started = time.monotonic()
    done = updater.continuous_updates(0.1, max_updates=3, on_update=lambda n, data: seen.append((n, data)))
    elapsed = time.monotonic() - started
    assert done == 3
    assert [n for n, _ in seen] == [1, 2, 3]
    assert [data['version'] for _, data in seen] == [1, 2, 3]
    assert stored(flushed)['version'] == 3
    assert 0.2 <= elapsed < 5  # two waits of 0.1 s between three updates, none after the last
    with pytest.raises(GamelistError, match='interval'):
        updater.continuous_updates(0)
    with pytest.raises(PayloadError, match='max_updates must be at least 1'):
        updater.continuous_updates(1, max_updates=0)


@pytest.mark.timeout(30)
def test_redis_down_is_a_clear_error_never_a_silent_drop() -> None:
    port = free_port()  # nothing listens there
    with GameListUpdater(redis_port=port, timeout_s=0.5) as down:
        with pytest.raises(StoreError, match=rf'Redis at redis://127.0.0.1:{port}/0 failed to SET gamelist:current'):
            down.update_game_list_in_redis()
        with pytest.raises(StoreError, match='failed to PUBLISH gamelist:updates'):
            down.send_game_list_update_notification({'gamelist': []})
        assert down.test_redis_connection() is False
        ((step, passed, detail),) = down.check_redis()
        assert (step, passed) == (
            'redis',
            False,
        ) and f'Redis at redis://127.0.0.1:{port}/0 failed to answer PING' in detail
        failures: list[Any] = []
        assert down.continuous_updates(0.05, max_updates=2, on_update=lambda n, r: failures.append(r)) == 0
        assert len(failures) == 2 and all(isinstance(f, StoreError) for f in failures)


def test_connection_test_passes_on_a_live_redis(updater: GameListUpdater, flushed: redis.Redis) -> None:
    assert updater.test_redis_connection() is True
    steps = [step for step, passed, _ in updater.check_redis() if passed]
    assert steps == ['ping', 'set/get', 'ttl', 'version']
    assert flushed.keys('gamelist:check:*') == []  # the probe key is removed


def test_config_gives_templates_key_and_ttl(tmp_path: Path, redis_url: str, flushed: redis.Redis) -> None:
    data = shipped_data()
    data['lists'] = {
        'lobby': {
            'key': 'gamelist:lobby',
            'ttl': '45s',
            'games': ['game_4', 'game_1'],
            'namespaces': ['/', '/gameplay'],
        }
    }
    data['namespaces'] = {'/': None, '/gameplay': None}
    data['schedules'] = []
    config = write_config(tmp_path / 'games.yaml', data)
    with GameListUpdater(redis_url=redis_url, config=config) as configured:
        written = configured.update_game_list_in_redis()
    assert written == stored(flushed, 'gamelist:lobby')
    assert [g['game_name'] for g in written['gamelist']] == ['Chess', 'Poker']
    assert 40 <= flushed.ttl('gamelist:lobby') <= 45 and written['cache_duration'] == '45 seconds'
    with pytest.raises(GamelistError, match="no list named 'nope'"):
        GameListUpdater(redis_url=redis_url, config=config, list_name='nope')


async def test_connected_clients_receive_what_update_and_notify_writes(
    tmp_path: Path, redis_url: str, flushed: redis.Redis
) -> None:
    data = shipped_data()
    data['schedules'] = []  # only the updater writes
    serve = serve_in(tmp_path, data, '--redis-url', redis_url)
    try:
        client = await Recorder(serve.url).connect()
        try:
            with GameListUpdater(redis_url=redis_url, socketio_url=serve.url) as updater:
                written = updater.update_and_notify([{'game_name': 'Custom Game', 'active_gamepalye': 7}])
                assert updater.last_receivers == 1
            for namespace in ('/', '/gameplay'):
                (message,) = await client.wait_for('game_list:updated', namespace)
                assert message['status'] == 'success' and message['event'] == 'game_list:updated'
                assert message['message'] == 'Game list has been updated'
                assert message['data'] == written == stored(flushed)
        finally:
            await client.close()
    finally:
        assert serve.stop() == 0
