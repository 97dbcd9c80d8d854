"""The lean Engine.IO websocket session: pings and pongs keep a client, silence ends it, as python-engineio's rules."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator

import pytest
from engineio.async_socket import AsyncSocket

from gamelist_service import fastpath, session

from .helpers import Recorder, Serve, wait_until
from .test_fastpath import RawClient, fast_and_plain

PING_FRAME = b'\x81\x012'
CLOSE_OPCODE = 0x8


class SilentClient(RawClient):
    """A raw websocket client that stops answering pings once told to (a client gone without closing)."""

    answer = True

    def send(self, text: str) -> None:
        if text == '3' and not self.answer:
            return
        super().send(text)


@pytest.fixture(scope='module')
def serves(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[bool, Serve]]:
    yield from fast_and_plain(tmp_path_factory.mktemp('session'))


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


@pytest.mark.parametrize('fast', [True, False])
async def test_a_client_that_stops_answering_is_closed_after_interval_and_timeout(
    serves: dict[bool, Serve], fast: bool
) -> None:
    serve = serves[fast]
    client = SilentClient(serve.port)
    await client.connect()
    try:
        await client._wait(lambda: PING_FRAME in client.frames, timeout_s=10)
        client.answer = False
        stopped = time.monotonic()
        await client._wait(lambda: any(f[0] & 0x0F == CLOSE_OPCODE for f in client.frames), timeout_s=15)
        waited = time.monotonic() - stopped
        assert 2.0 <= waited <= 12.0, waited  # ping_interval + ping_timeout = 3 s after the last pong; never early
        assert wait_until(lambda: serve.log().count('left / (') >= 1)
    finally:
        await client.close()


@pytest.mark.parametrize('fast', [True, False])
async def test_a_client_that_closes_is_seen_leaving_at_once(serves: dict[bool, Serve], fast: bool) -> None:
    serve = serves[fast]
    before = serve.log().count('(transport close;') + serve.log().count('(client disconnect;')
    recorder = await Recorder(serve.url, 'websocket').connect()
    assert (await recorder.call('main:screen'))['status'] == 'success'
    await recorder.close()
    # both namespaces left, long before a ping could time out (Sanic cancels the session's task as it closes)
    assert wait_until(
        lambda: serve.log().count('(transport close;') + serve.log().count('(client disconnect;') >= before + 2, 5
    )


def test_check_passes_with_the_pinned_libraries() -> None:
    assert session.check() == []


def test_a_missing_part_leaves_python_engineios_handler(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.delattr(AsyncSocket, 'schedule_ping')
    manager = fastpath.FastAsyncManager()
    manager.installed = True  # as fastpath.install leaves it
    with caplog.at_level(logging.WARNING, 'gamelist_service.session'):
        assert session.install(manager) is False
    assert manager.session_factory is None
    assert 'AsyncSocket.schedule_ping' in caplog.text
