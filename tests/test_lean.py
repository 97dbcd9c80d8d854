"""Lean websocket connections (gamelist_service/lean.py) against the plain path, on the wire.

Each behaviour runs against a serve with the fast path (where directly connected websockets are lean connections)
and one without (Sanic's websocket and python-engineio's handler), and must look the same from the client: pings and
pongs keep a client, silence ends it, websocket pings are answered, close frames are echoed, a frame the protocol
forbids closes the connection with the same close code, and a shutdown says 1001 (going away). Where the lean
connection does more than the plain path (text that is not UTF-8, a message over the limit), its test says so.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import struct
import time
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import socketio
from engineio.async_socket import AsyncSocket

from gamelist_service.transport import fastpath, lean, wsframe

from .clients import CLOSE_OPCODE, NAMESPACES, RawClient, UpgradeClient, WireClient, masked
from .helpers import (
    Recorder,
    Serve,
    async_wait_until,
    fast_and_plain,
    fixed_list,
    metric,
    redis_of,
    start_serve,
    wait_until,
)

PING_FRAME = b'\x81\x012'


def clients_on_root(serve: Serve) -> float:
    """Clients connected to / (the gauge of /metrics): 0 once the module's earlier clients, and this test's, left."""
    return metric(serve, 'gamelist_connected_clients', '{namespace="/"}')


class SilentClient(RawClient):
    """A raw websocket client that stops answering pings once told to (a client gone without closing)."""

    answer = True

    def send(self, text: str) -> None:
        if text == '3' and not self.answer:
            return
        super().send(text)


@pytest.fixture(scope='module')
def serves(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[bool, Serve]]:
    yield from fast_and_plain(tmp_path_factory.mktemp('lean'))


@pytest.mark.timeout(30)
@pytest.mark.parametrize('fast', [True, False])
async def test_a_client_answering_pings_stays_over_many_intervals(serves: dict[bool, Serve], fast: bool) -> None:
    serve = serves[fast]  # the tests' config: a ping every 1 s, 2 s to answer; silence for 3 s ends a session
    client = await RawClient(serve.port).connect()
    try:
        await client._wait(lambda: client.frames.count(PING_FRAME) >= 5, timeout_s=20)
        client.send('4250["main:screen"]')  # and it is still served
        await client._wait(lambda: any(RawClient.payload(f).startswith(b'4350[') for f in client.frames))
        assert not any(f[0] & 0x0F == CLOSE_OPCODE for f in client.frames)
    finally:
        await client.close()


@pytest.mark.timeout(30)
@pytest.mark.parametrize('fast', [True, False])
async def test_a_client_that_stops_answering_is_closed_after_interval_and_timeout(
    serves: dict[bool, Serve], fast: bool
) -> None:
    serve = serves[fast]
    client = SilentClient(serve.port)
    await client.connect()
    assert wait_until(lambda: clients_on_root(serve) >= 1)
    try:
        await client._wait(lambda: PING_FRAME in client.frames, timeout_s=10)
        client.answer = False
        stopped = time.monotonic()
        await client._wait(lambda: any(f[0] & 0x0F == CLOSE_OPCODE for f in client.frames), timeout_s=15)
        waited = time.monotonic() - stopped
        assert 1.0 <= waited <= 12.0, waited  # the next ping (1 s) and its 2 s to answer; never before a ping
        assert wait_until(lambda: clients_on_root(serve) == 0)  # the server let it go
    finally:
        await client.close()


@pytest.mark.parametrize('fast', [True, False])
async def test_a_client_that_closes_is_seen_leaving_at_once(serves: dict[bool, Serve], fast: bool) -> None:
    serve = serves[fast]
    before = serve.log().count('(transport close;') + serve.log().count('(client disconnect;')
    recorder = await Recorder(serve.url, 'websocket').connect()
    assert (await recorder.call('main:screen'))['status'] == 'success'
    await recorder.close()
    # both namespaces left, long before a ping could time out
    assert wait_until(
        lambda: serve.log().count('(transport close;') + serve.log().count('(client disconnect;') >= before + 2, 5
    )


@pytest.mark.parametrize('fast', [True, False])
async def test_only_frames_follow_the_handshake(serves: dict[bool, Serve], fast: bool) -> None:
    """The 101 and then the OPEN packet's frame: no byte of an HTTP answer after it, on either path."""
    serve = serves[fast]
    reader, writer = await asyncio.open_connection('127.0.0.1', serve.port)
    try:
        key = 'dGhlIHNhbXBsZSBub25jZQ=='  # RFC 6455's example
        writer.write(
            b'GET /socket.io/?EIO=4&transport=websocket HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n'
            b'Connection: Upgrade\r\nSec-WebSocket-Key: ' + key.encode() + b'\r\nSec-WebSocket-Version: 13\r\n\r\n'
        )
        head = await asyncio.wait_for(reader.readuntil(b'\r\n\r\n'), 10)
        assert head.startswith(b'HTTP/1.1 101 ')
        assert b'sec-websocket-accept: s3pplmbitxaq9kygzzhzrbk+xoo=' in head.lower()
        first = await asyncio.wait_for(reader.readexactly(2), 10)
        assert first[0] == 0x81 and first[1] < 126
        payload = await asyncio.wait_for(reader.readexactly(first[1]), 10)
        assert payload.startswith(b'0{"sid":"')
        writer.write(masked(wsframe.TEXT, b'40'))
        first = await asyncio.wait_for(reader.readexactly(2), 10)
        assert first[0] == 0x81
        assert (await asyncio.wait_for(reader.readexactly(first[1]), 10)).startswith(b'40{"sid":"')
    finally:
        writer.close()


