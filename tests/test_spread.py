"""`serve --workers 2`: each worker listens on a socket of its own (SO_REUSEPORT, transport/reuseport.py), so the
kernel spreads new connections over the workers by hash, not by which worker wakes first; every listening socket
goes at shutdown; where SO_REUSEPORT is unavailable the workers share one socket, said once. The figures at 3,000
clients and 2 and 6 workers are bench/spread.py's (bench/SPREAD.md)."""

from __future__ import annotations

import asyncio
import errno
import re
import shutil
import socket
import subprocess
import sys
from collections import Counter
from collections.abc import Iterator
from math import comb
from pathlib import Path
from typing import Any

import pytest

from gamelist_service.transport import reuseport

from .clients import GuessClient
from .helpers import Serve, async_wait_until, serve_in, serving, shipped_data, wait_until

pytestmark = pytest.mark.timeout(90)

CLIENTS = 300
BACKLOG = 1234
READY = re.compile(r'\[(\d+)\] sanic\.server: Worker ready')


def fair_split_bound(n: int, p_fail: float = 1e-6) -> int:
    """The most of n connections one of two workers may hold when each connection goes to either with probability
    1/2 (the kernel's hash of its addresses and ports): a random split goes over it with probability under p_fail.
    P(max(X, n - X) > b) = 2 P(X > b) for X ~ Binomial(n, 1/2) and b >= n/2, computed exactly."""
    for bound in range((n + 1) // 2, n + 1):
        over = sum(comb(n, k) for k in range(bound + 1, n + 1))
        if 2 * over < p_fail * 2**n:
            return bound
    return n


def ss(*args: str) -> list[str]:
    tool = shutil.which('ss')
    assert tool is not None, 'ss (iproute2) is needed: .ci/run installs it'
    out = subprocess.run([tool, '-H', *args], capture_output=True, text=True, check=True, timeout=10).stdout
    return [line for line in out.splitlines() if line.strip()]


def listeners(port: int) -> list[tuple[int, set[int]]]:
    """Each socket listening on port: (its backlog, the pids holding it)."""
    return [
        (int(row.split()[2]), {int(pid) for pid in re.findall(r'pid=(\d+)', row)})
        for row in ss('-ltnp', f'sport = :{port}')
    ]


def established_by_pid(port: int) -> Counter[int]:
    """The accepted connections on port, by the pid holding each."""
    held: Counter[int] = Counter()
    for row in ss('-tnp', 'state', 'established', f'( sport = :{port} )'):
        (pid,) = {int(pid) for pid in re.findall(r'pid=(\d+)', row)}  # one process holds each connection
        held[pid] += 1
    return held


def worker_pids(serve: Serve) -> set[int]:
    return {int(pid) for pid in READY.findall(serve.log())}


async def open_clients(port: int, n: int, at_once: int = 50) -> list[GuessClient]:
    clients = [GuessClient(port) for _ in range(n)]
    for start in range(0, n, at_once):
        await asyncio.gather(*(client.open(('/',)) for client in clients[start : start + at_once]))
    return clients


def spread_data() -> dict[str, Any]:
    data = shipped_data()
    data['schedules'][0]['every'] = '1h'
    data['server']['backlog'] = BACKLOG
    data['limits'] = {'max_connections_per_ip': 0}  # every client here comes from 127.0.0.1
    return data


@pytest.fixture(scope='module')
def workers2(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Serve]:
    with serving(tmp_path_factory.mktemp('spread'), spread_data(), '--workers', '2', timeout_s=40) as serve:
        # a worker that does not listen yet gets no share: every test starts with both listening
        assert wait_until(lambda: len(worker_pids(serve)) == 2, timeout_s=40)
        yield serve


# -- in this process: the sockets ----------------------------------------------------------------------------------


def test_the_bound_is_what_a_fair_split_stays_under() -> None:
    assert fair_split_bound(CLIENTS) == 192  # 64 %: 4.9 standard deviations over 150
    assert fair_split_bound(2) == 2 and fair_split_bound(100) < 80


def test_the_main_process_socket_holds_the_port_and_takes_no_connection() -> None:
    main = reuseport.bind_main('127.0.0.1', 0)
    try:
        address = main.getsockname()
        assert not main.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN)
        with pytest.raises(ConnectionRefusedError):  # nothing listens: the kernel spreads over listening sockets only
            socket.create_connection(address, timeout=5).close()
        with socket.socket() as other, pytest.raises(OSError) as refused:
            other.bind(address)  # without SO_REUSEPORT nobody else binds it
        assert refused.value.errno == errno.EADDRINUSE
    finally:
        main.close()


def test_a_worker_puts_its_own_socket_in_place_of_the_inherited_one() -> None:
    main = reuseport.bind_main('127.0.0.1', 0)
    address = main.getsockname()
    inherited = socket.socket(fileno=main.detach())  # what a worker holds: the main process's socket
    try:
        assert reuseport.take_own(address, [inherited.fileno()]) is None
        inherited.listen(8)  # as Sanic's server does, on the same socket object
        with socket.create_connection(address, timeout=5) as client:
            conn, _ = inherited.accept()
            conn.close()
            assert client.getpeername() == address
        # the descriptor is a new socket of the worker's own, bound to the same address
        assert inherited.getsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT)
        assert reuseport.take_own(address, [inherited.fileno()]) is not None  # a listening socket is not taken
    finally:
        inherited.close()


