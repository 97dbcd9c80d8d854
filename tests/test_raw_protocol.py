"""Raw protocol garbage: malformed Engine.IO and Socket.IO packets over a bare websocket and over long-polling.

Each bad connection is closed (websocket close code 1002 or 1009) or refused (HTTP 400); the server goes on serving
a fresh client and /health, and its log has no traceback for any of it.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Iterator

import aiohttp
import pytest
import websockets
from websockets.asyncio.client import ClientConnection

from .helpers import Recorder, Serve, hourly_data, http_get, serving

TIMEOUT_S = 5.0
MAX_SIZE = 65536  # server.max_http_buffer_size in the shipped file


@pytest.fixture(scope='module')
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Serve]:
    with serving(tmp_path_factory.mktemp('raw'), hourly_data()) as serve:
        yield serve
    log = serve.log()
    assert 'Traceback' not in log, log[-4000:]  # client garbage is a warning line, never a stack trace


@pytest.fixture
async def still_serving(served: Serve) -> AsyncIterator[None]:
    """After each test: /health answers and a fresh client gets the list through main:screen."""
    yield
    assert http_get(served.url + '/health')[0] == 200
    client = await Recorder(served.url, 'websocket', namespaces=('/',)).connect()
    try:
        reply = await client.call('main:screen', timeout_s=TIMEOUT_S)
        assert reply['status'] == 'success' and reply['event'] == 'main:screen'
    finally:
        await client.close()


pytestmark = pytest.mark.usefixtures('still_serving')


def ws_url(serve: Serve, query: str = 'EIO=4&transport=websocket') -> str:
    return f'ws://127.0.0.1:{serve.port}/socket.io/?{query}'


async def open_socketio(serve: Serve) -> ClientConnection:
    """A bare websocket through the Engine.IO handshake and the Socket.IO CONNECT of namespace /."""
    ws = await websockets.connect(ws_url(serve), open_timeout=TIMEOUT_S, max_size=None)
    opened = await asyncio.wait_for(ws.recv(), TIMEOUT_S)
    assert isinstance(opened, str) and opened.startswith('0{')
    await ws.send('40')
    connected = await asyncio.wait_for(ws.recv(), TIMEOUT_S)
    assert isinstance(connected, str) and connected.startswith('40{')
    return ws


async def close_code(ws: ClientConnection) -> int | None:
    """Read until the server closes the websocket (pings included); its close code."""
    with pytest.raises(websockets.ConnectionClosed) as info:
        async with asyncio.timeout(TIMEOUT_S):
            while True:
                await ws.recv()
    return info.value.rcvd.code if info.value.rcvd else None


async def next_text(ws: ClientConnection) -> str:
    """The next frame that is not an Engine.IO ping."""
    async with asyncio.timeout(TIMEOUT_S):
        while True:
            frame = await ws.recv()
            assert isinstance(frame, str)
            if frame != '2':
                return frame


@pytest.mark.parametrize(
    'frame',
    [
        'x',  # not an Engine.IO packet type
        '',  # empty
        '9',  # packet type 9 does not exist
        'b!!!not-base64',
        '4{bad json',  # an Engine.IO message whose Socket.IO packet type is not a digit
        '42{"an": "object"}',  # an event that is not an array
        '42[]',  # an event without a name
        '42["main:screen"',  # truncated
        '42"just a string"',
        '49',  # Socket.IO packet type 9
        '43x',  # an ack of nothing
        '42' + '9' * 120 + '["x"]',  # an ack id over 100 digits
        '45999999-["device:info",{"_placeholder":true,"num":0}]',  # more binary attachments than anyone sends
        b'\x00\xff binary junk',
    ],
)
async def test_a_malformed_packet_closes_the_connection(served: Serve, frame: str | bytes) -> None:
    ws = await open_socketio(served)
    await ws.send(frame)
    assert await close_code(ws) == 1002  # protocol error


async def test_a_malformed_packet_before_the_socketio_connect_closes_the_connection(served: Serve) -> None:
    async with websockets.connect(ws_url(served), open_timeout=TIMEOUT_S) as ws:
        assert str(await asyncio.wait_for(ws.recv(), TIMEOUT_S)).startswith('0{')
        await ws.send('not engine.io')
        assert await close_code(ws) == 1002


async def test_a_frame_over_the_buffer_size_closes_the_connection(served: Serve) -> None:
    ws = await open_socketio(served)
    await ws.send('42["main:screen","' + 'x' * MAX_SIZE + '"]')
    assert await close_code(ws) == 1009  # message too big


async def test_a_binary_event_with_a_bad_attachment_reference_closes_the_connection(served: Serve) -> None:
    ws = await open_socketio(served)
    await ws.send('451-0["device:info",{"_placeholder":true,"num":7}]')  # one attachment, placeholder 7
    await ws.send(b'\x01\x02')
    assert await close_code(ws) == 1002


@pytest.mark.parametrize(
    ('frame', 'expected'),
    [
        ('421[5]', '431[{"status":"error","message":"unknown event \'5\'"}]'),
        ('422[{"a":1}]', '432[{"status":"error","message":"unknown event'),
        ('423["connect",{"x":1}]', '433[{"status":"error","message":"\'connect\' is a reserved event name"}]'),
        ('424["disconnect"]', '434[{"status":"error","message":"\'disconnect\' is a reserved event name"}]'),
        ('425["main:screen"]', '435[{"status":"success"'),
    ],
)
async def test_odd_but_well_formed_events_get_an_ack_and_the_connection_stays(
    served: Serve, frame: str, expected: str
) -> None:
    ws = await open_socketio(served)
    try:
        await ws.send(frame)
        reply = await next_text(ws)
        assert reply.replace(', ', ',').startswith(expected), reply
        await ws.send('426["main:screen"]')  # still connected, still answered
        assert (await next_text(ws)).startswith('436[{"status":"success"')
    finally:
        await ws.close()


async def test_a_connect_sent_as_an_event_does_not_count_as_a_second_connection(served: Serve) -> None:
    """A client emitting "connect" or "disconnect" must not run the server's connect or disconnect handlers."""
    ws = await open_socketio(served)
    try:
        before = served.log().count('connected to /')
        await ws.send('42["connect",{}]')
        await ws.send('42["disconnect"]')
        await ws.send('427["main:screen"]')
        assert (await next_text(ws)).startswith('437[{"status":"success"')
        log = served.log()
        assert log.count('connected to /') == before
        assert "event 'connect' from a client refused (reserved)" in log
        assert "event 'disconnect' from a client refused (reserved)" in log
    finally:
        await ws.close()