@pytest.mark.parametrize('fast', [True, False])
async def test_a_websocket_ping_gets_its_pong(serves: dict[bool, Serve], fast: bool) -> None:
    client = await WireClient(serves[fast].port).connect()
    try:
        client.send_raw(masked(wsframe.PING, b'are you there'))
        await client._wait(lambda: bytes([0x8A, 13]) + b'are you there' in client.frames)
    finally:
        await client.close()


@pytest.mark.parametrize('fast', [True, False])
async def test_a_fragmented_request_is_answered(serves: dict[bool, Serve], fast: bool) -> None:
    client = await WireClient(serves[fast].port).connect()
    try:
        client.send_raw(masked(wsframe.TEXT, b'4277["main', fin=False))
        client.send_raw(masked(wsframe.PING, b'between'))  # a control frame between the fragments
        client.send_raw(masked(wsframe.CONTINUATION, b':screen"]'))
        await client._wait(
            lambda: any(RawClient.payload(f).startswith(b'4377[{"status":"success"') for f in client.frames)
        )
        assert bytes([0x8A, 7]) + b'between' in client.frames
    finally:
        await client.close()


@pytest.mark.parametrize('fast', [True, False])
async def test_a_close_frame_is_echoed_and_the_client_leaves(serves: dict[bool, Serve], fast: bool) -> None:
    serve = serves[fast]
    client = await WireClient(serve.port).connect()
    assert wait_until(lambda: clients_on_root(serve) >= 1)
    try:
        client.send_raw(masked(wsframe.CLOSE, struct.pack('!H', 1000) + b'bye'))
        await client._wait(client.ended)
        assert client.close_code() == 1000
        assert wait_until(lambda: clients_on_root(serve) == 0, 5)
    finally:
        await client.close()


@pytest.mark.parametrize(
    ('frame', 'code'),
    [
        (masked(wsframe.TEXT, b'42["main:screen"]', mask=False), wsframe.PROTOCOL_ERROR),
        (masked(wsframe.CONTINUATION, b'x'), wsframe.PROTOCOL_ERROR),
        (masked(0x3, b'x'), wsframe.PROTOCOL_ERROR),
        (masked(wsframe.TEXT, b'x'), wsframe.PROTOCOL_ERROR),  # not an Engine.IO packet
        (masked(wsframe.CLOSE, struct.pack('!H', 999)), wsframe.PROTOCOL_ERROR),
    ],
    ids=['unmasked', 'stray-continuation', 'reserved-opcode', 'not-engineio', 'bad-close-code'],
)
@pytest.mark.parametrize('fast', [True, False])
async def test_a_forbidden_frame_closes_the_connection_with_the_same_code(
    serves: dict[bool, Serve], fast: bool, frame: bytes, code: int
) -> None:
    client = await WireClient(serves[fast].port).connect()
    try:
        client.send_raw(frame)
        await client._wait(lambda: client.close_code() is not None)
        assert client.close_code() == code
        await client._wait(client.ended)
    finally:
        await client.close()
    other = await WireClient(serves[fast].port).connect()  # and the service goes on
    await other.close()


