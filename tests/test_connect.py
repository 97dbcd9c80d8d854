"""A namespace CONNECT answered where its frame arrives (transport/connect.py): the same bytes as python-socketio's
own path, the fallbacks to it, and the replies to one read written together."""

from __future__ import annotations

import asyncio
import re
from collections.abc import Iterator
from types import SimpleNamespace
from typing import Any

import pytest
from engineio import async_socket as engineio_socket
from socketio import packet as sio_packet

from gamelist_service.core.lists import utc_now_iso
from gamelist_service.transport import connect, lean, wsframe

from .clients import RawClient, WireClient, masked
from .helpers import MARKER, Serve, fast_and_plain, metric, publish_live_list

SID = re.compile(rb'"sid":"([A-Za-z0-9_-]{20})"')


@pytest.fixture(scope='module')
def serves(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[bool, Serve]]:
    yield from fast_and_plain(tmp_path_factory.mktemp('connect'))


def connects(serve: Serve, path: str) -> float:
    return metric(serve, 'gamelist_namespace_connects_total', f'{{path="{path}"}}')


def blanked(client: RawClient) -> list[bytes]:
    """The frames after the OPEN packet, each session id and the envelope's timestamp blanked (same lengths)."""
    out = []
    for frame in client.frames:
        if RawClient.message(frame).startswith(b'0{'):
            continue
        frame = SID.sub(b'"sid":"' + b'S' * 20 + b'"', frame)
        out.append(re.sub(rb'"timestamp":"([^"]*)"', lambda m: b'"timestamp":"' + b'T' * len(m.group(1)) + b'"', frame))
    return out


async def session(serve: Serve, texts: list[str], done: Any) -> WireClient:
    """A websocket session that sends texts in one write once it is open, and waits until done(client)."""
    client = WireClient(serve.port)
    await client._handshake()
    await client._wait(lambda: any(RawClient._text(f).startswith('0{') for f in client.frames))
    client.send_raw(b''.join(masked(0x1, text.encode()) for text in texts))
    await client._wait(lambda: done(client))
    return client


def texts_of(client: RawClient) -> list[str]:
    return [RawClient._text(f) for f in client.frames]


async def test_connect_replies_are_byte_identical_to_the_normal_path(serves: dict[bool, Serve]) -> None:
    got: dict[bool, list[bytes]] = {}
    updated_at = utc_now_iso()  # the same list on both servers
    for fast, serve in serves.items():
        publish_live_list(serve, 8100, updated_at)
        before = connects(serve, 'direct')
        # both namespaces in one read; /gameplay is behind (since 8099): the list follows its CONNECT reply
        client = await session(
            serve, ['40', '40/gameplay,{"since":8099}'], lambda c: any(MARKER.encode() in f for f in c.frames)
        )
        try:
            texts = texts_of(client)[1:]  # after the OPEN packet
            assert texts[0].startswith('40{"sid":') and texts[1].startswith('40/gameplay,{"sid":'), texts
            assert texts[2].startswith('42/gameplay,["game_list:updated",') and '"version":8100' in texts[2]
            got[fast] = blanked(client)
        finally:
            await client.close()
        assert connects(serve, 'direct') == before + (2 if fast else 0)
    assert got[True] == got[False]
    assert connects(serves[False], 'handler') >= 2


async def test_a_refused_connect_gets_python_socketios_refusal_and_the_session_goes_on(
    serves: dict[bool, Serve],
) -> None:
    got: dict[bool, list[str]] = {}
    for fast, serve in serves.items():
        before = connects(serve, 'direct')
        # a wrong producer token refuses the connect; the same namespace then accepts the client without one
        client = await session(
            serve,
            ['40/gameplay,{"producer_token":"not-the-token"}', '40/gameplay,'],
            lambda c: sum(t.startswith('4') for t in texts_of(c)) >= 2,
        )
        try:
            got[fast] = [SID.sub(b'"sid":"S"', t.encode()).decode() for t in texts_of(client)[1:]]
        finally:
            await client.close()
        assert connects(serve, 'direct') == before + (2 if fast else 0)
    assert got[True] == got[False] == ['44/gameplay,{"message":"invalid producer token"}', '40/gameplay,{"sid":"S"}']


async def test_what_the_direct_path_leaves_alone_gets_the_normal_paths_answer(serves: dict[bool, Serve]) -> None:
    """A second CONNECT to a namespace, an unknown namespace, and what follows them in the same read."""
    got: dict[bool, list[str]] = {}
    for fast, serve in serves.items():
        before = connects(serve, 'direct')
        client = await session(
            serve, ['40', '40', '40/nope,', '40/gameplay,'], lambda c: sum(t.startswith('4') for t in texts_of(c)) >= 4
        )
        try:
            got[fast] = sorted(SID.sub(b'"sid":"S"', t.encode()).decode() for t in texts_of(client)[1:])
        finally:
            await client.close()
        # the first is answered directly; the second (connected there already) and all after it take the normal path
        assert connects(serve, 'direct') == before + (1 if fast else 0)
    assert (
        got[True]
        == got[False]
        == [
            '40/gameplay,{"sid":"S"}',
            '40{"sid":"S"}',
            '44"Unable to connect"',  # python-socketio's own words for it
            '44/nope,{"message":"Invalid namespace"}',
        ]
    )


