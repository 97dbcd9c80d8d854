"""The security review's findings, each sent again as the review sent it: what must happen now.

H1 abandoned upgrades; M1 deeply nested JSON; M2 device:info and users; M3 guessing namespace tokens; M4 slowloris on
the request head; M5 a flood of frames in one write; L5 /ready and /metrics; L6 the page's CSP; L8 expiring JWTs;
L9 IPv6 addresses. (L1/L2: tests/test_wsframe.py; L3/L4: tests/test_embedded.py; L7: tests/test_raw_protocol.py.)
"""

from __future__ import annotations

import asyncio
import json
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import aiohttp
import pytest
import socketio

from gamelist_service.config.loader import load_settings
from gamelist_service.config.settings import LimitSettings
from gamelist_service.errors import ConfigError
from gamelist_service.transport import guards, lean, wsframe
from gamelist_service.web.limits import ConnectionLimiter, address_key

from .clients import GuessClient, RawClient, UpgradeClient, masked
from .conftest import free_port
from .helpers import (
    ADMIN_TOKEN,
    Recorder,
    Serve,
    async_wait_until,
    hourly_data,
    http_get,
    ready,
    redis_of,
    schedule_runs,
    serve_in,
    serving,
    shipped_data,
    wait_until,
    write_config,
)
from .jwt_tokens import AUDIENCE, HMAC_KEY, ISSUER, SHARED, hs_token

CAP = 2  # limits.max_connections_per_ip of the module's serve: 4 sockets per address at most
GAMEPLAY_TOKEN = 'GAMEPLAY_TOKEN'


@pytest.fixture(scope='module')
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Serve]:
    """A serve as the review found it, but for its cap of 2 per address; /gameplay takes a shared token, /vip a JWT."""
    data = hourly_data(admin=True)
    data['limits'] = {'max_connections_per_ip': CAP}
    data['server']['handshake_timeout'] = '2s'
    data['namespaces']['/gameplay']['auth'] = {'mode': 'token', 'token_env': GAMEPLAY_TOKEN}
    data['namespaces']['/vip'] = {
        'list': 'current',
        'auth': {'mode': 'jwt', 'jwt': {'secret_env': 'VIP_JWT_SECRET', 'issuer': ISSUER, 'audience': AUDIENCE}},
    }
    env = {GAMEPLAY_TOKEN: SHARED, 'VIP_JWT_SECRET': HMAC_KEY}
    with serving(tmp_path_factory.mktemp('security'), data, env=env) as serve:
        assert wait_until(lambda: schedule_runs(serve) >= 1)
        yield serve
    assert 'Traceback' not in serve.log(), serve.log()[-3000:]


def _room_for_all(serve: Serve) -> bool:
    """The address can open its whole share of sockets at once: none of them is closed by the server."""
    probes = [socket.create_connection(('127.0.0.1', serve.port), timeout=2) for _ in range(2 * CAP)]
    try:
        time.sleep(0.3)
        for probe in probes:
            probe.setblocking(False)
            try:
                if probe.recv(1) == b'':
                    return False  # closed at once: the address was over its share
            except BlockingIOError:
                pass  # open, nothing to read: as it should be
        return True
    finally:
        for probe in probes:
            probe.close()


async def sockets_released(serve: Serve) -> None:
    """Wait until the server holds no socket of this address any more (the next test starts with its whole share)."""
    assert await async_wait_until(lambda: _room_for_all(serve), timeout_s=10)


# -- H1: an abandoned upgrade ----------------------------------------------------------------------------------------


@pytest.mark.timeout(30)
async def test_an_upgrade_left_unfinished_is_closed_after_interval_and_timeout(served: Serve) -> None:
    """Polling handshake, websocket upgrade (101), the probe, then silence: closed within ping interval + timeout
    (by its deadline, 1008, or with its session, whose pings go unanswered while it upgrades, 1000)."""
    client = UpgradeClient(served.port)
    try:
        await client.open_polling()
        await client.open_websocket()
        client.send('2probe')
        await client._wait(lambda: '3probe' in client.texts())
        opened = time.monotonic()
        assert await async_wait_until(client.ended, timeout_s=1 + 2 + 3), 'the unfinished upgrade is still open'
        assert client.close_code() in (1000, lean.POLICY_VIOLATION)
        assert time.monotonic() - opened < 1 + 2 + 3
    finally:
        await client.close()
    await sockets_released(served)


