"""The broadcast fast path: the same bytes on the wire as python-socketio's plain emit, and the fallback to it."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Iterator
from types import SimpleNamespace
from typing import Any

import pytest
import socketio

from gamelist_service import transport
from gamelist_service.transport import fastpath, rooms
from gamelist_service.web.limits import ConnectionLimiter

from .clients import NAMESPACES, RawClient
from .helpers import GAME_NAME, MARKER, Recorder, Serve, fast_and_plain, fixed_list, metric, redis_of, wait_until


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
    fast_writes = '{path="fast"}'
    assert wait_until(lambda: metric(serves[True], 'gamelist_fanout_writes_total', fast_writes) > 0)
    assert 'broadcast fast path on' in serves[True].log()
    assert metric(serves[False], 'gamelist_fanout_writes_total', fast_writes) == 0
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
