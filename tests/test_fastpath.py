"""The broadcast fast path: the same bytes on the wire as python-socketio's plain emit, and the fallback to it."""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import os
import re
import struct
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Self

import pytest
import redis
import socketio

from gamelist_service import transport
from gamelist_service.storage.instances import running
from gamelist_service.transport import fastpath, rooms
from gamelist_service.web.limits import ConnectionLimiter

from .conftest import free_port
from .helpers import CONTRACT_GAME, Recorder, Serve, shipped_data, wait_until, write_config

NAMESPACES = ('/', '/gameplay')
MARKER = 'wire-identity'
# non-ASCII of every width: json.dumps escapes it (\u043f..., a surrogate pair for the die), on both paths
GAME_NAME = 'Покер ♠ café 🎲 ' + MARKER
TIMESTAMP_RE = re.compile(rb'"timestamp":"([^"]*)"')


def fixed_list(version: int) -> dict[str, Any]:
    game = {**CONTRACT_GAME, 'game_id': 'game_1', 'game_name': GAME_NAME}
    return {
        'gamelist': [dict(game, game_id=f'game_{i}') for i in range(20)],
        'updated_at': '2024-01-01T12:00:00.000000Z',
        'cache_duration': '300 seconds',
        'total_games': 20,
        'active_games': 20,
        'total_players': 300000,
        'version': version,
    }


class RawClient:
    """A websocket Socket.IO client on a bare TCP stream that records every server frame byte for byte."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.frames: list[bytes] = []  # raw frames: header and payload as they came off the socket
        self.connected: set[str] = set()
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._task: asyncio.Task[None] | None = None

    async def connect(self) -> Self:
        self._reader, self._writer = await asyncio.open_connection('127.0.0.1', self.port)
        key = base64.b64encode(os.urandom(16)).decode()
        self._writer.write(
            (
                'GET /socket.io/?EIO=4&transport=websocket HTTP/1.1\r\n'
                f'Host: 127.0.0.1:{self.port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n'
                f'Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n'
            ).encode()
        )
        head = await asyncio.wait_for(self._reader.readuntil(b'\r\n\r\n'), 10)
        assert head.startswith(b'HTTP/1.1 101'), head
        assert b'sec-websocket-extensions' not in head.lower(), head  # no compression: frames are shareable
        self._task = asyncio.get_running_loop().create_task(self._read())
        await self._wait(lambda: any(self._text(f).startswith('0{') for f in self.frames))
        for ns in NAMESPACES:
            self.send('40' if ns == '/' else f'40{ns},')
        await self._wait(lambda: self.connected == set(NAMESPACES))
        return self

    async def _wait(self, predicate: Any, timeout_s: float = 10.0) -> None:
        for _ in range(int(timeout_s / 0.02)):
            if predicate():
                return
            await asyncio.sleep(0.02)
        raise AssertionError(f'timed out; frames so far: {self.frames[-5:]!r}')

    @staticmethod
    def _text(frame: bytes) -> str:
        return RawClient.payload(frame).decode('utf-8', 'replace')

    @staticmethod
    def payload(frame: bytes) -> bytes:
        length = frame[1] & 0x7F
        return frame[{126: 4, 127: 10}.get(length, 2) :]

    async def _read(self) -> None:
        assert self._reader is not None
        while True:
            head = await self._reader.readexactly(2)
            assert not head[1] & 0x80, 'server frames are never masked'
            length = head[1] & 0x7F
            ext = b''
            if length == 126:
                ext = await self._reader.readexactly(2)
                length = struct.unpack('!H', ext)[0]
            elif length == 127:
                ext = await self._reader.readexactly(8)
                length = struct.unpack('!Q', ext)[0]
            frame = head + ext + await self._reader.readexactly(length)
            self.frames.append(frame)
            text = self._text(frame)
            if head[0] & 0x0F == 0x9:
                self._send_frame(0xA, self.payload(frame))
            elif text == '2':
                self.send('3')
            elif text.startswith('40{'):
                self.connected.add('/')
            elif text.startswith('40/') and '{' in text:
                self.connected.add(text[2:].split(',', 1)[0])

    def send(self, text: str) -> None:
        self._send_frame(0x1, text.encode())

    def _send_frame(self, opcode: int, data: bytes) -> None:
        assert self._writer is not None and len(data) < 126
        mask = os.urandom(4)
        masked = bytes(b ^ mask[i % 4] for i, b in enumerate(data))
        self._writer.write(bytes([0x80 | opcode, 0x80 | len(data)]) + mask + masked)

    def events(self) -> list[bytes]:
        """The event frames of the published lists, with the envelope's timestamp blanked (it is the time of the
        broadcast; its length is fixed, so the frame header is unchanged)."""
        marked = [f for f in self.frames if MARKER.encode() in f]
        return [TIMESTAMP_RE.sub(lambda m: b'"timestamp":"' + b'T' * len(m.group(1)) + b'"', f) for f in marked]

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        if self._writer is not None:
            self._writer.close()


def start_serve(workdir: Path, fast: bool, limits: dict[str, Any] | None = None) -> Serve:
    data = shipped_data()
    data['server']['fast_path'] = fast
    data['schedules'][0]['every'] = '1h'  # only the start-up run; the test publishes its own lists
    if limits:
        data['limits'] = limits
    workdir.mkdir(parents=True, exist_ok=True)
    return Serve(workdir, write_config(workdir / 'games.yaml', data), free_port(), global_args=('-v',)).start()


def fast_and_plain(root: Path) -> Iterator[dict[bool, Serve]]:
    """A serve with the fast path and one without, for a module's tests; both stop cleanly at the end."""
    started = {fast: start_serve(root / ('fast' if fast else 'plain'), fast) for fast in (True, False)}
    yield started
    for serve in started.values():
        assert serve.stop() == 0