async def test_text_that_is_not_utf8_closes_with_1007(serves: dict[bool, Serve]) -> None:
    """RFC 6455 section 8.1. (The plain path differs here: Sanic's websocket drops the frame and keeps the client.)"""
    client = await WireClient(serves[True].port).connect()
    try:
        client.send_raw(masked(wsframe.TEXT, b'42["main:screen\xff"]'))
        await client._wait(lambda: client.close_code() is not None)
        assert client.close_code() == wsframe.INVALID_DATA
    finally:
        await client.close()


async def test_a_message_over_the_limit_is_refused_from_its_header(serves: dict[bool, Serve]) -> None:
    client = await WireClient(serves[True].port).connect()
    try:
        header = masked(wsframe.TEXT, b'4' * 70_000)[:14]  # maxPayload is 65536: the header says enough
        client.send_raw(header)
        await client._wait(lambda: client.close_code() is not None)
        assert client.close_code() == wsframe.TOO_BIG
    finally:
        await client.close()


@pytest.mark.timeout(30)
@pytest.mark.parametrize('fast', [True, False])
async def test_shutdown_says_going_away(tmp_path: Path, fast: bool) -> None:
    serve = start_serve(tmp_path / 'shutdown', fast)
    client = await WireClient(serve.port).connect()
    try:
        assert await asyncio.to_thread(serve.stop) == 0
        await client._wait(client.ended)
        assert client.close_code() == wsframe.GOING_AWAY
    finally:
        await client.close()


def test_check_passes_with_the_pinned_libraries() -> None:
    assert lean.check() == []


def test_accept_key_is_rfc_6455s() -> None:
    assert lean.accept_key('dGhlIHNhbXBsZSBub25jZQ==') == 's3pPLMBiTxaQ9kYGzzhZRbK+xOo='
    assert lean.accept_key('short') is None
    assert lean.accept_key(base64.b64encode(b'x' * 15).decode()) is None
    assert lean.accept_key('ü' * 24) is None


