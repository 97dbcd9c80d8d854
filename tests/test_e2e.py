"""End to end: `gamelist-service serve` in a subprocess on the embedded Redis, real Socket.IO clients on both transports."""

from __future__ import annotations

import json
import re
import subprocess
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
import socketio
from redis.asyncio import Redis

from gamelist_service.producers.validation import GAME_FIELDS
from gamelist_service.storage.instances import running

from .conftest import cli_command, free_port
from .helpers import (
    ROOT,
    Recorder,
    Serve,
    answers,
    async_wait_until,
    hourly_data,
    http_get,
    redis_servers_on,
    serve_in,
    serving,
    shipped_data,
    wait_until,
    write_config,
)
from .helpers import (
    ready as ready_of,
)

TRANSPORTS = ['websocket', 'polling']


@pytest.fixture(scope='module')
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Serve]:
    """One serve on the embedded Redis for this module; its schedule runs once at start and then hourly."""
    # -v: the per-read Redis lines (the prototype's GET log) are DEBUG
    with serving(tmp_path_factory.mktemp('serve'), hourly_data(admin=True), global_args=('-v',)) as serve:
        yield serve


@pytest.fixture
def redis_of(served: Serve) -> Iterator[redis.Redis]:
    """A client of the embedded Redis that serve started, found the way publish and check find it."""
    (instance,) = running(served.workdir / '.gamelist', served.config)
    client = redis.Redis.from_url(instance.redis_url)
    yield client
    client.close()


@pytest.fixture
async def clients(served: Serve) -> AsyncIterator[list[Recorder]]:
    """One client per transport, each on / and /gameplay."""
    recorders = [await Recorder(served.url, transport).connect() for transport in TRANSPORTS]
    yield recorders
    for recorder in recorders:
        await recorder.close()