def test_a_port_something_listens_on_is_refused_not_joined() -> None:
    with socket.socket() as busy:
        busy.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        busy.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)  # even one that would let us in
        busy.bind(('127.0.0.1', 0))
        busy.listen(1)
        with pytest.raises(OSError) as refused:
            reuseport.bind_main('127.0.0.1', busy.getsockname()[1]).close()
        assert refused.value.errno == errno.EADDRINUSE


def test_without_so_reuseport_or_linux_it_says_why(monkeypatch: pytest.MonkeyPatch) -> None:
    assert reuseport.unavailable() is None
    monkeypatch.setattr(sys, 'platform', 'darwin')
    assert 'darwin does not spread connections' in (reuseport.unavailable() or '')
    monkeypatch.undo()
    monkeypatch.delattr(socket, 'SO_REUSEPORT')
    assert reuseport.unavailable() == 'this Python has no socket.SO_REUSEPORT'


def test_a_sanic_that_listens_on_the_given_socket_is_caught(monkeypatch: pytest.MonkeyPatch) -> None:
    import sanic.server.socket  # noqa: PLC0415

    def listening(settings: dict[str, Any]) -> socket.socket:
        given: socket.socket = settings['sock']
        given.listen(1)
        return given

    monkeypatch.setattr(sanic.server.socket, 'configure_socket', listening)
    assert reuseport.check() and 'Sanic does not use a given socket' in (reuseport.unavailable() or '')


# -- serve --workers 2 ---------------------------------------------------------------------------------------------


def test_each_worker_listens_on_a_socket_of_its_own_with_the_configured_backlog(workers2: Serve) -> None:
    found = listeners(workers2.port)
    assert sorted(backlog for backlog, _ in found) == [BACKLOG, BACKLOG]
    assert [len(pids) for _, pids in found] == [1, 1], found  # not shared
    assert set().union(*(pids for _, pids in found)) == worker_pids(workers2)
    assert 'each of the 2 workers listens on a socket of its own (SO_REUSEPORT)' in workers2.log()
    assert "listens on the main process's socket" not in workers2.log()


async def test_a_few_hundred_clients_spread_over_both_workers_as_a_fair_hash_would(workers2: Serve) -> None:
    clients = await open_clients(workers2.port, CLIENTS)
    try:
        held = established_by_pid(workers2.port)
        assert set(held) == worker_pids(workers2), held  # both hold clients; the main process none
        assert sum(held.values()) == CLIENTS
        assert max(held.values()) <= fair_split_bound(CLIENTS), held
    finally:
        await asyncio.gather(*(client.close() for client in clients))


async def test_sigterm_closes_every_socket_and_exits_0(workers2: Serve) -> None:
    """Last in this module: it stops the serve."""
    clients = await open_clients(workers2.port, 60)
    try:
        assert workers2.process is not None
        workers2.signal(15)
        assert await asyncio.to_thread(workers2.process.wait, 30) == 0
        assert await async_wait_until(lambda: all(client.ended() for client in clients), timeout_s=5)
        assert [client.close_code() for client in clients] == [1001] * len(clients)
        assert listeners(workers2.port) == []
        assert [row for row in ss('-tanp', f'sport = :{workers2.port}') if 'pid=' in row] == []  # no process holds one
        with socket.socket() as again:  # no SO_REUSEPORT: binds only if no socket of the service is left
            again.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            again.bind(('127.0.0.1', workers2.port))
            again.listen(1)
        assert 'Traceback' not in workers2.log()
    finally:
        await asyncio.gather(*(client.close() for client in clients))


# -- where SO_REUSEPORT is unavailable -----------------------------------------------------------------------------


async def test_without_so_reuseport_the_workers_share_one_socket_and_it_is_said_once(tmp_path: Path) -> None:
    site = tmp_path / 'site'
    site.mkdir()
    (site / 'sitecustomize.py').write_text('import socket\ndel socket.SO_REUSEPORT\n')
    serve = serve_in(tmp_path, spread_data(), '--workers', '2', env={'PYTHONPATH': str(site)}, timeout_s=40)
    clients: list[GuessClient] = []
    try:
        assert wait_until(lambda: len(worker_pids(serve)) == 2, timeout_s=40)
        line = 'SO_REUSEPORT unavailable (this Python has no socket.SO_REUSEPORT): the 2 workers share one listening'
        assert serve.log().count(line) == 1
        ((backlog, pids),) = listeners(serve.port)  # one socket, held by every worker (and the main process)
        assert backlog == BACKLOG and worker_pids(serve) < pids
        clients = await open_clients(serve.port, 20)
        assert sum(established_by_pid(serve.port).values()) == 20
    finally:
        await asyncio.gather(*(client.close() for client in clients))
        assert serve.stop() == 0