@pytest.mark.parametrize(
    ('query', 'message'),
    [
        ('EIO=3&transport=websocket', 'unsupported version'),
        ('transport=websocket', 'unsupported version'),
        ('EIO=4&transport=carrier-pigeon', 'Transport unknown'),  # Node's body (python-engineio: Invalid transport)
        ('EIO=4&transport=websocket&sid=doesnotexist', 'Invalid session'),
    ],
)
async def test_a_bad_handshake_is_refused(served: Serve, query: str, message: str) -> None:
    with pytest.raises(websockets.InvalidStatus) as info:
        await websockets.connect(ws_url(served, query), open_timeout=TIMEOUT_S)
    assert info.value.response.status_code == 400
    assert message in info.value.response.body.decode()


@pytest.mark.parametrize(
    ('method', 'query', 'message'),
    [
        ('GET', 'EIO=4&transport=polling&sid=doesnotexist', 'Invalid session doesnotexist'),
        ('POST', 'EIO=4&transport=polling&sid=doesnotexist', 'Invalid session doesnotexist'),
        ('GET', 'EIO=3&transport=polling', 'unsupported version'),
        ('GET', 'EIO=4&transport=carrier-pigeon', 'Transport unknown'),
        ('GET', 'EIO=4&transport=websocket', 'Invalid websocket upgrade'),  # websocket without the upgrade
        ('GET', 'EIO=4&transport=polling&j=x', 'JSONP polling is not supported'),
        ('GET', 'EIO=4&transport=polling&j=0', 'JSONP polling is not supported'),  # answered as script before
    ],
)
async def test_bad_polling_requests_get_400(served: Serve, method: str, query: str, message: str) -> None:
    async with (
        aiohttp.ClientSession() as http,
        http.request(method, f'{served.url}/socket.io/?{query}', data=b'junk' if method == 'POST' else None) as r,
    ):
        assert r.status == 400
        assert message in await r.text()


async def polling_session(http: aiohttp.ClientSession, serve: Serve) -> str:
    """A long-polling Engine.IO session connected to namespace /; its sid."""
    base = f'{serve.url}/socket.io/?EIO=4&transport=polling'
    async with http.get(base) as r:
        sid: str = json.loads((await r.text())[1:])['sid']
    async with http.post(f'{base}&sid={sid}', data=b'40') as r:
        assert r.status == 200
    async with http.get(f'{base}&sid={sid}') as r:
        assert (await r.text()).startswith('40{')
    return sid


@pytest.mark.parametrize(
    'body',
    [b'junk', b'\x00\xff', b'\x1e\x1e', b'9', b'4' + b'x' * (MAX_SIZE + 1)],
    ids=['junk', 'not-utf8', 'empty-packets', 'type-9', 'too-large'],
)
async def test_a_malformed_polling_post_ends_the_session(served: Serve, body: bytes) -> None:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=TIMEOUT_S)) as http:
        sid = await polling_session(http, served)
        base = f'{served.url}/socket.io/?EIO=4&transport=polling&sid={sid}'
        async with http.post(base, data=body) as r:
            assert r.status == 400
        async with http.get(base) as r:
            assert r.status == 400
            assert 'Invalid session' in await r.text()


async def test_a_malformed_socketio_packet_over_polling_ends_the_session(served: Serve) -> None:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=TIMEOUT_S)) as http:
        sid = await polling_session(http, served)
        base = f'{served.url}/socket.io/?EIO=4&transport=polling&sid={sid}'
        async with http.post(base, data=b'42["main:screen"') as r:
            assert r.status == 200  # Engine.IO took the payload; Socket.IO could not decode it
        async with http.get(base) as r:
            text = await r.text()
            assert r.status == 400 or text == '1', text  # the CLOSE packet, or the session already gone
