"""Per-connection event rate and connections per client address, from the config's limits."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import urllib.error
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest
import socketio

from gamelist_service.config.loader import load_settings
from gamelist_service.config.settings import LimitSettings
from gamelist_service.web.limits import RATE_LIMITED, TOO_MANY_CONNECTIONS, ConnectionLimiter, TokenBucket, client_ip

from .helpers import Recorder, Serve, async_wait_until, hourly_data, serving, shipped_data, write_config

# --- units -------------------------------------------------------------------------------------------------------


class FakeRequest:
    ip = '198.51.100.4'


def test_client_ip_is_the_peer_unless_forwarded_for_is_trusted() -> None:
    environ = {'REMOTE_ADDR': '127.0.0.1', 'sanic.request': FakeRequest(), 'HTTP_X_FORWARDED_FOR': '1.1.1.1, 10.0.0.9'}
    assert client_ip(environ, trust_forwarded_for=False) == '198.51.100.4'
    # trusted: the last entry, the one the proxy appended; what the client wrote before it does not count
    assert client_ip(environ, trust_forwarded_for=True) == '10.0.0.9'
    assert client_ip({'sanic.request': FakeRequest()}, trust_forwarded_for=True) == '198.51.100.4'
    assert client_ip({'REMOTE_ADDR': '127.0.0.1'}, trust_forwarded_for=False) == '127.0.0.1'


def test_token_bucket_allows_a_burst_then_the_rate() -> None:
    bucket = TokenBucket(tokens=3.0, stamp=0.0)
    assert [bucket.take(0.0, rate=2.0, burst=3) for _ in range(4)] == [True, True, True, False]
    assert bucket.take(0.25, rate=2.0, burst=3) is False  # half a token
    assert bucket.take(0.5, rate=2.0, burst=3) is True
    assert [bucket.take(100.0, rate=2.0, burst=3) for _ in range(4)] == [True, True, True, False]  # capped at burst


def test_limiter_counts_sessions_per_address_and_reads_limits_live() -> None:
    now = [0.0]
    limits = [LimitSettings(events_per_second=1, burst=2, max_connections_per_ip=2)]
    limiter = ConnectionLimiter(lambda: limits[0], clock=lambda: now[0])
    for sid in ('a', 'b', 'c'):
        limiter.opened(sid, '203.0.113.1')
    limiter.opened('d', '203.0.113.2')
    assert [limiter.over_cap(sid) for sid in 'abcd'] == [True, True, True, False]
    assert not limiter.refuse_handshake('203.0.113.1')
    limiter.opened('e', '203.0.113.1')
    assert limiter.refuse_handshake('203.0.113.1')  # twice the cap held: refused before a session opens
    limiter.closed('c')
    limiter.closed('e')
    assert not limiter.over_cap('a') and limiter.connections('a') == 2
    assert [limiter.allow_event('a') for _ in range(3)] == [True, True, False]
    assert limiter.allow_event('d')  # a bucket per session
    assert limiter.trip('a') and not limiter.trip('a')
    limits[0] = LimitSettings(events_per_second=1, burst=2, max_connections_per_ip=0)  # a reload: no cap
    limiter.opened('f', '203.0.113.1')
    assert not limiter.over_cap('f')
    limiter.closed('a')
    assert 'a' not in limiter.buckets and 'a' not in limiter.tripped


def test_limits_in_the_config(tmp_path: Any) -> None:
    data = shipped_data()
    assert load_settings(write_config(tmp_path / 'a.yaml', data), {}).limits == LimitSettings()
    data['limits'] = {'events_per_second': 0.5, 'burst': 3, 'max_connections_per_ip': 7, 'over_limit': 'error'}
    data['server']['trust_forwarded_for'] = True
    settings = load_settings(write_config(tmp_path / 'b.yaml', data), {})
    assert settings.limits == LimitSettings(0.5, 3, 7, 'error')
    assert settings.server.trust_forwarded_for is True


# --- end to end --------------------------------------------------------------------------------------------------

BURST = 5
CAP = 3


@pytest.fixture(scope='module')
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Serve]:
    data = hourly_data()
    data['server']['trust_forwarded_for'] = True  # so each test can be its own address
    # a refill of one event every 10 s: a flood cannot be outrun by the refill during the test
    data['limits'] = {'events_per_second': 0.1, 'burst': BURST, 'max_connections_per_ip': CAP}
    with serving(tmp_path_factory.mktemp('limits'), data) as serve:
        yield serve


def from_address(ip: str) -> dict[str, Any]:
    return {'headers': {'X-Forwarded-For': ip}}


@pytest.mark.parametrize('transport', ['websocket', 'polling'])
async def test_a_flood_gets_an_error_ack_then_a_disconnect_and_others_keep_working(
    served: Serve, transport: str
) -> None:
    ip = f'192.0.2.{10 + len(transport)}'
    flooder = await Recorder(served.url, transport, **from_address(ip)).connect()
    bystander = await Recorder(served.url, transport, **from_address(ip)).connect()
    timeline: list[tuple[str, Any]] = []

    async def on_disconnect(*args: Any) -> None:
        timeline.append(('disconnect', args))

    flooder.sio.on('disconnect', on_disconnect, namespace='/')
    try:
        # faster than any refill, and under Engine.IO's own cap of 16 packets in one polling request
        for i in range(BURST * 2):

            def ack(reply: Any, i: int = i) -> None:
                timeline.append(('ack', reply))

            await flooder.sio.emit('main:screen', namespace='/', callback=ack)
        assert await async_wait_until(lambda: any(kind == 'disconnect' for kind, _ in timeline))
        acks = [reply for kind, reply in timeline if kind == 'ack']
        first_disconnect = [kind for kind, _ in timeline].index('disconnect')
        assert sum(1 for reply in acks if reply['status'] == 'success') <= BURST + 1
        refused = [i for i, (kind, reply) in enumerate(timeline) if kind == 'ack' and reply['status'] == 'error']
        assert refused and refused[0] < first_disconnect  # the error ack arrives before the disconnect
        assert timeline[refused[0]][1] == {'status': 'error', 'message': RATE_LIMITED}
        assert await async_wait_until(lambda: not flooder.sio.connected)
        # the other client, same address, same namespaces, is untouched
        assert bystander.sio.connected
        for namespace in ('/', '/gameplay'):
            assert (await bystander.call('main:screen', namespace=namespace))['status'] == 'success'
        assert 'is over its event rate' in served.log()
    finally:
        await flooder.close()
        await bystander.close()


async def refused_message(url: str, **kwargs: Any) -> Any:
    client = Recorder(url, 'websocket', namespaces=('/',), **kwargs)
    errors: list[Any] = []

    async def on_error(data: Any = None) -> None:
        errors.append(data)

    client.sio.on('connect_error', on_error, namespace='/')
    with pytest.raises(socketio.exceptions.ConnectionError):
        await client.connect()
    return errors


async def test_connections_per_address_are_capped(served: Serve) -> None:
    ip = '192.0.2.50'
    held = [await Recorder(served.url, 'websocket', **from_address(ip)).connect() for _ in range(CAP)]
    try:
        assert await refused_message(served.url, **from_address(ip)) == [{'message': TOO_MANY_CONNECTIONS}]
        # the client's own X-Forwarded-For entries do not count, only the last one (the proxy's)
        spoofed = from_address(f'192.0.2.99, {ip}')
        assert await refused_message(served.url, **spoofed) == [{'message': TOO_MANY_CONNECTIONS}]
        other = await Recorder(served.url, 'websocket', **from_address('192.0.2.51')).connect()  # another address
        await other.close()
        for client in held:  # everyone already in keeps working
            assert (await client.call('main:screen'))['status'] == 'success'
        await held.pop().close()
        # once the server has seen that close, there is room for one again (bounded: each try is a real connect)
        again = None
        for _ in range(50):
            try:
                again = await Recorder(served.url, 'websocket', **from_address(ip)).connect()
                break
            except socketio.exceptions.ConnectionError:
                continue
        assert again is not None
        held.append(again)
        assert 'holds 4 connections (limit 3)' in served.log()
    finally:
        for client in held:
            await client.close()


def handshake(url: str, ip: str) -> tuple[int, Any]:
    request = urllib.request.Request(url + '/socket.io/?EIO=4&transport=polling', headers={'X-Forwarded-For': ip})
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def test_an_address_holding_twice_its_cap_is_refused_at_the_handshake(served: Serve) -> None:
    ip = '192.0.2.77'
    # Engine.IO sessions that never connect a namespace (and are never closed) still count
    opened = [handshake(served.url, ip) for _ in range(2 * CAP)]
    assert all(status == 200 and body.startswith('0{') for status, body in opened)
    assert handshake(served.url, ip) == (401, {'message': TOO_MANY_CONNECTIONS})
    assert handshake(served.url, '192.0.2.78')[0] == 200


def test_a_reload_applies_limits_and_auth_live_but_not_trust_forwarded_for(tmp_path: Any) -> None:
    from gamelist_service.config.reload import merge, restart_only_changes  # noqa: PLC0415

    data = shipped_data()
    old = load_settings(write_config(tmp_path / 'old.yaml', data), {})
    data['limits'] = {'events_per_second': 1, 'burst': 2, 'max_connections_per_ip': 3}
    data['namespaces']['/gameplay']['auth'] = {'mode': 'token', 'token_env': 'T'}
    data['server']['trust_forwarded_for'] = True
    new = load_settings(write_config(tmp_path / 'new.yaml', data), {'T': 'a-secret-of-16-bytes+'})
    merged = merge(old, new)
    assert merged.limits == LimitSettings(1, 2, 3)
    assert merged.get_namespace('/gameplay').auth.mode == 'token'
    assert merged.server.trust_forwarded_for is False
    assert restart_only_changes(old, new) == ['server.trust_forwarded_for: False -> True']


async def test_websocket_handshakes_over_twice_the_cap_are_refused_at_the_handshake(served: Serve) -> None:
    """The same refusal when the handshake is a websocket's (answered without Sanic's request machinery: lean.py)."""
    ip = '192.0.2.88'
    opened = []
    try:
        for _ in range(2 * CAP + 1):
            reader, writer = await asyncio.open_connection('127.0.0.1', served.port)
            opened.append(writer)
            writer.write(
                (
                    'GET /socket.io/?EIO=4&transport=websocket HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n'
                    f'Connection: Upgrade\r\nSec-WebSocket-Key: {base64.b64encode(os.urandom(16)).decode()}\r\n'
                    f'Sec-WebSocket-Version: 13\r\nX-Forwarded-For: {ip}\r\n\r\n'
                ).encode()
            )
            head = await asyncio.wait_for(reader.readuntil(b'\r\n\r\n'), 5)
            status = head.split(b'\r\n', 1)[0]
        assert status == b'HTTP/1.1 401 Unauthorized', status  # the last one; the others got their 101
        body = await asyncio.wait_for(reader.read(), 5)
        assert json.loads(body) == {'message': TOO_MANY_CONNECTIONS}
    finally:
        for writer in opened:
            writer.close()