def test_an_upgrade_past_its_deadline_closes_with_1008() -> None:
    transport = _Transport()
    hub: Any = SimpleNamespace(eio=SimpleNamespace(max_http_buffer_size=1000))
    conn = lean.LeanConnection(SimpleNamespace(sid='s1'), hub, transport)
    conn.stage = lean.PROBING
    conn.upgrade_expired()
    assert transport.written[-1] == wsframe.close_frame(lean.POLICY_VIOLATION, 'upgrade not finished in time')
    assert transport.closed


async def test_a_session_that_ends_closes_the_websocket_it_was_upgrading_to(served: Serve) -> None:
    client = UpgradeClient(served.port)
    try:
        await client.open_polling()
        await client.open_websocket()
        client.send('2probe')
        await client._wait(lambda: '3probe' in client.texts())
        assert client.http is not None
        async with client.http.post(client.url('polling'), data='1') as response:  # the session closes
            assert response.status == 200
        assert await async_wait_until(client.ended, timeout_s=2), 'the websocket outlived its session'
    finally:
        await client.close()
    await sockets_released(served)


@pytest.mark.timeout(30)
async def test_sockets_count_against_the_address_cap(served: Serve) -> None:
    """The review's loop: handshake, upgrade, silence, again. At most 2 x the cap sockets stay open at once, and
    every orphan ends with its session."""
    orphans = [UpgradeClient(served.port) for _ in range(CAP)]
    try:
        for client in orphans:  # each holds two sockets: its polling connection (kept alive) and its websocket
            await client.open_polling()
            await client.open_websocket()
        extra = socket.create_connection(('127.0.0.1', served.port), timeout=2)
        with extra:
            extra.settimeout(2)
            assert extra.recv(1) == b''  # closed at once
        for client in orphans:
            assert await async_wait_until(client.ended, timeout_s=1 + 2 + 3)
    finally:
        for client in orphans:
            await client.close()
    await sockets_released(served)


async def test_shutdown_closes_a_connection_in_the_middle_of_its_upgrade(tmp_path: Path) -> None:
    data = shipped_data()
    data['server'].update(ping_interval='25s', ping_timeout='20s')  # no deadline could close it first
    serve = serve_in(tmp_path, data)
    client = UpgradeClient(serve.port)
    try:
        await client.open_polling()
        await client.open_websocket()
        client.send('2probe')
        await client._wait(lambda: '3probe' in client.texts())
        serve.signal(15)
        assert await async_wait_until(client.ended, timeout_s=5)
        assert client.close_code() == 1001
        assert serve.process is not None and await asyncio.to_thread(serve.process.wait, 10) == 0
    finally:
        await client.close()
        serve.stop()


# -- M1: deeply nested JSON ------------------------------------------------------------------------------------------

NESTED = '42["x",' + '[' * 1000 + ']' * 1000 + ']'


def test_json_depth_is_bounded_before_parsing() -> None:
    assert guards.json_depth_ok('["main:screen",{"a":[1,2,{"b":[]}]}]')
    assert guards.json_depth_ok('["x","' + '[' * 1000 + '"]')  # brackets in a string are text
    assert guards.json_depth_ok('[' * 32 + ']' * 32)
    assert not guards.json_depth_ok('[' * 33 + ']' * 33)
    assert not guards.json_depth_ok(NESTED[1:])


async def test_nested_json_on_a_websocket_closes_it_with_one_log_line(served: Serve) -> None:
    before = len(served.log())
    client = GuessClient(served.port)
    try:
        await client.open(('/',))
        client.send_raw(b''.join(masked(0x1, NESTED.encode()) for _ in range(100)))
        assert await async_wait_until(client.ended, timeout_s=5)
        assert client.close_code() == guards.PROTOCOL_ERROR
    finally:
        await client.close()
    assert wait_until(lambda: 'dropping connection' in served.log()[before:])
    added = served.log()[before:]
    assert added.count('nested deeper than 32 levels') == 1, added
    assert 'Traceback' not in added and 'RecursionError' not in added
    assert len(added) < 2000
    await sockets_released(served)


