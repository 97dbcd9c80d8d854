"""Transitions at scale, at the sizes a test can afford: the listen backlog, disconnects in O(1) and without leaks,
a graceful shutdown that socket.io clients reconnect after at once, reconnects served from memory, one log line per
storm. The figures at 10,000 clients are bench/storm.py's (bench/README.md)."""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar

import pytest
import redis
import socketio
from bidict import bidict
from socketio import base_manager

from gamelist_service.config.settings import LimitSettings
from gamelist_service.core.service import GamelistService
from gamelist_service.storage.store import Store
from gamelist_service.transport import GamelistServer, rooms
from gamelist_service.web import server
from gamelist_service.web.limits import ConnectionLimiter
from gamelist_service.web.sockets import ClientSummary, GameNamespace

from .clients import GuessClient
from .conftest import free_port
from .helpers import (
    Serve,
    async_wait_until,
    fixed_list,
    redis_of,
    serve_in,
    serving,
    shipped_data,
    wait_until,
    write_config,
)

# -- the listen backlog ----------------------------------------------------------------------------------------------


def listen_queue(port: int) -> int:
    """The backlog the kernel gave the listening socket on port (ss shows it as Send-Q)."""
    ss = shutil.which('ss')
    assert ss is not None, 'ss (iproute2) is needed: .ci/run installs it'
    out = subprocess.run([ss, '-ltnH', f'sport = :{port}'], capture_output=True, text=True, check=True).stdout
    (line,) = [row for row in out.splitlines() if row.strip()]
    return int(line.split()[2])


def test_the_listen_backlog_is_the_configured_one(tmp_path: Path) -> None:
    data = shipped_data()
    data['server']['backlog'] = 1234
    serve = serve_in(tmp_path, data)
    try:
        assert listen_queue(serve.port) == 1234
    finally:
        assert serve.stop() == 0