def publish(serve: Serve, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(  # noqa: PLW1510 - the exit code is asserted
        cli_command('publish', '--config', str(serve.config), *args),
        cwd=serve.workdir,
        capture_output=True,
        text=True,
        timeout=30,
        env=serve.env,
    )


def assert_envelope(message: dict[str, Any], event: str, text: str) -> None:
    assert set(message) == {'status', 'message', 'data', 'timestamp', 'event'}
    assert message['status'] == 'success'
    assert message['message'] == text
    assert message['event'] == event
    assert message['timestamp'].endswith('Z')
    data = message['data']
    assert {
        'gamelist',
        'updated_at',
        'cache_duration',
        'total_games',
        'active_games',
        'total_players',
        'version',
    } <= set(data)
    assert data['cache_duration'] == '300 seconds'
    assert data['total_games'] == len(data['gamelist']) == 5
    assert data['active_games'] == sum(1 for g in data['gamelist'] if g['status'] == 'active') == 3
    assert data['total_players'] == sum(g['active_gamepalye'] for g in data['gamelist'])
    for game in data['gamelist']:
        assert set(game) == set(GAME_FIELDS)


async def test_publish_reaches_every_client_on_both_transports_and_namespaces(
    served: Serve, clients: list[Recorder]
) -> None:
    result = publish(served)
    assert result.returncode == 0, result.stderr
    assert 'published list current to gamelist:current' in result.stdout
    assert '1 service process(es) subscribed' in result.stdout
    version = int(re.search(r'version (\d+)', result.stdout).group(1))  # type: ignore[union-attr]
    for client in clients:
        for namespace in ('/', '/gameplay'):
            # the schedule's first tick may also arrive, before the published list; each version arrives once
            assert await async_wait_until(
                lambda c=client, ns=namespace: version in versions_seen(c, ns)  # type: ignore[misc]
            )
            (message,) = [m for m in client.received('game_list:updated', namespace) if m['data']['version'] == version]
            assert_envelope(message, 'game_list:updated', 'Game list has been updated')
            seen = versions_seen(client, namespace)
            assert len(seen) == len(set(seen))


def versions_seen(client: Recorder, namespace: str) -> list[int]:
    return [m['data']['version'] for m in client.received('game_list:updated', namespace)]


@pytest.mark.parametrize('transport', TRANSPORTS)
async def test_main_screen_by_ack(served: Serve, transport: str) -> None:
    client = await Recorder(served.url, transport).connect()
    try:
        for namespace in ('/', '/gameplay'):
            reply = await client.call('main:screen', namespace=namespace)
            assert_envelope(reply, 'main:screen', 'Current game list')
        assert client.received('main:screen', '/') == []  # an ack, not also an event
    finally:
        await client.close()


@pytest.mark.parametrize('transport', TRANSPORTS)
async def test_main_screen_without_ack_is_emitted_to_that_client_only(served: Serve, transport: str) -> None:
    asker = await Recorder(served.url, transport).connect()
    other = await Recorder(served.url, transport).connect()
    try:
        await asker.sio.emit('main:screen', namespace='/gameplay')
        (reply,) = await asker.wait_for('main:screen', '/gameplay')
        assert_envelope(reply, 'main:screen', 'Current game list')
        # the other client asks too, and by then must have seen nothing of the first reply
        await other.call('main:screen', namespace='/gameplay')
        assert other.received('main:screen', '/gameplay') == []
    finally:
        await asker.close()
        await other.close()


@pytest.mark.timeout(30)
async def test_main_screen_rebuilds_an_expired_list(tmp_path: Path) -> None:
    # the service answers main:screen from memory until the list's TTL runs out, so let a short TTL lapse
    data = shipped_data(admin=True)
    data['lists']['current']['ttl'] = '2s'
    data['schedules'][0]['every'] = '1h'
    serve = serve_in(tmp_path, data)
    (instance,) = running(tmp_path / '.gamelist', serve.config)
    redis_of = redis.Redis.from_url(instance.redis_url)
    client = await Recorder(serve.url).connect()
    try:
        first = await client.call('main:screen')
        assert await async_wait_until(lambda: not redis_of.exists('gamelist:current'), timeout_s=10)
        reply = await client.call('main:screen')
        assert reply['event'] == 'main:screen' and reply['data']['total_games'] == 5
        assert reply['data']['version'] > first['data']['version']
        stored = json.loads(redis_of.get('gamelist:current') or b'{}')
        assert stored['version'] == reply['data']['version']
        assert 0 < redis_of.pttl('gamelist:current') <= 2000
        # the rebuild is broadcast, as a scheduled tick would be
        assert await async_wait_until(lambda: reply['data']['version'] in versions_seen(client, '/'))
    finally:
        await client.close()
        redis_of.close()
        assert serve.stop() == 0


@pytest.mark.parametrize('transport', TRANSPORTS)
async def test_device_info_is_stored_with_ttls(served: Serve, redis_of: redis.Redis, transport: str) -> None:
    client = await Recorder(served.url, transport, namespaces=('/gameplay',)).connect()
    try:
        payload = {
            'device_id': 'd-1',
            'platform': 'ios',
            'os_version': '17.1',
            'app_version': '2.0.0',
            'model': 'iPhone',
            'user_agent': 'ua',
            'locale': 'de-DE',
            'screen': {'width': 390, 'height': 844},
            'user_id': f'user-{transport}',
            'favourite_colour': 'blue',
        }
        reply = await client.call('device:info', payload, namespace='/gameplay')
        assert reply == {'status': 'success', 'ignored': ['favourite_colour']}
        sid = client.sio.get_sid('/gameplay')
        session = json.loads(redis_of.get(f'session:{sid}') or b'{}')
        assert session['device'] == {k: v for k, v in payload.items() if k != 'favourite_colour'}
        assert 3500 < redis_of.ttl(f'session:{sid}') <= 3600
        user = json.loads(redis_of.get(f'user:user-{transport}') or b'{}')
        assert user['user_id'] == f'user-{transport}' and user['session_id'] == sid
        assert 86000 < redis_of.ttl(f'user:user-{transport}') <= 86400
    finally:
        await client.close()


BAD_DEVICE_INFO: list[tuple[Any, str]] = [
    ('just a string', 'must be an object'),
    ([1, 2, 3], 'must be an object'),
    (42, 'must be an object'),
    ({'platform': 'toaster'}, 'platform'),
    ({'device_id': 7}, 'device_id'),
    ({'screen': {'width': 'wide', 'height': 1}}, 'screen.width'),
    ({'model': 'x' * 257}, 'model'),
    ({'device_id': 'a', 'padding': 'x' * 5000}, 'bytes'),
]


@pytest.mark.parametrize(('payload', 'mentions'), BAD_DEVICE_INFO)
async def test_bad_device_info_gets_an_error_ack_and_the_connection_survives(
    served: Serve, payload: Any, mentions: str
) -> None:
    client = await Recorder(served.url).connect()
    try:
        reply = await client.call('device:info', payload)
        assert reply['status'] == 'error'
        assert mentions in reply['message']
        assert 'Traceback' not in reply['message']
        assert client.sio.connected
        follow_up = await client.call('main:screen')
        assert follow_up['status'] == 'success'
    finally:
        await client.close()


async def test_unknown_event_gets_an_error_ack(served: Serve) -> None:
    client = await Recorder(served.url).connect()
    try:
        reply = await client.call('no:such:event', {'x': 1})
        assert reply == {'status': 'error', 'message': "unknown event 'no:such:event'"}
        assert (await client.call('main:screen'))['status'] == 'success'
    finally:
        await client.close()


@pytest.mark.parametrize('transport', TRANSPORTS)
async def test_origin_not_in_the_list_is_refused(served: Serve, transport: str) -> None:
    refused = Recorder(served.url, transport, headers={'Origin': 'http://evil.example'})
    with pytest.raises(socketio.exceptions.ConnectionError):
        await refused.connect()
    allowed = await Recorder(served.url, transport, headers={'Origin': 'http://localhost:3000'}).connect()
    assert allowed.sio.connected
    await allowed.close()


def test_http_routes(served: Serve, redis_of: redis.Redis) -> None:
    assert http_get(served.url + '/health') == (200, {'status': 'ok'})
    status, body = ready_of(served)
    assert status == 200 and body['status'] == 'ready' and body['redis']['status'] == 'ok'
    redis_of.set('gamelist:current', json.dumps({'gamelist': [], 'version': 99}), ex=60)
    assert http_get(served.url + '/api/v1/gamelist') == (200, {'gamelist': [], 'version': 99})
    assert http_get(served.url + '/api/v1/lists/current')[0] == 200
    redis_of.delete('gamelist:current')
    status, body = http_get(served.url + '/api/v1/gamelist')
    assert status == 404 and 'expired' in body['message']
    status, body = http_get(served.url + '/api/v1/lists/nope')
    assert status == 404 and body['status'] == 'error'
    status, body = http_get(served.url + '/no/such/route')
    assert status == 404 and body['status'] == 'error'


def test_check_finds_the_embedded_redis_with_no_flags(served: Serve) -> None:
    result = subprocess.run(  # noqa: PLW1510 - the exit code is asserted
        cli_command('check', '--config', str(served.config)),
        cwd=served.workdir,
        capture_output=True,
        text=True,
        timeout=30,
        env=served.env,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    for name in ('ping', 'set/get', 'ttl', 'version', 'latency'):
        assert f'ok   {name}:' in result.stdout
    assert 'redis 6.' in result.stdout or 'redis 7.' in result.stdout or 'redis 8.' in result.stdout


def test_publish_unknown_list_is_an_error(served: Serve) -> None:
    result = publish(served, '--list', 'nope')
    assert result.returncode == 1
    assert "no list named 'nope'" in result.stderr


def test_logs_carry_redis_and_broadcast_lines(served: Serve) -> None:
    assert publish(served).returncode == 0
    log = served.log()
    assert 'Redis SET gamelist:current' in log
    assert 'Redis GET gamelist:current' in log
    assert 'broadcast game_list:updated to / (' in log
    assert 'broadcast game_list:updated to /gameplay (' in log
    written = r'broadcast of version \d+ written in \d+\.\d ms \(\d+ clients over 2 namespaces\)'
    assert re.search(written, log), log[-1500:]


async def test_auth_since_catches_up_a_reconnecting_client(served: Serve) -> None:
    first = await Recorder(served.url).connect()
    version = (await first.call('main:screen'))['data']['version']
    await first.close()
    assert publish(served).returncode == 0  # the list moves on while the client is away
    back = await Recorder(served.url, auth={'since': version}).connect()
    try:
        (message,) = await back.wait_for('game_list:updated', '/')
        assert message['data']['version'] > version
        current = await Recorder(served.url, auth={'since': message['data']['version']}).connect()
        # up to date: nothing is sent; main:screen answers, and by then nothing else has arrived
        await current.call('main:screen')
        assert current.received('game_list:updated', '/') == []
        await current.close()
    finally:
        await back.close()


def test_publish_without_a_running_serve_is_a_clear_error(tmp_path: Path) -> None:
    config = write_config(tmp_path / 'games.yaml', shipped_data())
    result = subprocess.run(  # noqa: PLW1510 - the exit code is asserted
        cli_command('publish', '--config', str(config)), cwd=tmp_path, capture_output=True, text=True, timeout=30
    )
    assert result.returncode == 1
    assert 'no running serve' in result.stderr and '--redis-url' in result.stderr


async def test_external_redis_url_and_schedule_broadcasts(tmp_path: Path, redis_client: Redis, redis_url: str) -> None:
    data = shipped_data(admin=True)
    data['schedules'][0]['every'] = '300ms'
    data['namespaces']['/gameplay']['send_list_on_connect'] = True
    serve = serve_in(tmp_path, data, '--redis-url', redis_url)
    try:
        client = await Recorder(serve.url).connect()
        try:
            # send_list_on_connect: /gameplay gets the list at once; then the 300 ms schedule keeps both updated
            messages = await client.wait_for('game_list:updated', '/', count=3)
            versions = [m['data']['version'] for m in messages]
            assert versions == sorted(versions) and len(set(versions)) == len(versions)
            assert len(client.received('game_list:updated', '/gameplay')) >= len(messages)
        finally:
            await client.close()
        assert await redis_client.exists('gamelist:current')
        assert not (tmp_path / '.gamelist' / str(serve.port) / 'redis.sock').exists()  # no embedded Redis started
    finally:
        assert serve.stop() == 0


@pytest.mark.parametrize('signame', ['SIGTERM', 'SIGINT'])
def test_signal_stops_cleanly_and_leaves_no_redis_behind(tmp_path: Path, signame: str) -> None:
    import signal  # noqa: PLC0415

    serve = serve_in(tmp_path, shipped_data(admin=True))
    (instance,) = running(tmp_path / '.gamelist', serve.config)
    socket_path = Path(instance.redis_url.removeprefix('unix://'))
    assert redis_servers_on(socket_path)
    serve.signal(getattr(signal, signame))
    assert serve.process is not None
    assert serve.process.wait(10) == 0
    assert redis_servers_on(socket_path) == []
    assert not socket_path.exists()
    assert running(tmp_path / '.gamelist') == []
    assert 'gamelist-service stopped' in serve.log()


def test_unreachable_redis_is_reported_and_never_replaced(tmp_path: Path) -> None:
    dead = f'redis://127.0.0.1:{free_port()}/0'
    serve = serve_in(tmp_path, shipped_data(admin=True), '--redis-url', dead, wait_ready=False)
    try:
        assert wait_until(lambda: answers(serve))
        status, body = ready_of(serve)
        assert status == 503 and 'Redis is not answering' in body['reason']
        assert http_get(serve.url + '/health')[0] == 200
        assert wait_until(lambda: 'retrying in' in serve.log())
        assert 'embedded' not in serve.log().lower()
        assert not (tmp_path / '.gamelist' / str(serve.port) / 'redis.sock').exists()
    finally:
        assert serve.stop() == 0


def test_json_log_format(tmp_path: Path) -> None:
    serve = serve_in(tmp_path, shipped_data(admin=True), global_args=('--log-format', 'json'))
    assert wait_until(lambda: 'Redis SET gamelist:current' in serve.log())
    assert serve.stop() == 0
    lines = [json.loads(line) for line in serve.log().splitlines() if line.strip()]
    assert any(entry['message'].startswith('Redis SET gamelist:current') for entry in lines)
    assert all({'time', 'level', 'logger', 'message'} <= set(entry) for entry in lines)


@pytest.mark.timeout(30)
def test_two_instances_from_one_checkout_keep_apart(tmp_path: Path) -> None:
    config = write_config(tmp_path / 'games.yaml', shipped_data(admin=True))
    first = Serve(tmp_path, config, free_port()).start()
    second = Serve(tmp_path, config, free_port()).start()
    try:
        found = running(tmp_path / '.gamelist', config)
        assert sorted(i.port for i in found) == sorted([first.port, second.port])
        assert len({i.redis_url for i in found}) == 2
        result = subprocess.run(  # noqa: PLW1510 - the exit code is asserted
            cli_command('publish', '--config', str(config)),
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=30,
            env=first.env,
        )
        assert result.returncode == 1 and '--port' in result.stderr
        result = subprocess.run(  # noqa: PLW1510 - the exit code is asserted
            cli_command('publish', '--config', str(config), '--port', str(second.port)),
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=30,
            env=first.env,
        )
        assert result.returncode == 0, result.stderr
        # a second serve on a port already held is refused, and the first keeps running
        third = Serve(tmp_path, config, first.port)
        third.start(wait_ready=False)
        assert third.process is not None and third.process.wait(20) == 1
        assert 'already uses' in third.log()
        assert http_get(first.url + '/health')[0] == 200
    finally:
        assert first.stop() == 0
        assert second.stop() == 0


def test_python_dash_m_is_the_same_command() -> None:
    result = subprocess.run(  # noqa: PLW1510 - the exit code is asserted
        cli_command('--help'), cwd=ROOT, capture_output=True, text=True, timeout=30
    )
    assert result.returncode == 0
    for name in ('serve', 'validate', 'schema', 'publish', 'check'):
        assert name in result.stdout