async def test_nested_json_over_polling_closes_the_session_with_one_log_line(served: Serve) -> None:
    before = len(served.log())
    client = UpgradeClient(served.port)
    try:
        await client.open_polling()
        assert client.http is not None
        async with client.http.post(client.url('polling'), data='40') as response:
            assert response.status == 200
        body = '\x1e'.join([NESTED] * 10)  # ten packets in one payload
        async with client.http.post(client.url('polling'), data=body) as response:
            assert response.status == 200
        assert wait_until(lambda: 'dropping connection' in served.log()[before:])
        polled = await client.poll()
        assert polled.startswith('400') or polled.endswith('1'), polled  # the session is closed
    finally:
        await client.close()
    added = served.log()[before:]
    assert added.count('nested deeper than 32 levels') == 1, added
    assert 'Traceback' not in added
    await sockets_released(served)


# -- M2: device:info, users and the per-address default ---------------------------------------------------------------


async def test_one_connection_speaks_for_one_user(served: Serve) -> None:
    client = await Recorder(served.url, 'websocket', namespaces=('/',)).connect()
    store = redis_of(served)
    try:
        assert await client.call('device:info', {'user_id': 'alice', 'platform': 'web'}) == {'status': 'success'}
        reply = await client.call('device:info', {'user_id': 'bob'})
        assert reply == {'status': 'error', 'message': 'this connection already speaks for another user_id'}
        assert await client.call('device:info', {'user_id': 'alice', 'platform': 'ios'}) == {'status': 'success'}
        assert store.exists('user:alice') and not store.exists('user:bob')
    finally:
        store.close()
        await client.close()


async def test_with_jwt_auth_user_id_is_the_tokens_subject(served: Serve) -> None:
    token = hs_token(sub='alice')
    client = await Recorder(served.url, 'websocket', namespaces=('/vip',), auth={'token': token}).connect()
    try:
        reply = await client.call('device:info', {'user_id': 'mallory'}, namespace='/vip')
        assert reply == {'status': 'error', 'message': "user_id must be your token's sub"}
        assert await client.call('device:info', {'user_id': 'alice'}, namespace='/vip') == {'status': 'success'}
    finally:
        await client.close()


def test_there_is_a_per_address_cap_by_default(tmp_path: Path) -> None:
    data = shipped_data()
    data.pop('limits', None)
    settings = load_settings(write_config(tmp_path / 'games.yaml', data), {})
    assert settings.limits.max_connections_per_ip == LimitSettings().max_connections_per_ip == 100


# -- M3: guessing namespace tokens -----------------------------------------------------------------------------------


async def test_guessing_a_token_online_closes_the_session_after_a_few_tries(served: Serve) -> None:
    before = len(served.log())
    client = GuessClient(served.port)
    try:
        await client.open()
        guesses = [masked(0x1, f'40/gameplay,{{"token":"guess-{i:04d}"}}'.encode()) for i in range(3000)]
        client.send_raw(b''.join(guesses))
        assert await async_wait_until(client.ended, timeout_s=10)
        texts = [RawClient._text(frame) for frame in client.frames]
        refusals = [text for text in texts if text.startswith('44/gameplay,')]
        assert 3 <= len(refusals) <= 8, refusals
        assert client.close_code() == 1008
        assert not any(text.startswith('40/gameplay,{"sid"') for text in texts)
    finally:
        await client.close()
    added = served.log()[before:]
    assert added.count('refused on /gameplay') <= 8
    await sockets_released(served)


async def test_a_token_with_a_lone_surrogate_is_refused_without_a_traceback(served: Serve) -> None:
    before = len(served.log())
    client = GuessClient(served.port)
    try:
        await client.open()
        client.send('40/gameplay,{"token":"\\ud800xyz"}')
        await client._wait(lambda: any(RawClient._text(f).startswith('44/gameplay,') for f in client.frames))
        refusal = next(RawClient._text(f) for f in client.frames if RawClient._text(f).startswith('44/gameplay,'))
        assert json.loads(refusal.split(',', 1)[1]) == {'message': 'invalid token'}
    finally:
        await client.close()
    assert 'Traceback' not in served.log()[before:]
    await sockets_released(served)