def redis_of(serve: Serve) -> redis.Redis:
    (instance,) = running(serve.workdir / '.gamelist', serve.config)
    return redis.Redis.from_url(instance.redis_url)


@pytest.fixture(scope='module')
def serves(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[bool, Serve]]:
    yield from fast_and_plain(tmp_path_factory.mktemp('fastpath'))


async def capture(serve: Serve, versions: range, clients: int = 3) -> list[list[bytes]]:
    raw = [await RawClient(serve.port).connect() for _ in range(clients)]
    try:
        client = redis_of(serve)
        try:
            for version in versions:
                client.publish('gamelist:updates', json.dumps({'list': 'current', 'data': fixed_list(version)}))
                await asyncio.sleep(0.05)
        finally:
            client.close()
        want = len(versions) * len(NAMESPACES)
        for r in raw:
            await r._wait(lambda r=r: len(r.events()) >= want)
            # an ack (written directly by the fast path when the client is idle): an unknown event's error reply
            r.send('427["' + MARKER + ' é"]')
            r.send('42/gameplay,8["' + MARKER + ' é"]')
        for r in raw:
            await r._wait(lambda r=r: len(r.events()) >= want + 2)
        return [r.events() for r in raw]
    finally:
        for r in raw:
            await r.close()


async def test_fast_path_frames_are_byte_identical_to_the_plain_path(serves: dict[bool, Serve]) -> None:
    versions = range(1000, 1010)
    fast = await capture(serves[True], versions)
    plain = await capture(serves[False], versions)
    assert len(fast[0]) == len(versions) * len(NAMESPACES) + 2
    acks = [RawClient.payload(f) for f in plain[0][-2:]]
    assert acks[0] == b'437[{"status":"error","message":"unknown event \'wire-identity \\u00e9\'"}]'
    assert acks[1].startswith(b'43/gameplay,8[{"status":"error"')
    for frames in fast + plain:
        assert frames == plain[0]  # every client, both servers: the same bytes, in the same order
    first = plain[0][0]
    assert first[:2] == b'\x81\x7e'  # FIN + text, 16-bit length, unmasked
    assert b'\\u041f\\u043e\\u043a\\u0435\\u0440 \\u2660 caf\\u00e9 \\ud83c\\udfb2' in first
    assert RawClient.payload(first).startswith(b'42["game_list:updated",{')
    assert any(RawClient.payload(f).startswith(b'42/gameplay,["game_list:updated",{') for f in plain[0])
    # and the fast server did write them directly, the plain one never did
    assert wait_until(lambda: re.search(r'[1-9]\d* frames to write directly', serves[True].log()) is not None)
    assert 'broadcast fast path on' in serves[True].log()
    assert 'frames to write directly' not in serves[False].log()
    assert 'fast path off (server.fast_path: false)' in serves[False].log()


