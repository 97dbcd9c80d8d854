"""main:screen answered where its frame arrives: the same bytes as the normal path, and the fallbacks to it."""

from __future__ import annotations

import asyncio
import json
import logging
import os
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import socketio
from socketio import packet as sio_packet
from websockets.frames import Frame, Opcode
from websockets.protocol import Protocol, Side, State

from gamelist_service.core import lists
from gamelist_service.core.lists import utc_now_iso
from gamelist_service.transport import fastpath, screen
from gamelist_service.web.sockets import GameNamespace

from .clients import RawClient
from .helpers import Serve, fast_and_plain, fixed_list, metric, publish_live_list, start_serve, wait_until

SCREEN = b'"event":"main:screen"'


def masked(text: str) -> bytes:
    """One client frame (FIN, text, masked), as a browser sends it."""
    data = text.encode()
    assert len(data) < 126
    mask = os.urandom(4)
    return bytes([0x81, 0x80 | len(data)]) + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(data))


def replies(client: RawClient) -> list[bytes]:
    """main:screen answers received so far, timestamps blanked (see RawClient.events)."""
    return [f for f in client.events() if SCREEN in f]


def payloads(frames: list[bytes]) -> list[bytes]:
    return [RawClient.payload(f) for f in frames]


@pytest.fixture(scope='module')
def serves(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[bool, Serve]]:
    yield from fast_and_plain(tmp_path_factory.mktemp('screenpath'))


REQUESTS = ['42["main:screen"]', '427["main:screen"]', '42/gameplay,["main:screen"]', '42/gameplay,0012["main:screen"]']


def direct(serve: Serve) -> float:
    """main:screen requests serve answered where they arrived (gamelist_screen_requests_total{path="direct"})."""
    return metric(serve, 'gamelist_screen_requests_total', '{path="direct"}')


async def answers(serve: Serve, version: int, updated_at: str) -> list[bytes]:
    publish_live_list(serve, version, updated_at)
    client = await RawClient(serve.port).connect()
    try:
        # the whole batch in one write, so one read on the server holds several requests; then each alone
        assert client._writer is not None
        client._writer.write(b''.join(masked(text) for text in REQUESTS))
        await client._wait(lambda: len(replies(client)) >= len(REQUESTS))
        for text in REQUESTS:
            have = len(replies(client))
            client.send(text)
            await client._wait(lambda have=have: len(replies(client)) > have)
        return replies(client)
    finally:
        await client.close()


async def test_answers_are_byte_identical_to_the_normal_path(serves: dict[bool, Serve]) -> None:
    updated_at = utc_now_iso()  # the same list on both servers
    fast = await answers(serves[True], 7000, updated_at)
    plain = await answers(serves[False], 7000, updated_at)
    assert len(fast) == len(plain) == 2 * len(REQUESTS)
    assert sorted(fast) == sorted(plain)
    assert sorted(payloads(fast[:4])) == sorted(payloads(fast[4:]))
    starts = sorted(p[: p.index(b'{')] for p in payloads(plain[:4]))
    assert starts == [b'42/gameplay,["main:screen",', b'42["main:screen",', b'43/gameplay,12[', b'437[']
    reply = next(json.loads(p[p.index(b'[') :])[0] for p in payloads(plain) if p.startswith(b'437['))
    assert reply['event'] == 'main:screen' and reply['message'] == 'Current game list'
    assert reply['data']['version'] == 7000 and reply['data']['gamelist'][0]['game_name'].endswith('wire-identity')
    # the fast server answered them directly (the plain one cannot)
    assert direct(serves[True]) >= 2 * len(REQUESTS)
    assert 'main:screen direct answers on' in serves[True].log()
    assert direct(serves[False]) == 0


async def test_other_frames_and_everything_after_them_take_the_normal_path(serves: dict[bool, Serve]) -> None:
    serve = serves[True]
    publish_live_list(serve, 7100)
    client = await RawClient(serve.port).connect()
    try:
        assert client._writer is not None
        before = direct(serve)
        # an argument, a request of a namespace the client left, then a plain request after them
        batch = ['4221["main:screen",{"x":1}]', '41/gameplay,', '42/gameplay,22["main:screen"]', '4223["main:screen"]']
        client._writer.write(b''.join(masked(text) for text in batch))
        await client._wait(lambda: any(p.startswith(b'4323[') for p in payloads(replies(client))))
        got = payloads(replies(client))
        assert any(p.startswith(b'4321[') for p in got)
        assert not any(p.startswith(b'43/gameplay,22[') for p in got)  # not connected there any more: dropped
        assert direct(serve) == before
        # a request split over two reads (half a frame each) is answered directly once it is whole
        frame = masked('4224["main:screen"]')
        client._writer.write(frame[:7])
        await client._writer.drain()
        await asyncio.sleep(0.05)  # let the first half arrive on its own
        client._writer.write(frame[7:])
        await client._wait(lambda: any(p.startswith(b'4324[') for p in payloads(replies(client))))
        assert wait_until(lambda: direct(serve) == before + 1)
        # the namespace it left: the direct path does not answer for it either
        client._writer.write(masked('42/gameplay,25["main:screen"]') + masked('4226["main:screen"]'))
        await client._wait(lambda: any(p.startswith(b'4326[') for p in payloads(replies(client))))
        assert not any(p.startswith(b'43/gameplay,25[') for p in payloads(replies(client)))
    finally:
        await client.close()