def test_short_tokens_are_refused_by_validate(tmp_path: Path) -> None:
    data = shipped_data()
    data['namespaces']['/gameplay']['auth'] = {'mode': 'token', 'token_env': 'T'}
    path = write_config(tmp_path / 'games.yaml', data)
    with pytest.raises(ConfigError) as raised:
        load_settings(path, {'T': 'abc'})
    assert 'T holds 3 bytes; the shared secret of namespace /gameplay must be at least 16 bytes' in str(raised.value)
    assert load_settings(path, {'T': 'x' * 16}).get_namespace('/gameplay').auth.token == 'x' * 16


# -- M4: slowloris ---------------------------------------------------------------------------------------------------


@pytest.mark.timeout(30)
def test_a_request_head_trickled_in_is_cut_off_at_the_handshake_timeout(served: Serve) -> None:
    started = time.monotonic()
    with socket.create_connection(('127.0.0.1', served.port), timeout=2) as sock:
        sock.sendall(b'GET /socket.io/?EIO=4&transport=polling HTTP/1.1\r\nHost: x\r\n')
        sock.settimeout(0.5)
        closed_after = None
        for i in range(40):  # a header line every half second, for at most 20 s
            try:
                sock.sendall(f'X-{i}: y\r\n'.encode())
                data = sock.recv(4096)
            except TimeoutError:
                continue
            except OSError:
                data = b''
            closed_after = time.monotonic() - started
            assert data == b'' or data.startswith(b'HTTP/1.1 408'), data
            break
    assert closed_after is not None, 'the trickling client was never cut off'
    assert closed_after < 2 + 1 + 2  # handshake_timeout, the check interval, a margin


# -- M5: a flood in one write ----------------------------------------------------------------------------------------


class _Transport:
    """What a lean connection uses of its transport, recorded."""

    def __init__(self) -> None:
        self.written: list[bytes] = []
        self.paused = False
        self.closed = False

    def is_closing(self) -> bool:
        return self.closed

    def close(self) -> None:
        self.closed = True

    def write(self, data: bytes) -> None:
        self.written.append(data)

    def pause_reading(self) -> None:
        self.paused = True

    def resume_reading(self) -> None:
        self.paused = False


async def test_a_flood_in_one_write_is_counted_before_any_task_and_reading_pauses() -> None:
    """10,000 events in one read: at most MAX_IN_FLIGHT tasks at a time, reading paused meanwhile, and exactly
    `burst` events reach the normal path; the rest are refused on arrival (error mode: no ack was asked for)."""
    limits = LimitSettings(events_per_second=0.001, burst=100, over_limit='error')
    gate = guards.Gate(ConnectionLimiter(lambda: limits))
    received: list[Any] = []
    release = asyncio.Event()

    async def receive(pkt: Any) -> None:
        received.append(pkt)
        await release.wait()

    sock = SimpleNamespace(sid='s1', receive=receive, closed=False, closing=False)
    hub: Any = SimpleNamespace(
        eio=SimpleNamespace(max_http_buffer_size=65536),
        gate=gate,
        responder=None,
        receiving=set(),
        verbose=lambda: False,
    )
    transport = _Transport()
    conn = lean.LeanConnection(sock, hub, transport)
    conn.data_received(b''.join(masked(0x1, b'42["x"]') for _ in range(10_000)))
    assert len(hub.receiving) == lean.MAX_IN_FLIGHT and transport.paused
    assert conn.backlog is not None and len(conn.backlog) == 10_000 - lean.MAX_IN_FLIGHT
    release.set()
    assert await async_wait_until(lambda: conn.backlog is None and not hub.receiving, timeout_s=10)
    assert len(received) == limits.burst
    assert not transport.paused


# -- L5: /ready and /metrics -----------------------------------------------------------------------------------------