@pytest.mark.parametrize('transport', ['websocket', 'polling'])
async def test_python_socketio_clients_get_everything_with_the_fast_path(
    serves: dict[bool, Serve], transport: str
) -> None:
    serve = serves[True]
    clients = [await Recorder(serve.url, transport).connect() for _ in range(2)]
    raw = await RawClient(serve.port).connect()  # a websocket alongside, which takes the direct writes
    try:
        client = redis_of(serve)
        try:
            for version in range(2000, 2005):
                client.publish('gamelist:updates', json.dumps({'list': 'current', 'data': fixed_list(version)}))
                await asyncio.sleep(0.05)
        finally:
            client.close()
        for recorder in clients:
            for ns in NAMESPACES:
                got = await recorder.wait_for('game_list:updated', ns, count=5)
                assert [m['data']['version'] for m in got] == list(range(2000, 2005))
                assert got[0]['data']['gamelist'][0]['game_name'] == GAME_NAME
            reply = await recorder.call('main:screen', namespace='/gameplay')
            assert reply['event'] == 'main:screen'  # (the published lists were never written, so not this one)
            assert recorder.disconnects == []
    finally:
        await raw.close()
        for recorder in clients:
            await recorder.close()


# -- the fallback ------------------------------------------------------------------------------------------------


def test_check_passes_with_the_pinned_libraries() -> None:
    assert fastpath.check() == []
    assert isinstance(server(fast=True).manager, fastpath.FastAsyncManager)


def server(*, fast: bool) -> Any:
    """The service's Socket.IO server as transport.create_server builds it (compat.check() decides)."""
    return transport.create_server(
        fast_path=fast, async_mode='asgi', logger=False, engineio_logger=False, limiter=ConnectionLimiter()
    )


