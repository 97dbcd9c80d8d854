"""Engine.IO / Socket.IO corners as Node's socket.io 4 server has them (every socket.io client is written against it).

Each test sends the bytes the drop-in review sent; the module docstring of gamelist_service/protocol.py says what
python-engineio and python-socketio did instead.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator

import aiohttp
import pytest

from .clients import GuessClient, RawClient, UpgradeClient, WireClient
from .helpers import Serve, async_wait_until, hourly_data, serving


@pytest.fixture(scope='module')
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Serve]:
    data = hourly_data()
    data['server'].update(ping_interval='300ms', ping_timeout='2s', connect_timeout='1s')
    with serving(tmp_path_factory.mktemp('node-protocol'), data) as serve:
        yield serve
    assert 'Traceback' not in serve.log()


def socketio_url(serve: Serve, query: str) -> str:
    return f'{serve.url}/socket.io/?{query}'


async def test_the_handshake_says_the_ping_values_in_milliseconds_as_configured(served: Serve) -> None:
    async with aiohttp.ClientSession() as http, http.get(socketio_url(served, 'EIO=4&transport=polling')) as r:
        opened = json.loads((await r.text())[1:])
    assert opened['pingInterval'] == 300 and opened['pingTimeout'] == 2000  # was 0: int(0.3) * 1000


@pytest.mark.parametrize(
    ('method', 'query', 'body'),
    [
        ('GET', 'EIO=4', {'code': 0, 'message': 'Transport unknown'}),
        ('GET', 'EIO=4&transport=carrier', {'code': 0, 'message': 'Transport unknown'}),
        ('PUT', 'EIO=4&transport=polling', {'code': 2, 'message': 'Bad handshake method'}),
        ('DELETE', 'EIO=4&transport=polling', {'code': 2, 'message': 'Bad handshake method'}),
    ],
)
async def test_bad_handshakes_get_400(served: Serve, method: str, query: str, body: dict[str, object]) -> None:
    async with aiohttp.ClientSession() as http, http.request(method, socketio_url(served, query)) as r:
        assert r.status == 400
        assert await r.json() == body


async def test_a_post_handshake_without_a_sid_gets_400(served: Serve) -> None:
    async with aiohttp.ClientSession() as http, http.post(socketio_url(served, 'EIO=4&transport=polling')) as r:
        assert r.status == 400
        assert await r.json() == {'code': 2, 'message': 'Bad handshake method'}  # Node's body for it


@pytest.mark.timeout(30)
async def test_a_polling_session_without_a_pong_is_closed_and_its_next_poll_gets_400(served: Serve) -> None:
    client = UpgradeClient(served.port)
    try:
        await client.open_polling()
        assert (await client.poll()).endswith('2')  # the ping
        await asyncio.sleep(0.3 + 2 + 0.3)  # the interval and timeout pass without a pong (the test's subject)
        assert (await client.poll()).startswith('400')
    finally:
        await client.close()


async def test_a_close_packet_during_a_pending_poll_ends_that_poll_with_a_noop(served: Serve) -> None:
    client = UpgradeClient(served.port)
    try:
        await client.open_polling()
        pending = asyncio.ensure_future(client.poll())
        await asyncio.sleep(0.1)
        assert client.http is not None
        async with client.http.post(client.url('polling'), data='1') as response:
            assert response.status == 200
        assert await asyncio.wait_for(pending, 5) == '200 6'
        assert (await client.poll()).startswith('400')  # the session is gone
    finally:
        await client.close()


async def test_a_second_websocket_for_an_upgraded_session_is_accepted_then_closed(served: Serve) -> None:
    first = GuessClient(served.port)
    second = UpgradeClient(served.port)
    try:
        await first.open(('/',))
        opened = next(RawClient._text(f) for f in first.frames if RawClient._text(f).startswith('0{'))
        second.sid = json.loads(opened[1:])['sid']
        await second.open_websocket()  # asserts the 101
        assert await async_wait_until(second.ended, timeout_s=5)
        assert second.close_code() == 1005  # a close frame with no status, as Node's ws.close() sends
        first.send('40/gameplay,')  # the upgraded connection is untouched
        await first._wait(lambda: '/gameplay' in first.connected)
    finally:
        await first.close()
        await second.close()


async def test_an_unknown_namespace_gets_an_object_in_its_connect_error(served: Serve) -> None:
    client = GuessClient(served.port)
    try:
        await client.open()
        client.send('40/nope,')
        await client._wait(lambda: any(RawClient._text(f).startswith('44/nope,') for f in client.frames))
        refusal = next(RawClient._text(f) for f in client.frames if RawClient._text(f).startswith('44/nope,'))
        assert json.loads(refusal[len('44/nope,') :]) == {'message': 'Invalid namespace'}
    finally:
        await client.close()


async def test_a_session_that_joins_no_namespace_is_closed_after_the_connect_timeout(served: Serve) -> None:
    idle, joined = GuessClient(served.port), WireClient(served.port)
    try:
        await idle.open()
        await joined.connect()  # joins / and /gameplay at once
        assert await async_wait_until(idle.ended, timeout_s=1 + 3)
        assert not joined.ended()
    finally:
        await idle.close()
        await joined.close()