def test_ready_shows_details_only_to_the_admin_token(served: Serve) -> None:
    assert http_get(served.url + '/ready') == (200, {'status': 'ready'})
    wrong = http_get(served.url + '/ready', headers={'Authorization': 'Bearer not-the-token-at-all'})
    assert wrong == (200, {'status': 'ready'})
    status, body = ready(served)
    assert status == 200 and {'config', 'leader', 'process', 'schedules', 'redis'} <= set(body)
    assert ADMIN_TOKEN not in served.log()


def test_metrics_can_be_served_on_an_admin_listener_only(tmp_path: Path) -> None:
    data = shipped_data()
    admin_port = free_port()
    data['server']['metrics_listen'] = f'127.0.0.1:{admin_port}'
    serve = serve_in(tmp_path, data)
    try:
        assert http_get(serve.url + '/metrics')[0] == 404
        with socket.create_connection(('127.0.0.1', admin_port), timeout=5) as sock:
            sock.sendall(b'GET /metrics HTTP/1.0\r\n\r\n')
            text = b''
            while chunk := sock.recv(65536):
                text += chunk
        assert text.startswith(b'HTTP/1.0 200') and b'gamelist_config_generation' in text
    finally:
        assert serve.stop() == 0


# -- L6: the page's CSP ----------------------------------------------------------------------------------------------


async def test_the_page_may_connect_to_its_own_origin_only(served: Serve) -> None:
    async with aiohttp.ClientSession() as http, http.get(served.url + '/') as response:
        csp = response.headers['Content-Security-Policy']
    assert "connect-src 'self';" in csp and 'ws:' not in csp and 'wss:' not in csp


# -- L8: a JWT that expires ------------------------------------------------------------------------------------------


@pytest.mark.timeout(30)
async def test_a_client_whose_token_expires_is_closed_and_reconnects_with_a_fresh_one(served: Serve) -> None:
    issued: list[str] = []

    def auth() -> dict[str, str]:
        token = hs_token(sub='alice', exp=int(time.time()) + 2 + len(issued) * 60)  # the first lives 2 s
        issued.append(token)
        return {'token': token}

    client = socketio.AsyncClient(reconnection=True, reconnection_delay=0.1, reconnection_delay_max=0.2)
    disconnects: list[str] = []
    client.on('disconnect', lambda *args: disconnects.append(str(args[0]) if args else ''), namespace='/vip')
    try:
        await client.connect(served.url, transports=['websocket'], namespaces=['/vip'], auth=auth, wait_timeout=10)
        assert await async_wait_until(lambda: len(issued) >= 2 and client.connected, timeout_s=10)
        assert disconnects and disconnects[0] in ('transport close', 'transport error')  # not a final one
        assert (await client.call('main:screen', namespace='/vip', timeout=5))['status'] == 'success'
    finally:
        await client.disconnect()
    assert 'its token expired' in served.log()


# -- L9: IPv6 -------------------------------------------------------------------------------------------------------


def test_ipv6_addresses_count_by_their_64_prefix() -> None:
    assert address_key('2001:db8:1:2:aaaa::1') == address_key('2001:db8:1:2:bbbb::2') == '2001:db8:1:2::/64'
    assert address_key('2001:db8:1:3::1') != address_key('2001:db8:1:2::1')
    assert address_key('::ffff:192.0.2.1') == '192.0.2.1'
    limiter = ConnectionLimiter(lambda: LimitSettings(max_connections_per_ip=2))
    limiter.opened('a', '2001:db8:1:2::1')
    limiter.opened('b', '2001:db8:1:2::2')
    limiter.opened('c', '2001:db8:1:2::3')
    assert all(limiter.over_cap(sid) for sid in 'abc')  # three sessions of one /64, over its cap of 2
    assert limiter.socket_opened('2001:db8:9::1') and limiter.socket_opened('2001:db8:9::2')
    assert limiter.socket_opened('2001:db8:9::3') and limiter.socket_opened('2001:db8:9::4')
    assert not limiter.socket_opened('2001:db8:9::5')  # 2 x the cap for the whole /64
    assert limiter.socket_opened('2001:db8:a::1')