def test_a_missing_attribute_falls_back_to_the_plain_manager(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    from engineio.async_socket import AsyncSocket  # noqa: PLC0415 - the class the fast path depends on

    monkeypatch.delattr(AsyncSocket, '_websocket_handler')
    with caplog.at_level(logging.WARNING, 'gamelist_service.transport.compat'):
        manager = server(fast=True).manager
    assert type(manager) is rooms.IndexedAsyncManager  # the plain emit, with its rooms still indexed
    assert 'transport feature fastpath off' in caplog.text
    assert 'engineio.async_socket.AsyncSocket._websocket_handler' in caplog.text


def test_a_slot_gone_from_sanic_falls_back(monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    from sanic.server.protocols.base_protocol import SanicProtocol  # noqa: PLC0415

    monkeypatch.setattr(SanicProtocol, '__slots__', ('transport', '_time'))
    with caplog.at_level(logging.WARNING, 'gamelist_service.transport.compat'):
        assert type(server(fast=True).manager) is rooms.IndexedAsyncManager
    assert 'SanicProtocol._can_write' in caplog.text


def test_fast_path_false_gives_the_plain_manager() -> None:
    assert type(server(fast=False).manager) is socketio.AsyncManager  # python-socketio's own, rooms and all


def test_another_websocket_driver_disables_the_fast_path(caplog: pytest.LogCaptureFixture) -> None:
    sio = socketio.AsyncServer(async_mode='asgi', client_manager=fastpath.create_manager())
    with caplog.at_level(logging.WARNING, 'gamelist_service.transport.fastpath'):
        fastpath.install(sio)
    assert not sio.manager.enabled
    assert "engineio's websocket driver" in caplog.text


async def test_an_attribute_gone_at_run_time_disables_it_and_the_client_still_gets_the_packet(
    caplog: pytest.LogCaptureFixture,
) -> None:
    sent: list[tuple[str, str]] = []
    sio = socketio.AsyncServer(async_mode='sanic', client_manager=fastpath.create_manager())
    fastpath.install(sio)
    manager = sio.manager
    assert isinstance(manager, fastpath.FastAsyncManager) and manager.installed

    async def send_eio_packet(eio_sid: str, pkt: Any) -> None:
        sent.append((eio_sid, pkt.encode()))

    sio._send_eio_packet = send_eio_packet
    await manager.connect('eio-1', '/')
    # a socket whose Sanic websocket lacks what the fast path reads (as if a library version renamed it)
    sock = SimpleNamespace(closed=False, closing=False, upgraded=True, upgrading=False, last_ping=None)
    setattr(sock, fastpath.SANIC_WS_ATTR, SimpleNamespace())
    sio.eio.sockets['eio-1'] = sock
    with caplog.at_level(logging.WARNING, 'gamelist_service.transport.fastpath'):
        await sio.emit('game_list:updated', {'name': 'é'}, namespace='/')
    assert sent == [('eio-1', '42["game_list:updated",{"name":"\\u00e9"}]')]
    assert not manager.enabled
    assert 'broadcast fast path disabled' in caplog.text
    await sio.emit('game_list:updated', {'n': 2}, namespace='/')  # from now on the plain path, no more warnings
    assert sent[-1] == ('eio-1', '42["game_list:updated",{"n":2}]')
    assert caplog.text.count('broadcast fast path disabled') == 1


class Transport:
    def __init__(self) -> None:
        self.writes: list[bytes] = []

    def write(self, data: bytes) -> None:
        self.writes.append(data)


async def fast_server(monkeypatch: pytest.MonkeyPatch, idle: list[bool]) -> tuple[Any, list[Any], Transport]:
    """An AsyncServer with the fast manager and one client in / and /gameplay; _idle answers from the list idle."""
    sio = socketio.AsyncServer(async_mode='sanic', client_manager=fastpath.create_manager())
    fastpath.install(sio)
    sent: list[Any] = []

    async def send_eio_packet(eio_sid: str, pkt: Any) -> None:
        sent.append((eio_sid, pkt.encode()))

    sio._send_eio_packet = send_eio_packet
    for ns in NAMESPACES:
        await sio.manager.connect('eio-1', ns)
    transport = Transport()
    sock = SimpleNamespace(closed=False, closing=False)
    setattr(sock, fastpath.SANIC_WS_ATTR, SimpleNamespace(io_proto=SimpleNamespace(transport=transport, _time=0.0)))
    sio.eio.sockets['eio-1'] = sock
    monkeypatch.setattr(fastpath, '_idle', lambda *args: idle.pop(0))
    return sio, sent, transport


async def test_one_write_per_client_for_the_frames_of_one_turn(monkeypatch: pytest.MonkeyPatch) -> None:
    sio, sent, transport = await fast_server(monkeypatch, [True, True])
    for ns in NAMESPACES:
        await sio.emit('e', {'x': 'é'}, namespace=ns)
    assert transport.writes == []  # written by the callback of this turn, after both emits
    await asyncio.sleep(0)
    frames = [b'42["e",{"x":"\\u00e9"}]', b'42/gameplay,["e",{"x":"\\u00e9"}]']
    assert transport.writes == [b''.join(bytes([0x81, len(f)]) + f for f in frames)]
    assert sent == []


async def test_a_client_busy_by_the_time_of_the_write_gets_the_normal_path_in_order(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    sio, sent, transport = await fast_server(monkeypatch, [True, False])
    for ns in NAMESPACES:
        await sio.emit('e', {'n': 1}, namespace=ns)
    for _ in range(5):
        await asyncio.sleep(0)
    assert transport.writes == []
    assert sent == [('eio-1', '42["e",{"n":1}]'), ('eio-1', '42/gameplay,["e",{"n":1}]')]


def test_a_websocket_class_installed_later_is_wrapped_too() -> None:
    from engineio.async_drivers.sanic import WebSocket  # noqa: PLC0415

    class Guarded(WebSocket):  # type: ignore[misc]
        pass

    sio = socketio.AsyncServer(async_mode='sanic', client_manager=fastpath.create_manager())
    fastpath.install(sio)
    assert sio.eio._async['websocket']._gamelist_records_sanic_ws
    sio.eio._async = {**sio.eio._async, 'websocket': Guarded}  # as other code may do after install
    sio.manager.initialize()  # python-socketio calls it when the first client connects
    wrapped = sio.eio._async['websocket']
    assert issubclass(wrapped, Guarded) and wrapped._gamelist_records_sanic_ws
    assert sio.manager.enabled


async def test_written_returns_once_the_frames_of_the_turn_are_written(monkeypatch: pytest.MonkeyPatch) -> None:
    sio, sent, transport = await fast_server(monkeypatch, [True, True])
    await sio.manager.written()  # nothing stashed: at once
    for ns in NAMESPACES:
        await sio.emit('e', {'n': 1}, namespace=ns)
    assert transport.writes == []
    await sio.manager.written()
    assert len(transport.writes) == 1 and sent == []
