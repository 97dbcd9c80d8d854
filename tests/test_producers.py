"""What the prototype's producers did still works: game_list:updated from producer clients (and GameListUpdater with a
producer token), dict templates, and lists fed by producers that are never refilled from templates."""

from __future__ import annotations

import asyncio
import json
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from gamelist_service import GameListUpdater
from gamelist_service.config.loader import load_settings
from gamelist_service.errors import ConfigError, StoreError
from gamelist_service.producers.validation import GameListInvalid
from gamelist_service.web.sockets import NOT_A_PRODUCER

from .conftest import cli_command
from .helpers import (
    CONTRACT_GAME,
    Recorder,
    Serve,
    async_wait_until,
    hourly_data,
    redis_of,
    schedule_runs,
    serving,
    shipped_data,
    wait_until,
    write_config,
)
from .jwt_tokens import AUDIENCE, HMAC_KEY, ISSUER, hs_token

PRODUCER_TOKEN = 'a-producer-secret-of-32-bytes!!!'


# -- dict templates --------------------------------------------------------------------------------------------------


def test_dict_templates_work_as_in_the_prototype(redis_url: str, flushed: redis.Redis) -> None:
    with GameListUpdater(redis_url=redis_url) as updater:
        updater.game_templates = [
            {'name': 'Poker', 'type': 'card', 'min_players': 2, 'max_players': 8},
            {'name': 'Chess', 'type': 'board', 'status': 'maintenance'},
            {'game_name': 'Roulette', 'game_type': 'casino', 'active': [10, 20]},  # the names the games carry
        ]
        data = updater.update_and_notify()
    games = json.loads(flushed.get('gamelist:current') or b'{}')['gamelist']
    assert games == data['gamelist']
    assert [(g['game_id'], g['game_name'], g['game_type']) for g in games] == [
        ('game_1', 'Poker', 'card'),
        ('game_2', 'Chess', 'board'),
        ('game_3', 'Roulette', 'casino'),
    ]
    assert (games[0]['min_players'], games[0]['max_players'], games[0]['status']) == (2, 8, 'active')
    assert (games[1]['active_gamepalye'], games[1]['livegameplaye']) == (0, 0)  # not active: nobody plays
    assert 10 <= games[2]['active_gamepalye'] <= 20


def test_bad_dict_templates_name_each_bad_field(redis_url: str) -> None:
    with GameListUpdater(redis_url=redis_url) as updater:
        updater.game_templates = [
            {'name': 'Poker', 'type': 'card', 'min_players': 9, 'max_players': 2},
            {'type': 'board', 'statu': 'active'},
            'Chess',  # type: ignore[list-item]  # what a user might write
        ]
        with pytest.raises(GameListInvalid) as raised:
            updater.generate_game_list()
    paths = [error.path for error in raised.value.errors]
    assert paths == ['game_templates[0].min_players', 'game_templates[1].statu', 'game_templates[1].name',
                     'game_templates[2]']  # fmt: skip
    assert "did you mean 'status'?" in str(raised.value)


# -- game_list:updated from producers ----------------------------------------------------------------------------


@pytest.fixture(scope='module')
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Serve]:
    """Producers hold a shared secret, or a JWT with role=producer on /vip; the list 'pushed' is fed by them."""
    data = hourly_data()
    data['producers'] = {'token_env': 'PRODUCER_TOKEN', 'jwt_claim': {'name': 'role', 'value': 'producer'}}
    data['namespaces']['/vip'] = {
        'list': 'current',
        'auth': {'mode': 'jwt', 'jwt': {'secret_env': 'VIP_JWT_SECRET', 'issuer': ISSUER, 'audience': AUDIENCE}},
    }
    data['namespaces']['/pushed'] = {'list': 'pushed'}
    data['lists']['pushed'] = {'key': 'gamelist:pushed', 'ttl': '2s', 'namespaces': ['/pushed'], 'fed_by': 'producers'}
    env = {'PRODUCER_TOKEN': PRODUCER_TOKEN, 'VIP_JWT_SECRET': HMAC_KEY}
    with serving(tmp_path_factory.mktemp('producers'), data, env=env) as serve:
        assert wait_until(lambda: schedule_runs(serve) >= 1)
        yield serve
    assert PRODUCER_TOKEN not in serve.log() and 'Traceback' not in serve.log()


GAME = {**CONTRACT_GAME, 'game_id': 'pushed_1', 'game_name': 'Pushed Poker'}


async def test_a_producer_client_pushes_a_list_that_everyone_receives(served: Serve) -> None:
    viewer = await Recorder(served.url, 'websocket', namespaces=('/',)).connect()
    producer = await Recorder(
        served.url, 'websocket', namespaces=('/',), auth={'producer_token': PRODUCER_TOKEN}
    ).connect()
    try:
        # the prototype's updater sent the whole data object: computed fields are dropped and computed again
        reply = await producer.call('game_list:updated', {'gamelist': [GAME], 'total_games': 99, 'version': 1})
        assert reply['status'] == 'success' and reply['total_games'] == 1
        got = await viewer.wait_for('game_list:updated', '/')
        assert got[-1]['data']['gamelist'][0]['game_name'] == 'Pushed Poker'
        assert got[-1]['data']['version'] == reply['version'] and got[-1]['data']['total_games'] == 1
    finally:
        await viewer.close()
        await producer.close()


async def test_a_bad_list_from_a_producer_gets_an_error_ack_naming_the_field(served: Serve) -> None:
    producer = await Recorder(
        served.url, 'websocket', namespaces=('/',), auth={'producer_token': PRODUCER_TOKEN}
    ).connect()
    try:
        reply = await producer.call('game_list:updated', {'gamelist': [{**GAME, 'max_players': 'eight'}]})
        assert reply['status'] == 'error' and 'gamelist[0].max_players' in reply['message']
        assert producer.sio.connected
    finally:
        await producer.close()


