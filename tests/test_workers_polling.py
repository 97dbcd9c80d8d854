"""`serve --workers 2` without a sticky load balancer: socket.io clients with their default transports (polling first,
then the upgrade) and polling-only clients connect, receive every broadcast and answer main:screen, whichever worker
each of their requests lands on (transport/handoff.py). Websocket-only clients keep the direct path."""

from __future__ import annotations

import asyncio
import base64
import os
import re
import signal
import subprocess
import urllib.request
from collections import Counter
from collections.abc import Iterator
from typing import Any

import pytest
import socketio

from gamelist_service.transport.handoff import owner_of, request_sid
from gamelist_service.transport.server import SessionIds

from .conftest import cli_command
from .helpers import Serve, async_wait_until, hourly_data, serving, wait_until

pytestmark = pytest.mark.timeout(90)


@pytest.fixture(scope='module')
def workers2(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Serve]:
    data = hourly_data(admin=True)
    data['limits'] = {'max_connections_per_ip': 1000}  # every client here comes from 127.0.0.1
    # the stop at the end must be clean also after the SIGKILL test took one of its workers
    with serving(tmp_path_factory.mktemp('workers2'), data, '--workers', '2', timeout_s=40) as serve:
        assert wait_until(lambda: serve.log().count('Worker ready') == 2, timeout_s=40)
        yield serve


class Client:
    """A python-socketio client that records the list versions it receives and reconnects with since."""

    def __init__(self, url: str, transports: list[str] | None, reconnect_after_s: float | None = None) -> None:
        self.url = url
        self.transports = transports
        self.versions: dict[str, list[int]] = {'/': [], '/gameplay': []}
        self.disconnects = 0
        self.sio = socketio.AsyncClient(
            reconnection=reconnect_after_s is not None,
            reconnection_delay=reconnect_after_s or 1,
            reconnection_delay_max=reconnect_after_s or 1,
            randomization_factor=0,
        )
        for namespace in self.versions:
            self.sio.on('game_list:updated', self._recorder(namespace), namespace=namespace)
        self.sio.on('disconnect', self._disconnected, namespace='/')

    def _recorder(self, namespace: str) -> Any:
        async def record(envelope: dict[str, Any]) -> None:
            self.versions[namespace].append(envelope['data']['version'])

        return record

    async def _disconnected(self, *args: Any) -> None:
        self.disconnects += 1

    def since(self) -> dict[str, Any]:
        seen = self.versions['/']
        return {'since': seen[-1]} if seen else {}

    async def connect(self) -> Client:
        await self.sio.connect(
            self.url,
            transports=self.transports,
            namespaces=['/', '/gameplay'],
            auth=lambda: self.since(),
            wait_timeout=20,
        )
        return self

    @property
    def owner(self) -> int | None:
        return owner_of(self.sio.eio.sid)

    async def close(self) -> None:
        await self.sio.disconnect()


async def connect_all(clients: list[Client], at_once: int = 25) -> None:
    for start in range(0, len(clients), at_once):
        await asyncio.gather(*(client.connect() for client in clients[start : start + at_once]))


def publish(serve: Serve) -> int:
    result = subprocess.run(
        cli_command('publish', '--config', str(serve.config), '--port', str(serve.port)),
        cwd=serve.workdir,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
        env=serve.env,
    )
    assert result.returncode == 0, result.stderr
    return int(re.findall(r'version (\d+)', result.stdout)[0])


def worker_pids(serve: Serve) -> set[int]:
    return {int(pid) for pid in re.findall(r'\[(\d+)\] sanic\.server: Worker ready', serve.log())}


def metrics_text(serve: Serve) -> str:
    with urllib.request.urlopen(f'{serve.url}/metrics', timeout=5) as response:
        text: str = response.read().decode()
    return text


def handoffs(serve: Serve) -> dict[str, float]:
    found = re.findall(
        r'^gamelist_worker_handoffs_total\{direction="(\w+)"\} (\S+)$', metrics_text(serve), re.MULTILINE
    )
    return {direction: float(value) for direction, value in found}


def test_a_session_id_names_its_worker_and_a_request_line_its_session() -> None:
    ids = SessionIds(owner=4_194_303)  # Linux's largest pid
    sid = ids()
    assert len(sid) == 20 and owner_of(sid) == 4_194_303
    assert request_sid(f'GET /socket.io/?EIO=4&transport=polling&t=x&sid={sid} HTTP/1.1\r\n'.encode()) == sid
    assert request_sid(f'POST /socket.io/?sid={sid}&EIO=4&transport=polling HTTP/1.1\r\n'.encode()) == sid
    assert request_sid(b'GET /socket.io/?EIO=4&transport=polling HTTP/1.1\r\n') is None  # a handshake stays
    assert request_sid(f'GET /socket.io/?EIO=4&xsid={sid} HTTP/1.1\r\n'.encode()) is None
    assert request_sid(f'GET /api/v1/gamelist?sid={sid} HTTP/1.1\r\n'.encode()) is None
    assert request_sid(b'GET /socket.io/?EIO=4&sid=short HTTP/1.1\r\n') is None
    assert owner_of('not base64 at all!!') is None and owner_of(base64.urlsafe_b64encode(b'x' * 12).decode()) is None