def test_a_missing_part_leaves_python_engineios_handler(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.delattr(AsyncSocket, '_send_ping')
    manager = fastpath.FastAsyncManager()
    manager.installed = True  # as fastpath.install leaves it
    with caplog.at_level(logging.WARNING, 'gamelist_service.transport.lean'):
        assert lean.install(SimpleNamespace(), manager) is None
    assert manager.lean_hub is None
    assert 'AsyncSocket._send_ping' in caplog.text


class FakeTransport:
    def __init__(self) -> None:
        self.aborted = False
        self.written: list[bytes] = []

    def abort(self) -> None:
        self.aborted = True

    def is_closing(self) -> bool:
        return self.aborted

    def write(self, data: bytes) -> None:
        self.written.append(data)


async def test_a_client_that_stops_reading_is_disconnected(caplog: pytest.LogCaptureFixture) -> None:
    transport = FakeTransport()
    hub: Any = SimpleNamespace(eio=SimpleNamespace(max_http_buffer_size=1000))
    conn = lean.LeanConnection(SimpleNamespace(sid='s1'), hub, transport)
    with caplog.at_level(logging.WARNING, 'gamelist_service.transport.lean'):
        conn.pause_writing()  # the transport's buffer passed SLOW_CLIENT_BYTES
        await asyncio.sleep(0)  # the abort comes on the next turn of the loop
    assert transport.aborted
    assert 's1 has 4194304 bytes it does not read' in caplog.text


async def handshake_status(port: int, key: str) -> bytes:
    reader, writer = await asyncio.open_connection('127.0.0.1', port)
    try:
        writer.write(
            b'GET /socket.io/?EIO=4&transport=websocket HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n'
            b'Connection: Upgrade\r\nSec-WebSocket-Key: ' + key.encode() + b'\r\nSec-WebSocket-Version: 13\r\n\r\n'
        )
        return (await asyncio.wait_for(reader.readline(), 10)).strip()
    finally:
        writer.close()


async def test_a_bad_handshake_gets_the_plain_paths_answer(serves: dict[bool, Serve]) -> None:
    """A key that is not 16 bytes of base64: the lean path leaves it to websockets, as the plain path does."""
    fast = await handshake_status(serves[True].port, 'not-a-key')
    assert fast == await handshake_status(serves[False].port, 'not-a-key')
    assert not fast.startswith(b'HTTP/1.1 101'), fast


def test_a_library_changed_at_run_time_leaves_the_drivers_handler(caplog: pytest.LogCaptureFixture) -> None:
    hub = lean.Hub.__new__(lean.Hub)  # only what takeover reads
    hub.enabled = True
    request = SimpleNamespace(transport=SimpleNamespace(is_closing=lambda: False))  # no headers any more
    with caplog.at_level(logging.WARNING, 'gamelist_service.transport.lean'):
        assert hub.takeover(SimpleNamespace(), {'sanic.request': request}) is False
        assert hub.takeover(SimpleNamespace(), {'sanic.request': request}) is False
    assert hub.enabled is False
    assert caplog.text.count("lean websocket connections off, python-engineio's handler runs them") == 1


@pytest.mark.timeout(30)
@pytest.mark.parametrize('fast', [True, False])
async def test_an_upgrade_from_polling_carries_the_session(serves: dict[bool, Serve], fast: bool) -> None:
    client = UpgradeClient(serves[fast].port)
    try:
        await client.open_polling()
        pending = asyncio.ensure_future(client.poll())  # a poll waiting, as the client's is during the probe
        await client.open_websocket()
        client.send('2probe')
        await client._wait(lambda: '3probe' in client.texts())
        assert await asyncio.wait_for(pending, 10) == '200 6'  # the NOOP that ends the pending poll
        client.send('5')
        for ns in NAMESPACES:
            client.send('40' if ns == '/' else f'40{ns},')
        await client._wait(lambda: client.connected == set(NAMESPACES))
        client.send('4231["main:screen"]')
        await client._wait(lambda: any(t.startswith('4331[{"status":"success"') for t in client.texts()))
        await client._wait(lambda: client.texts().count('2') >= 3, timeout_s=20)  # pings over the websocket
        assert client.close_code() is None
        assert await client.poll() == '400 "Unexpected HTTP request"'  # polling is over (python-engineio's answer)
    finally:
        await client.close()


@pytest.mark.parametrize('fast', [True, False])
async def test_a_failed_upgrade_leaves_the_session_polling(serves: dict[bool, Serve], fast: bool) -> None:
    client = UpgradeClient(serves[fast].port)
    try:
        await client.open_polling()
        await client.open_websocket()
        client.send('2probe')
        await client._wait(lambda: '3probe' in client.texts())
        assert await asyncio.wait_for(client.poll(), 10) == '200 6'
        client.send('4')  # not the UPGRADE packet
        await client._wait(client.ended)
        assert (await asyncio.wait_for(client.poll(), 10)).startswith('200 ')  # the session answers polls
    finally:
        await client.close()


@pytest.mark.parametrize('fast', [True, False])
async def test_python_socketio_client_upgrades_and_gets_broadcasts(serves: dict[bool, Serve], fast: bool) -> None:
    """The client's default: polling first, then websocket."""
    serve = serves[fast]
    client = socketio.AsyncClient(reconnection=False)
    versions: list[int] = []
    client.on('game_list:updated', lambda data: versions.append(data['data']['version']), namespace='/gameplay')
    await client.connect(serve.url, namespaces=['/', '/gameplay'])
    try:
        assert await async_wait_until(lambda: client.transport() == 'websocket')
        redis_client = redis_of(serve)
        try:
            redis_client.publish('gamelist:updates', json.dumps({'list': 'current', 'data': fixed_list(4242)}))
        finally:
            redis_client.close()
        assert await async_wait_until(lambda: 4242 in versions)
        assert (await client.call('main:screen', namespace='/gameplay', timeout=5))['status'] == 'success'
    finally:
        await client.disconnect()