async def test_anyone_else_gets_a_clear_error_ack_and_nothing_is_written(served: Serve) -> None:
    store = redis_of(served)
    client = await Recorder(served.url, 'websocket', namespaces=('/',)).connect()
    try:
        before = store.get('gamelist:current:version')
        assert await client.call('game_list:updated', {'gamelist': [GAME]}) == {
            'status': 'error',
            'message': NOT_A_PRODUCER,
        }
        assert store.get('gamelist:current:version') == before
    finally:
        store.close()
        await client.close()


async def test_a_wrong_producer_token_refuses_the_connect(served: Serve) -> None:
    client = Recorder(served.url, 'websocket', namespaces=('/',), auth={'producer_token': 'x' * 32})
    errors: list[Any] = []
    client.sio.on('connect_error', lambda data=None: errors.append(data), namespace='/')
    with pytest.raises(Exception):  # noqa: B017 - socketio.exceptions.ConnectionError
        await client.connect()
    assert errors == [{'message': 'invalid producer token'}]


async def test_a_jwt_with_the_producer_claim_makes_a_producer(served: Serve) -> None:
    token = hs_token(sub='feeder', role='producer')
    producer = await Recorder(served.url, 'websocket', namespaces=('/vip',), auth={'token': token}).connect()
    plain = await Recorder(
        served.url, 'websocket', namespaces=('/vip',), auth={'token': hs_token(sub='player', role='player')}
    ).connect()
    try:
        assert (await producer.call('game_list:updated', {'gamelist': [GAME]}, namespace='/vip'))['status'] == 'success'
        refused = await plain.call('game_list:updated', {'gamelist': [GAME]}, namespace='/vip')
        assert refused['status'] == 'error'
    finally:
        await producer.close()
        await plain.close()


async def test_game_list_updater_sends_as_a_producer_with_credentials(served: Serve) -> None:
    viewer = await Recorder(served.url, 'websocket', namespaces=('/',)).connect()
    try:

        def push() -> dict[str, Any]:
            with GameListUpdater(socketio_url=served.url, producer_token=PRODUCER_TOKEN) as updater:
                return updater.update_and_notify(custom_games=[{'game_name': 'From the updater'}])

        data = await asyncio.to_thread(push)
        assert data['gamelist'][0]['game_name'] == 'From the updater'
        got = await viewer.wait_for('game_list:updated', '/')
        assert got[-1]['data']['version'] == data['version']

        def wrong() -> None:
            with GameListUpdater(socketio_url=served.url, producer_token='y' * 32) as updater:
                updater.update_and_notify()

        with pytest.raises(StoreError, match='invalid producer token'):
            await asyncio.to_thread(wrong)
    finally:
        await viewer.close()


# -- a list fed by producers is never invented -----------------------------------------------------------------


@pytest.mark.timeout(30)
async def test_an_expired_producer_list_is_never_refilled_from_templates(served: Serve) -> None:
    store = redis_of(served)
    producer = await Recorder(
        served.url, 'websocket', namespaces=('/pushed',), auth={'producer_token': PRODUCER_TOKEN}
    ).connect()
    viewer = await Recorder(served.url, 'websocket', namespaces=('/pushed',)).connect()
    try:
        assert (await producer.call('game_list:updated', {'gamelist': [GAME]}, namespace='/pushed'))[
            'status'
        ] == 'success'
        fresh = await viewer.call('main:screen', namespace='/pushed')
        assert fresh['status'] == 'success' and fresh['data']['gamelist'][0]['game_id'] == 'pushed_1'
        assert await async_wait_until(lambda: not store.exists('gamelist:pushed'), timeout_s=10)  # its 2 s TTL
        expired = await viewer.call('main:screen', namespace='/pushed')
        assert expired['status'] == 'error' and expired['event'] == 'main:screen' and 'data' not in expired
        assert 'expired' in expired['message']
        assert not store.exists('gamelist:pushed')  # nothing was invented
    finally:
        store.close()
        await producer.close()
        await viewer.close()


def test_publish_refuses_a_list_fed_by_producers(served: Serve) -> None:
    result = subprocess.run(  # noqa: PLW1510 - the exit code is asserted
        cli_command('publish', '--config', str(served.config), '--list', 'pushed'),
        cwd=served.workdir,
        capture_output=True,
        text=True,
        timeout=30,
        env=served.env,
    )
    assert result.returncode == 1
    assert 'list pushed is fed by producers' in result.stderr


def test_a_schedule_on_a_list_fed_by_producers_is_a_config_error(tmp_path: Path) -> None:
    data = shipped_data()
    data['lists']['current']['fed_by'] = 'producers'
    del data['lists']['current']['games']
    with pytest.raises(ConfigError) as raised:
        load_settings(write_config(tmp_path / 'games.yaml', data), {})
    assert "schedules[0].list: list 'current' is fed by producers" in str(raised.value)
    data['schedules'] = []
    settings = load_settings(write_config(tmp_path / 'games.yaml', data), {})
    assert settings.get_list('current').from_producers and settings.get_list('current').games == ()
    data['lists']['current']['games'] = 'all'  # templates for a list nobody builds from them
    with pytest.raises(ConfigError) as raised:
        load_settings(write_config(tmp_path / 'games.yaml', data), {})
    assert 'lists.current.games: a list fed by producers is never built from games: remove games' in str(raised.value)