async def test_polling_and_default_clients_get_every_broadcast_and_main_screen_on_both_workers(
    workers2: Serve,
) -> None:
    before = handoffs(workers2)
    polling = [Client(workers2.url, ['polling']) for _ in range(20)]
    default = [Client(workers2.url, None) for _ in range(20)]  # python-socketio's default: polling, then upgrade
    clients = polling + default
    try:
        await connect_all(clients)
        assert {client.owner for client in clients} == worker_pids(workers2), 'sessions on both workers'
        for client in clients:
            ack = await client.sio.call('main:screen', namespace='/', timeout=10)
            assert ack['status'] == 'success' and ack['data']['gamelist']
        published = [publish(workers2) for _ in range(3)]
        everywhere = [(client, namespace) for client in clients for namespace in ('/', '/gameplay')]
        assert await async_wait_until(lambda: all(published[-1] in c.versions[n] for c, n in everywhere))
        assert all(set(published) <= set(c.versions[n]) for c, n in everywhere), 'every broadcast, everywhere'
        assert await async_wait_until(lambda: all(c.sio.transport() == 'websocket' for c in default))
        assert all(client.sio.transport() == 'polling' for client in polling)
        assert all(client.disconnects == 0 for client in clients)
        after = handoffs(workers2)
        handed = after.get('handed', 0) - before.get('handed', 0)
        assert handed > 0, 'requests reached the other worker and were handed over'
        assert after.get('adopted', 0) - before.get('adopted', 0) == handed
    finally:
        await asyncio.gather(*(client.close() for client in clients))


async def test_200_default_clients_spread_over_both_workers_all_upgraded_none_lost(workers2: Serve) -> None:
    clients = [Client(workers2.url, None) for _ in range(200)]
    try:
        await connect_all(clients, at_once=50)
        owners = Counter(client.owner for client in clients)
        assert set(owners) == worker_pids(workers2) and min(owners.values()) >= 40, owners
        assert await async_wait_until(lambda: all(c.sio.transport() == 'websocket' for c in clients), 20)
        version = publish(workers2)
        assert await async_wait_until(
            lambda: all(version in c.versions[n] for c in clients for n in ('/', '/gameplay')), 20
        )
        assert sum(client.disconnects for client in clients) == 0
        body = metrics_text(workers2)
        assert re.search(r'^gamelist_connected_clients\{namespace="/"\} 200\.0$', body, re.MULTILINE), body
    finally:
        await asyncio.gather(*(client.close() for client in clients))


async def test_websocket_only_clients_are_never_handed_over(workers2: Serve) -> None:
    before = handoffs(workers2)
    clients = [await Client(workers2.url, ['websocket']).connect() for _ in range(10)]
    try:
        assert all(client.sio.transport() == 'websocket' for client in clients)
        assert handoffs(workers2) == before
    finally:
        await asyncio.gather(*(client.close() for client in clients))


async def test_a_killed_worker_s_clients_reconnect_to_the_survivor_and_catch_up(workers2: Serve) -> None:
    """Last in this module: it leaves one worker."""
    clients = [Client(workers2.url, None, reconnect_after_s=4.0) for _ in range(30)]
    try:
        await connect_all(clients)
        first = publish(workers2)
        assert await async_wait_until(lambda: all(first in c.versions['/'] for c in clients))
        victim = next(iter(worker_pids(workers2)))
        orphans = [client for client in clients if client.owner == victim]
        assert orphans, 'some clients on the worker to kill'
        os.kill(victim, signal.SIGKILL)
        assert await async_wait_until(lambda: all(c.disconnects == 1 for c in orphans), 10)
        missed = publish(workers2)  # while they wait out their 4 s reconnection delay
        assert await async_wait_until(lambda: all(c.sio.connected and c.owner != victim for c in orphans), 20)
        # the list they missed came with their reconnect (auth since), not from a broadcast
        assert await async_wait_until(lambda: all(missed in c.versions['/'] for c in clients), 10)
        assert all(missed in c.versions['/gameplay'] for c in clients)
        assert all(c.disconnects == 0 for c in clients if c not in orphans)
    finally:
        await asyncio.gather(*(client.close() for client in clients))