def test_the_pinned_python_socketio_passes_the_probe() -> None:
    assert connect.check() == []
    assert connect.reply('/', 'abc') == '4' + sio_packet.Packet(sio_packet.CONNECT, {'sid': 'abc'}).encode()


# -- the replies to one read, in one write ---------------------------------------------------------------------------


class Transport:
    def __init__(self) -> None:
        self.written: list[bytes] = []
        self.closing = False

    def write(self, data: bytes) -> None:
        self.written.append(data)

    def is_closing(self) -> bool:
        return self.closing

    def close(self) -> None:
        self.closing = True


class EchoConnector:
    """Answers every CONNECT with two frames, as a CONNECT reply and the list due on connect are."""

    def answer(self, sock: Any, conn: lean.LeanConnection, text: str) -> bool:
        conn.write_text('reply ' + text)
        conn.write_text('list ' + text)
        return True


def connection() -> tuple[lean.LeanConnection, Transport]:
    hub: Any = SimpleNamespace(
        eio=SimpleNamespace(max_http_buffer_size=65536),
        gate=None,
        responder=None,
        connector=EchoConnector(),
        receiving=set(),
        verbose=lambda: False,
    )
    transport = Transport()
    return lean.LeanConnection(SimpleNamespace(sid='s1'), hub, transport), transport


async def test_the_replies_to_one_read_go_out_in_one_write_in_order() -> None:
    conn, transport = connection()
    conn.data_received(masked(0x1, b'40') + masked(0x1, b'40/gameplay,'))
    frames = [wsframe.text_frame(t) for t in ('reply 40', 'list 40', 'reply 40/gameplay,', 'list 40/gameplay,')]
    assert transport.written == [b''.join(frames)]
    conn.data_received(masked(0x1, b'40/x,'))  # a read of its own: its replies in one write of their own
    assert transport.written[1:] == [wsframe.text_frame('reply 40/x,') + wsframe.text_frame('list 40/x,')]
    assert conn.gathered is None  # nothing held between reads: a broadcast goes straight to the transport
    assert conn.sink() is transport


async def test_a_close_in_the_middle_of_a_read_writes_what_was_answered_first() -> None:
    conn, transport = connection()
    conn.data_received(masked(0x1, b'40') + masked(0x8, b'\x03\xe8'))  # a CONNECT, then the client's close (1000)
    assert transport.written == [
        wsframe.text_frame('reply 40') + wsframe.text_frame('list 40'),
        wsframe.close_frame(1000, ''),
    ]
    assert transport.closing
    await asyncio.sleep(0)


# -- the first ping of a websocket handshake taken at its first bytes --------------------------------------------------


async def test_a_direct_handshake_starts_no_ping_task_and_one_not_taken_over_gets_its_ping() -> None:
    """python-engineio starts a task for a new session's first ping; a lean connection pings from its own timer, so a
    direct handshake (lean.Hub.direct_handshake) starts none. If its websocket is not taken over after all, the
    driver's handler runs it, and the first ping task starts then."""
    started: list[Any] = []

    def start_background_task(target: Any, *args: Any) -> asyncio.Future[None]:
        started.append(target)
        return asyncio.get_running_loop().create_future()  # stands for the task

    eio = SimpleNamespace(start_background_task=start_background_task)
    hub = lean.Hub(SimpleNamespace(eio=eio))

    class Session(engineio_socket.AsyncSocket):  # type: ignore[misc]
        def __init__(self) -> None:
            self.connected = False

    async def handshake(session: Session) -> Any:
        lean._IN_DIRECT_HANDSHAKE.set(True)  # as Hub._direct_connect does, in its own task
        return eio.start_background_task(session._send_ping)

    session = Session()
    assert await asyncio.create_task(handshake(session)) is None
    assert started == [] and vars(session)[lean.FIRST_PING_ATTR] == lean._DEFERRED
    hub.start_deferred_ping(session)  # not taken over: python-engineio's first ping after all
    assert started == [session._send_ping] and lean.FIRST_PING_ATTR not in vars(session)
    hub.start_deferred_ping(session)  # only once
    assert len(started) == 1
    # outside a direct handshake (a polling session, an upgrade): python-engineio's task, noted for takeover
    other = Session()
    task = eio.start_background_task(other._send_ping)
    assert isinstance(task, asyncio.Future)
    assert started[-1] == other._send_ping and vars(other)[lean.FIRST_PING_ATTR] is task