def test_a_backlog_over_somaxconn_is_said_once_at_start(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    somaxconn = tmp_path / 'somaxconn'
    somaxconn.write_text('128\n')
    assert server.listen_backlog(4096, somaxconn) == 4096
    assert 'server.backlog is 4096 but the kernel caps it at net.core.somaxconn = 128' in caplog.text
    caplog.clear()
    assert server.listen_backlog(100, somaxconn) == 100
    assert caplog.text == ''


# -- disconnects: O(1) and no leak -----------------------------------------------------------------------------------


class CountingBidict(bidict):  # type: ignore[type-arg]
    """A room that counts the membership tests made on it (a walk over every room makes one per room)."""

    tests: ClassVar[int] = 0

    def __contains__(self, key: Any) -> bool:
        CountingBidict.tests += 1
        return bool(super().__contains__(key))


def membership_tests_for_one_disconnect(manager: Any, clients: int, monkeypatch: pytest.MonkeyPatch) -> int:
    monkeypatch.setattr(base_manager, 'bidict', CountingBidict)
    manager.set_server(rooms._Server())
    for i in range(clients):
        manager.basic_enter_room(f's{i}', '/', None, eio_sid=f'e{i}')
        manager.basic_enter_room(f's{i}', '/', f's{i}', eio_sid=f'e{i}')
    CountingBidict.tests = 0
    manager.basic_disconnect('s0', '/')
    assert 's0' not in manager.rooms['/'][None]
    return CountingBidict.tests


def test_a_disconnect_costs_the_same_whatever_the_number_connected(monkeypatch: pytest.MonkeyPatch) -> None:
    few = membership_tests_for_one_disconnect(rooms.IndexedAsyncManager(), 10, monkeypatch)
    many = membership_tests_for_one_disconnect(rooms.IndexedAsyncManager(), 2000, monkeypatch)
    assert few == many
    # the instrument sees a walk: python-socketio's own manager tests every room
    assert membership_tests_for_one_disconnect(socketio.AsyncManager(), 2000, monkeypatch) >= 2000


def test_rooms_entered_besides_a_clients_own_are_left_on_disconnect() -> None:
    manager = rooms.IndexedAsyncManager()
    manager.set_server(rooms._Server())
    manager.basic_enter_room('s1', '/', None, eio_sid='e1')
    manager.basic_enter_room('s1', '/', 's1', eio_sid='e1')
    manager.basic_enter_room('s1', '/', 'table-7')
    manager.basic_enter_room('s2', '/', None, eio_sid='e2')
    manager.basic_enter_room('s2', '/', 's2', eio_sid='e2')
    manager.basic_enter_room('s2', '/', 'table-7')
    assert manager.get_rooms('s1', '/') == ['s1', 'table-7']
    manager.basic_disconnect('s1', '/')
    assert dict(manager.get_participants('/', 'table-7')) == {'s2': 'e2'}
    assert manager.get_rooms('s1', '/') == [] and ('/', 's1') not in manager.extra_rooms
    manager.basic_leave_room('s2', '/', 'table-7')
    manager.basic_disconnect('s2', '/')
    assert manager.rooms == {} and manager.extra_rooms == {}


def test_a_clients_own_room_is_its_entry_in_the_namespace() -> None:
    """No bidict per client and namespace for its own room: its members come from room None, for every reader."""
    manager = rooms.IndexedAsyncManager()
    manager.set_server(rooms._Server())
    for n in (1, 2):
        manager.basic_enter_room(f's{n}', '/', None, eio_sid=f'e{n}')
        manager.basic_enter_room(f's{n}', '/', f's{n}', eio_sid=f'e{n}')
    manager.basic_enter_room('s2', '/', 'table-7')
    assert set(manager.rooms['/']) == {None, 'table-7'}  # no room per client
    assert list(manager.get_participants('/', 's1')) == [('s1', 'e1')]  # an emit to=sid
    assert dict(manager.get_participants('/', ['s1', 'table-7'])) == {'s1': 'e1', 's2': 'e2'}
    assert list(manager.get_participants('/', 'nobody')) == [] and list(manager.get_participants('/x', 's1')) == []
    assert manager.is_sid_room('/', 's1') and manager.get_rooms('s1', '/') == ['s1']
    with pytest.raises(ValueError, match='cannot enter a sid room'):
        manager.basic_enter_room('s2', '/', 's1')
    with pytest.raises(ValueError, match='not connected'):
        manager.basic_enter_room('s9', '/', 's9', eio_sid='e9')  # its own room before room None
    manager.basic_leave_room('s1', '/', 's1')  # a no-op: it leaves with room None
    assert manager.is_connected('s1', '/')
    manager.basic_disconnect('s1', '/')
    assert list(manager.get_participants('/', 's1')) == [] and not manager.is_sid_room('/', 's1')


async def test_churn_leaves_no_bookkeeping_behind(redis_url: str, tmp_path: Path) -> None:
    """Clients connect to both namespaces and leave, in rounds, through python-socketio's own handlers."""
    from gamelist_service.config.loader import load_settings  # noqa: PLC0415

    settings = load_settings(write_config(tmp_path / 'games.yaml', shipped_data()), {})
    store = Store(redis_url)

    async def emit(event: str, data: dict[str, Any], namespace: str) -> int:
        return 0

    service = GamelistService(settings, store, emit)
    limiter = ConnectionLimiter(lambda: LimitSettings(max_connections_per_ip=0))
    sio = GamelistServer(
        client_manager=rooms.IndexedAsyncManager(),
        async_mode='asgi',
        logger=False,
        engineio_logger=False,
        limiter=limiter,
    )
    for ns in settings.namespaces:
        sio.register_namespace(GameNamespace(ns, service))
    try:
        for round_ in range(5):
            sids = [f'r{round_}c{i}' for i in range(200)]
            for eio_sid in sids:
                await sio._handle_eio_connect(eio_sid, {'REMOTE_ADDR': '192.0.2.1'})
                await sio._handle_eio_message(eio_sid, '0')
                await sio._handle_eio_message(eio_sid, '0/gameplay,')
            assert all(len(h.clients) == 200 for h in sio.namespace_handlers.values())
            for eio_sid in sids:
                await sio._handle_eio_disconnect(eio_sid, sio.reason.TRANSPORT_CLOSE)
        manager = sio.manager
        assert manager.rooms == {} and manager.extra_rooms == {}
        assert manager.pending_connect == {} and manager.pending_disconnect == {} and manager.callbacks == {}
        assert sio.environ == {} and sio.users == {}
        assert limiter.address == {} and not limiter.per_address and limiter.buckets == {} and not limiter.refused
        for handler in sio.namespace_handlers.values():
            assert isinstance(handler, GameNamespace)
            assert handler.clients == set() and handler.users == {} and handler.joined == handler.left == 1000
    finally:
        await store.close()


# -- shutdown --------------------------------------------------------------------------------------------------------


@pytest.mark.timeout(60)
async def test_shutdown_with_many_clients_is_quick_and_every_client_sees_a_proper_close(tmp_path: Path) -> None:
    data = shipped_data()
    data['limits'] = {'max_connections_per_ip': 0}
    serve = serve_in(tmp_path, data)
    clients = [GuessClient(serve.port) for _ in range(500)]
    try:
        await asyncio.gather(*(client.open(('/', '/gameplay')) for client in clients))
        started = time.monotonic()
        serve.signal(15)
        assert serve.process is not None
        code = await asyncio.to_thread(serve.process.wait, 30)
        took = time.monotonic() - started
        assert code == 0
        assert await async_wait_until(lambda: all(client.ended() for client in clients), timeout_s=5)
        assert [client.close_code() for client in clients] == [1001] * len(clients)
        assert took < 3.0, f'SIGTERM to exit took {took:.2f}s with {len(clients)} clients'
        assert 'Traceback' not in serve.log()
    finally:
        await asyncio.gather(*(client.close() for client in clients))
        serve.stop()


async def test_a_socketio_client_sees_the_shutdown_and_reconnects_at_once(tmp_path: Path) -> None:
    """Not after the ping timeout (20 s by default): the close frame is a transport close it reconnects after."""
    data = shipped_data()
    data['server'].update(ping_interval='25s', ping_timeout='20s')
    config = write_config(tmp_path / 'games.yaml', data)
    port = free_port()
    first = Serve(tmp_path / 'a', config, port)
    (tmp_path / 'a').mkdir()
    first.start()
    client = socketio.AsyncClient(reconnection=True, reconnection_delay=0.1, reconnection_delay_max=0.5)
    reasons: list[str] = []
    client.on('disconnect', lambda *args: reasons.append(str(args[0]) if args else ''), namespace='/')
    second: Serve | None = None
    try:
        await client.connect(first.url, transports=['websocket'], namespaces=['/'], wait_timeout=10)
        stopped = time.monotonic()
        first.signal(15)
        assert await async_wait_until(lambda: bool(reasons), timeout_s=5)
        assert time.monotonic() - stopped < 3.0
        assert reasons[0] in ('transport close', 'transport error')  # not 'io server disconnect': it reconnects
        assert first.process is not None and await asyncio.to_thread(first.process.wait, 10) == 0
        (tmp_path / 'b').mkdir()
        second = Serve(tmp_path / 'b', config, port).start()  # the next instance on the same address
        assert await async_wait_until(lambda: client.connected, timeout_s=10)
        assert (await client.call('main:screen', timeout=5))['status'] == 'success'
    finally:
        await client.disconnect()
        if second is not None:
            assert second.stop() == 0
        first.stop()


# -- a reconnect storm stays off Redis ---------------------------------------------------------------------------


def gets(client: redis.Redis) -> int:
    stats: dict[str, Any] = client.info('commandstats')
    return int(stats.get('cmdstat_get', {}).get('calls', 0))


@pytest.fixture
def cold(tmp_path: Path) -> Iterator[Serve]:
    """A serve whose list was written by someone else and never broadcast: it is not in memory yet."""
    data = shipped_data()
    data['schedules'] = []
    data['limits'] = {'max_connections_per_ip': 0}
    with serving(tmp_path, data) as serve:
        yield serve


async def test_a_reconnect_storm_with_since_reads_redis_once(cold: Serve) -> None:
    store = redis_of(cold)
    try:
        store.set('gamelist:current', json.dumps(fixed_list(7)), ex=300)
        before = gets(store)
        clients = [GuessClient(cold.port) for _ in range(200)]
        try:
            await asyncio.gather(*(client.open() for client in clients))
            for client in clients:  # both namespaces at once, each with the version it saw last
                client.send('40{"since":6}')
                client.send('40/gameplay,{"since":6}')

            def caught_up() -> bool:
                return all(
                    sum(1 for f in c.frames if b'game_list:updated' in f and b'"version":7' in f) == 2 for c in clients
                )

            assert await async_wait_until(caught_up, timeout_s=20)
        finally:
            await asyncio.gather(*(client.close() for client in clients))
        assert gets(store) - before <= 2  # 400 connects with since: one read fills the memory (one more may race it)
    finally:
        store.close()


async def test_concurrent_reads_of_a_list_not_in_memory_share_one_get(redis_url: str, tmp_path: Path) -> None:
    from gamelist_service.config.loader import load_settings  # noqa: PLC0415

    settings = load_settings(write_config(tmp_path / 'games.yaml', shipped_data()), {})
    store = Store(redis_url)
    client = redis.Redis.from_url(redis_url)

    async def emit(event: str, data: dict[str, Any], namespace: str) -> int:
        return 0

    service = GamelistService(settings, store, emit)
    service.listening.set()
    try:
        client.set('gamelist:current', json.dumps(fixed_list(3)), ex=300)
        before = gets(client)
        results = await asyncio.gather(*(service.current('current') for _ in range(500)))
        assert {r['version'] for r in results} == {3}
        assert gets(client) - before == 1
        await service.current('current')  # from memory now
        assert gets(client) - before == 1
    finally:
        client.close()
        await store.close()


# -- logging at scale ------------------------------------------------------------------------------------------------


@pytest.mark.timeout(40)
async def test_a_storm_is_one_info_line_not_one_per_client(tmp_path: Path) -> None:
    data = shipped_data()
    data['limits'] = {'max_connections_per_ip': 0}
    serve = serve_in(tmp_path, data)
    clients = [GuessClient(serve.port) for _ in range(100)]
    try:
        before = len(serve.log())
        await asyncio.gather(*(client.open(('/', '/gameplay')) for client in clients))
        await asyncio.gather(*(client.close() for client in clients))
        assert wait_until(lambda: 'clients in the last 10s: 200 joined, 200 left' in serve.log(), timeout_s=25)
        added = serve.log()[before:]
        assert 'connected to /' not in added and 'left /' not in added and 'Redis GET' not in added
        assert len(added.splitlines()) < 10, added
    finally:
        assert serve.stop() == 0


def test_the_summary_line_counts_since_the_last_one() -> None:
    class Handler(GameNamespace):
        def __init__(self) -> None:  # only what the summary reads
            self.clients = {'a', 'b'}
            self.joined, self.left = 5, 3

    sio: Any = type('S', (), {})()
    sio.namespace_handlers = {'/': Handler(), '/gameplay': Handler()}
    sio.eio = type('E', (), {'sockets': {'x': 1, 'y': 2}})()
    summary = ClientSummary(sio)
    assert summary.line(10) is None  # nothing since it started
    sio.namespace_handlers['/'].joined += 4
    sio.namespace_handlers['/gameplay'].left += 1
    assert summary.line(10) == 'clients in the last 10s: 4 joined, 1 left; now 2 connections (/ 2, /gameplay 2)'
    assert summary.line(10) is None
