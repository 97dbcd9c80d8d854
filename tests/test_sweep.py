"""The session sweep (gamelist_service/transport/sweep.py): python-engineio's service task done a slice at a time.

The sweep must find what python-engineio's task finds (closed sessions dropped, overdue pongs closed with their
reason), visit every session once per pass, leave healthy ones alone and stop on shutdown(); a serve with the fast
path runs it, one without runs python-engineio's own task, and both close a polling client that stops answering.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator

import aiohttp
import engineio
import pytest
from engineio.async_socket import AsyncSocket

from gamelist_service.transport import compat, create_server, sweep
from gamelist_service.transport.sweep import SessionSweep
from gamelist_service.web.limits import ConnectionLimiter

from .helpers import Serve, async_wait_until, fast_and_plain

pytestmark = pytest.mark.timeout(30)


@pytest.fixture(scope='module')
def serves(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[bool, Serve]]:
    yield from fast_and_plain(tmp_path_factory.mktemp('sweep'))


def server_with(sessions: int, ping_timeout: float = 20.0) -> tuple[engineio.AsyncServer, list[AsyncSocket]]:
    """A python-engineio server holding this many sessions, as its handshake makes them (no client behind them)."""
    eio = engineio.AsyncServer(async_mode='asgi', ping_timeout=ping_timeout)
    made = []
    for n in range(sessions):
        sock = AsyncSocket(eio, f'sid{n}')
        sock.connected = True
        eio.sockets[sock.sid] = sock
        made.append(sock)
    return eio, made


def start(eio: engineio.AsyncServer) -> asyncio.Task[None]:
    """The service task started as python-engineio starts it at its first session."""
    eio.start_service_task = False
    eio.service_task_handle = asyncio.ensure_future(eio._service_task())
    return eio.service_task_handle  # type: ignore[no-any-return]


def test_the_sweeps_internals_are_there() -> None:
    assert sweep.check() == []
    assert compat.check()['sweep'] == []


async def test_overdue_sessions_are_closed_and_closed_ones_dropped_the_rest_untouched() -> None:
    eio, socks = server_with(6)
    now = time.time()
    socks[0].closed = True  # closed already: only its entry is left to drop
    socks[1].last_ping = now - 25  # pinged 25 s ago, no pong: overdue (ping_timeout 20 s)
    socks[2].last_ping = now - 5  # pinged 5 s ago: still within its time
    socks[3].last_ping = None  # its pong came (python-engineio clears last_ping then)
    socks[4].closing = True  # closing: its own close finishes it
    socks[4].last_ping = now - 25
    disconnects: list[tuple[str, str]] = []

    def on_disconnect(sid: str, reason: str) -> None:
        disconnects.append((sid, reason))

    eio.on('disconnect', on_disconnect)

    swept = SessionSweep(eio)
    await swept.visit(socks)
    assert 'sid0' not in eio.sockets  # dropped
    assert socks[1].closed and disconnects == [('sid1', eio.reason.PING_TIMEOUT)]  # python-engineio's own close
    assert swept.closed_for_timeout == 1
    for untouched in socks[2:]:
        assert not untouched.closed and eio.sockets[untouched.sid] is untouched


async def test_a_replaced_entry_is_not_dropped_for_its_closed_predecessor() -> None:
    eio, socks = server_with(1)
    socks[0].closed = True
    successor = AsyncSocket(eio, 'sid0')  # the same sid now names another session (never in practice: ids are random)
    eio.sockets['sid0'] = successor
    await SessionSweep(eio).visit(socks)
    assert eio.sockets['sid0'] is successor


async def test_every_session_is_visited_once_per_pass_a_slice_per_tick() -> None:
    eio, socks = server_with(100, ping_timeout=20.0)
    seen: list[list[str]] = []

    class Recording(SessionSweep):
        async def visit(self, sessions: list[AsyncSocket]) -> None:
            seen.append([s.sid for s in sessions])
            await super().visit(sessions)

    swept = Recording(eio, tick_s=0.01, pass_s=0.1)  # 10 ticks a pass: 10 sessions a tick
    swept.install()
    task = start(eio)
    assert await async_wait_until(lambda: len(seen) >= 20, 10)
    await eio.shutdown()  # sets service_task_event and awaits the task: it must end
    assert task.done() and task.exception() is None
    first_pass = [sid for tick in seen[:10] for sid in tick]
    assert [len(tick) for tick in seen[:10]] == [10] * 10
    assert sorted(first_pass) == sorted(s.sid for s in socks)  # each once
    assert sorted(sid for tick in seen[10:20] for sid in tick) == sorted(first_pass)  # and again in the next pass


async def test_a_pass_is_at_most_the_ping_timeout() -> None:
    eio, _ = server_with(40, ping_timeout=0.1)
    seen: list[int] = []

    class Counting(SessionSweep):
        async def visit(self, sessions: list[AsyncSocket]) -> None:
            seen.append(len(sessions))

    swept = Counting(eio, tick_s=0.01, pass_s=5.0)  # a pass would be 5 s, but a pong may only take 0.1 s
    swept.install()
    task = start(eio)
    assert await async_wait_until(lambda: len(seen) >= 1, 10)
    await eio.shutdown()
    await task
    assert seen[0] == 4  # 40 sessions over 10 ticks (0.1 s / 0.01 s)


async def test_sessions_that_come_during_a_pass_are_visited_in_the_next() -> None:
    eio, _ = server_with(2)
    seen: list[str] = []

    class Recording(SessionSweep):
        async def visit(self, sessions: list[AsyncSocket]) -> None:
            seen.extend(s.sid for s in sessions)

    swept = Recording(eio, tick_s=0.01, pass_s=0.02)
    swept.install()
    task = start(eio)
    assert await async_wait_until(lambda: len(seen) >= 2, 10)
    late = AsyncSocket(eio, 'late')
    eio.sockets['late'] = late
    assert await async_wait_until(lambda: 'late' in seen, 10)
    await eio.shutdown()
    await task


async def test_a_failing_visit_is_logged_and_the_sweep_goes_on(caplog: pytest.LogCaptureFixture) -> None:
    eio, _ = server_with(3)
    calls: list[int] = []

    class Failing(SessionSweep):
        async def visit(self, sessions: list[AsyncSocket]) -> None:
            calls.append(len(sessions))
            if len(calls) == 1:
                raise RuntimeError('boom')

    swept = Failing(eio, tick_s=0.01, pass_s=0.01)
    swept.install()
    task = start(eio)
    assert await async_wait_until(lambda: len(calls) >= 3, 10)
    await eio.shutdown()
    await task
    assert 'session sweep failed; it goes on' in caplog.text


def test_a_serve_with_the_fast_path_runs_the_sweep_and_one_without_python_engineios_task(
    serves: dict[bool, Serve],
) -> None:
    assert 'transport feature sweep off' not in serves[True].log()
    fast, plain = (
        create_server(
            fast_path=fast, async_mode='asgi', logger=False, engineio_logger=False, limiter=ConnectionLimiter()
        )
        for fast in (True, False)
    )
    assert getattr(fast.eio._service_task, '__self__', None).__class__ is SessionSweep
    assert plain.eio._service_task.__func__ is engineio.AsyncServer._service_task


@pytest.mark.parametrize('fast', [True, False])
async def test_a_polling_client_that_stops_answering_pings_is_closed(serves: dict[bool, Serve], fast: bool) -> None:
    """The tests' config pings every 1 s and gives 2 s to answer: the session is gone within a few seconds."""
    serve = serves[fast]
    base = f'http://127.0.0.1:{serve.port}/socket.io/?EIO=4&transport=polling'
    async with aiohttp.ClientSession() as http:
        async with http.get(base) as response:
            sid = json.loads((await response.text())[1:])['sid']  # the OPEN packet: 0{"sid": ...}
        started = time.monotonic()
        answers: list[str] = []
        for _ in range(40):  # each poll returns within the ping interval (1 s); the client never sends its pong
            async with http.get(f'{base}&sid={sid}') as response:
                answers.append(f'{response.status} {await response.text()}')
            if not answers[-1].startswith('200'):
                break
        waited = time.monotonic() - started
    assert answers[-1].startswith('400'), answers  # the session is gone: python-engineio answers an unknown sid 400
    assert '2' in [a.split(' ', 1)[1] for a in answers[:-1]]  # it was pinged, and closed for not answering
    assert waited <= 15.0, waited  # ping interval + ping timeout + one pass, with room for a slow machine