async def test_a_client_over_its_rate_gets_the_refusal_from_the_normal_path(tmp_path: Path) -> None:
    # the two namespace connects take a token each, as every client packet does: 3 are left for main:screen
    serve = start_serve(tmp_path, True, {'events_per_second': 0.01, 'burst': 5, 'over_limit': 'error'})
    try:
        publish_live_list(serve, 7200)
        client = await RawClient(serve.port).connect()
        try:
            assert client._writer is not None
            client.send('429["main:screen"]')  # one token; the list is in memory after it, whichever way it went
            await client._wait(lambda: any(RawClient.payload(f).startswith(b'439[') for f in client.frames))
            before = direct(serve)
            client._writer.write(b''.join(masked(f'42{i}["main:screen"]') for i in range(1, 5)))
            want = [b'431[', b'432[', b'433[', b'434[']

            def frames() -> list[bytes]:
                return [f for f in client.frames if RawClient.payload(f)[:4] in want]

            await client._wait(lambda: len(frames()) == 4)
            got = {RawClient.payload(f)[:4]: RawClient.payload(f) for f in frames()}
            assert SCREEN in got[b'431['] and SCREEN in got[b'432[']
            for key in (b'433[', b'434['):
                assert json.loads(got[key][3:]) == [{'status': 'error', 'message': 'rate limit exceeded'}]
            assert wait_until(lambda: direct(serve) == before + 2)
        finally:
            await client.close()
    finally:
        assert serve.stop() == 0


# -- the parts -----------------------------------------------------------------------------------------------------


def fake_service(data: dict[str, Any] | None) -> Any:
    return SimpleNamespace(cached=lambda name: data)


@pytest.mark.parametrize('namespace', ['/', '/gameplay'])
@pytest.mark.parametrize('ack_id', ['7', '0012', None])
def test_encode_gives_what_python_socketio_sends(
    monkeypatch: pytest.MonkeyPatch, namespace: str, ack_id: str | None
) -> None:
    for module in (lists, screen):  # the envelope's timestamp, and the one the direct answer splices in
        monkeypatch.setattr(module, 'utc_now_iso', lambda: '2026-11-26T00:00:00.000000Z')
    data = fixed_list(3) | {'note': 'Покер ♠ 🎲 "quoted" \\ \x00'}
    responder = screen.ScreenResponder(None, fake_service(data), None, GameNamespace)  # type: ignore[arg-type]
    reply = lists.envelope(data, 'main:screen', lists.MAIN_SCREEN_MESSAGE)
    if ack_id is not None:
        pkt = sio_packet.Packet(sio_packet.ACK, namespace=namespace, id=int(ack_id), data=[reply])
    else:
        pkt = sio_packet.Packet(sio_packet.EVENT, namespace=namespace, data=['main:screen', reply])
    want = '4' + pkt.encode()
    assert responder.encode('current', data, namespace, ack_id) == want
    assert responder.encode('current', data, namespace, ack_id) == want  # again, from the list's JSON kept


def test_the_request_pattern() -> None:
    match = screen.REQUEST.fullmatch
    assert match('42["main:screen"]') and match('4207["main:screen"]') and match('42/gameplay,3["main:screen"]')
    for other in ('42["main:screen",{}]', '42/g?x=1,3["main:screen"]', '43["main:screen"]', '42["device:info"]'):
        assert match(other) is None


def test_check_passes_with_the_pinned_libraries() -> None:
    assert screen.check() == []


def test_a_missing_attribute_leaves_main_screen_on_the_normal_path(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.delattr(Protocol, 'events_received')  # ServerProtocol's, inherited
    sio = socketio.AsyncServer(async_mode='sanic', client_manager=fastpath.create_manager())
    fastpath.install(sio)
    with caplog.at_level(logging.WARNING, 'gamelist_service.transport.screen'):
        assert screen.install(sio, fake_service(None), GameNamespace) is None
    assert 'ServerProtocol.events_received' in caplog.text
    assert sio.manager.on_websocket == []


def test_not_installed_without_the_fast_path_manager() -> None:
    sio = socketio.AsyncServer(async_mode='sanic', client_manager=socketio.AsyncManager())
    fastpath.install(sio)
    assert screen.install(sio, fake_service(None), GameNamespace) is None


async def sent(ws: Any) -> None:
    task: asyncio.Task[None] = getattr(ws, screen.TASK_ATTR)
    await task


async def test_an_error_at_run_time_disables_it_and_the_frames_go_on(caplog: pytest.LogCaptureFixture) -> None:
    sio = SimpleNamespace(namespace_handlers=None)  # .get raises AttributeError, as a renamed attribute would
    manager = SimpleNamespace(enabled=True, _pending={})
    responder = screen.ScreenResponder(sio, fake_service(fixed_list(1)), manager, GameNamespace)  # type: ignore[arg-type]
    proto = Protocol(Side.SERVER, state=State.OPEN)  # past the handshake, as Sanic's is by then
    passed: list[list[Any]] = []

    async def async_data_received(to_send: list[bytes], events: list[Any]) -> None:
        passed.append(events)

    ws = SimpleNamespace(ws_proto=proto, async_data_received=async_data_received)
    responder.attach(SimpleNamespace(sid='eio-1'), ws)
    with caplog.at_level(logging.WARNING, 'gamelist_service.transport.screen'):
        ws.data_received(masked('421["main:screen"]'))
        await sent(ws)
    assert not responder.enabled
    assert 'main:screen direct answers disabled' in caplog.text
    assert len(passed) == 1 and isinstance(passed[0][0], Frame) and passed[0][0].opcode is Opcode.TEXT
    assert bytes(passed[0][0].data) == b'421["main:screen"]'
    ws.data_received(masked('422["main:screen"]'))  # from now on straight to the normal path, no more warnings
    await sent(ws)
    assert len(passed) == 2 and caplog.text.count('direct answers disabled') == 1
