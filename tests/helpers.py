"""Shared test helpers: config files made from the shipped one, `gamelist-service serve` as a subprocess (serving() for
a module's own), and a list the tests publish themselves (fixed_list). Wire-level clients: tests/clients.py."""

from __future__ import annotations

import asyncio
import copy
import functools
import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, ClassVar

import redis
import yaml

from gamelist_service.core.lists import utc_now_iso
from gamelist_service.storage.embedded import EmbeddedRedis
from gamelist_service.storage.instances import running

from .conftest import free_port

MakeEmbedded = Callable[..., EmbeddedRedis]  # the make_embedded fixture (conftest.py): stopped after the test

ROOT = Path(__file__).resolve().parent.parent
SHIPPED_CONFIG = ROOT / 'config' / 'games.yaml'

# The example game of the wire contract (PRODUCT.md), field for field.
CONTRACT_GAME: dict[str, Any] = {
    'game_id': 'game_1_1234567890',
    'game_name': 'Poker',
    'game_type': 'card',
    'active_gamepalye': 15000,
    'livegameplaye': 8000,
    'min_players': 2,
    'max_players': 8,
    'status': 'active',
    'created_at': '2024-01-01T12:00:00Z',
}


# Every Serve gets this admin token in its environment; a config made with shipped_data(admin=True) names it, so
# GET /ready shows its details to ready() below.
ADMIN_ENV = 'GAMELIST_TEST_ADMIN_TOKEN'
ADMIN_TOKEN = 'test-admin-token-0123456789'


def shipped_data(*, admin: bool = False) -> dict[str, Any]:
    """The shipped config as data, with quick pings: a polling client's disconnect waits for the next ping.

    :param admin: name the tests' admin token (server.admin_token_env): /ready's details for ready().
    """
    data: dict[str, Any] = copy.deepcopy(yaml.safe_load(SHIPPED_CONFIG.read_text()))
    data['server'].update(ping_interval='1s', ping_timeout='2s')
    if admin:
        data['server']['admin_token_env'] = ADMIN_ENV
    return data


def hourly_data(*, admin: bool = False) -> dict[str, Any]:
    """shipped_data() whose schedule runs once at start and then hourly: while a module's tests run, no tick comes
    between them; every later change of the list is a test's own."""
    data = shipped_data(admin=admin)
    data['schedules'][0]['every'] = '1h'
    return data


def write_config(path: Path, data: dict[str, Any]) -> Path:
    path.write_text('# yaml-language-server: $schema=../schemas/games.schema.json\n' + yaml.safe_dump(data))
    return path


def http_get(url: str, timeout_s: float = 5.0, headers: dict[str, str] | None = None) -> tuple[int, Any]:
    try:
        with urllib.request.urlopen(urllib.request.Request(url, headers=headers or {}), timeout=timeout_s) as response:
            return response.status, json.loads(response.read() or b'null')
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b'null')


def ready(serve: Serve, timeout_s: float = 5.0) -> tuple[int, Any]:
    """GET /ready with the tests' admin token: its details too (the config must come from shipped_data(admin=True))."""
    return http_get(serve.url + '/ready', timeout_s, {'Authorization': f'Bearer {ADMIN_TOKEN}'})


def answers(serve: Serve) -> bool:
    """True once the serve process answers HTTP at all (any status)."""
    try:
        http_get(serve.url + '/health', 1.0)
    except OSError:
        return False
    return True


def wait_until(predicate: Callable[[], bool], timeout_s: float = 10.0, interval_s: float = 0.05) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval_s)
    return predicate()


async def async_wait_until(predicate: Callable[[], bool], timeout_s: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return True
        await asyncio.sleep(0.02)
    return predicate()


class Serve:
    """`gamelist-service serve` in a subprocess, in its own working directory, on a port of its own."""

    started: ClassVar[
        list[Serve]
    ] = []  # conftest stops any still running at the end of the session (a test that timed out)

    def __init__(
        self,
        workdir: Path,
        config: Path,
        port: int,
        *extra: str,
        env: dict[str, str] | None = None,
        global_args: tuple[str, ...] = (),
    ) -> None:
        self.global_args = global_args
        self.workdir = workdir
        self.config = config
        self.port = port
        self.extra = extra
        self.env = {k: v for k, v in os.environ.items() if not k.startswith('GAMELIST_')} | (env or {})
        self.env.setdefault(ADMIN_ENV, ADMIN_TOKEN)
        self.log_path = workdir / f'serve-{port}.log'
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f'http://127.0.0.1:{self.port}'

    def start(self, *, wait_ready: bool = True, timeout_s: float = 20.0) -> Serve:
        with self.log_path.open('ab') as log:  # the child keeps its own descriptor
            self.process = subprocess.Popen(
                [
                    sys.executable,
                    '-m',
                    'gamelist_service',
                    *self.global_args,
                    'serve',
                    '--config',
                    str(self.config),
                    '--port',
                    str(self.port),
                    *self.extra,
                ],
                cwd=self.workdir,
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                # its own process group: Sanic's worker manager, when it gives up on a shutdown, SIGKILLs the
                # process group of its workers (os.killpg), which would otherwise be pytest's
                start_new_session=True,
            )
        Serve.started.append(self)
        if wait_ready:
            ok = wait_until(lambda: self._ready() or self.process is None or self.process.poll() is not None, timeout_s)
            if not ok or self.process.poll() is not None:
                raise RuntimeError(f'serve did not become ready:\n{self.log()}')
        return self

    def _ready(self) -> bool:
        try:
            return http_get(self.url + '/ready', timeout_s=1.0)[0] == 200
        except (OSError, ValueError):
            return False

    def log(self) -> str:
        return self.log_path.read_text(errors='replace') if self.log_path.exists() else ''

    def signal(self, signum: int) -> None:
        assert self.process is not None
        self.process.send_signal(signum)

    def stop(self, timeout_s: float = 15.0) -> int:
        """SIGTERM and wait; returns the exit code. Kills (by its own PID) only if it does not exit."""
        if self.process is None:
            return 0
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout_s)
        return self.process.returncode


class Recorder:
    """A python-socketio AsyncClient that records every event it receives, per namespace."""

    def __init__(
        self,
        url: str,
        transport: str = 'websocket',
        namespaces: tuple[str, ...] = ('/', '/gameplay'),
        **connect_kwargs: Any,
    ) -> None:
        import socketio  # noqa: PLC0415 - only the socket tests need it

        self.url = url
        self.transport = transport
        self.namespaces = namespaces
        self.connect_kwargs = connect_kwargs
        self.events: list[tuple[str, str, Any]] = []
        self.disconnects: list[str] = []
        self.sio = socketio.AsyncClient(reconnection=False)

        async def on_any(event: str, *args: Any, namespace: str) -> None:
            self.events.append((event, namespace, args[0] if len(args) == 1 else list(args)))

        async def on_disconnect(*args: Any) -> None:
            self.disconnects.append(str(args[0]) if args else '')

        for ns in namespaces:
            self.sio.on('*', functools.partial(on_any, namespace=ns), namespace=ns)
            self.sio.on('disconnect', on_disconnect, namespace=ns)

    async def connect(self) -> Recorder:
        try:
            await self.sio.connect(
                self.url,
                transports=[self.transport],
                namespaces=list(self.namespaces),
                wait_timeout=10,
                **self.connect_kwargs,
            )
        except BaseException:
            await self.close()
            raise
        return self

    def received(self, event: str, namespace: str) -> list[Any]:
        return [data for name, ns, data in self.events if name == event and ns == namespace]

    async def wait_for(self, event: str, namespace: str, count: int = 1, timeout_s: float = 10.0) -> list[Any]:
        ok = await async_wait_until(lambda: len(self.received(event, namespace)) >= count, timeout_s)
        got = self.received(event, namespace)
        assert ok, f'{event} on {namespace}: {len(got)} of {count} arrived in {timeout_s}s'
        return got

    async def call(self, event: str, data: Any = None, namespace: str = '/', timeout_s: float = 10.0) -> Any:
        args = () if data is None else (data,)
        return await self.sio.call(event, *args, namespace=namespace, timeout=timeout_s)

    async def close(self) -> None:
        await self.sio.disconnect()
        http = getattr(self.sio.eio, 'http', None)  # a refused client keeps its aiohttp session open
        if http is not None and not http.closed:
            await http.close()


def redis_servers_on(socket_path: Path) -> list[int]:
    """PIDs of live redis-server processes serving socket_path (a killed one is gone once serve has reaped it)."""
    pids = []
    for proc in Path('/proc').iterdir():
        if proc.name.isdigit():
            try:
                cmdline = (proc / 'cmdline').read_bytes()
            except OSError:
                continue
            if b'redis-server' in cmdline and str(socket_path).encode() in cmdline:
                pids.append(int(proc.name))
    return pids


# -- serve for a module's (or a test's) own ----------------------------------------------------------------------


def serve_in(
    workdir: Path,
    data: dict[str, Any],
    *extra: str,
    env: dict[str, str] | None = None,
    global_args: tuple[str, ...] = (),
    port: int | None = None,
    wait_ready: bool = True,
    timeout_s: float = 20.0,
) -> Serve:
    """A serve started in workdir with the config data (written there as games.yaml), on port or a free one."""
    config = write_config(workdir / 'games.yaml', data)
    serve = Serve(workdir, config, free_port() if port is None else port, *extra, env=env, global_args=global_args)
    return serve.start(wait_ready=wait_ready, timeout_s=timeout_s)


@contextmanager
def serving(
    workdir: Path,
    data: dict[str, Any],
    *extra: str,
    env: dict[str, str] | None = None,
    global_args: tuple[str, ...] = (),
    port: int | None = None,
    timeout_s: float = 20.0,
) -> Iterator[Serve]:
    """serve_in(...) for the body of a fixture, which must end with a clean stop (exit code 0).

    A module's serve: ``with serving(tmp_path_factory.mktemp('name'), hourly_data()) as serve: yield serve``.
    """
    serve = serve_in(workdir, data, *extra, env=env, global_args=global_args, port=port, timeout_s=timeout_s)
    yield serve
    assert serve.stop() == 0


def start_serve(workdir: Path, fast: bool, limits: dict[str, Any] | None = None) -> Serve:
    """A serve with the broadcast fast path on or off (-v: its DEBUG lines count the direct writes)."""
    data = hourly_data()  # only the start-up run; the test publishes its own lists
    data['server']['fast_path'] = fast
    if limits:
        data['limits'] = limits
    workdir.mkdir(parents=True, exist_ok=True)
    return serve_in(workdir, data, global_args=('-v',))


def fast_and_plain(root: Path) -> Iterator[dict[bool, Serve]]:
    """A serve with the fast path and one without, for a module's tests; both stop cleanly at the end."""
    started = {fast: start_serve(root / ('fast' if fast else 'plain'), fast) for fast in (True, False)}
    yield started
    for serve in started.values():
        assert serve.stop() == 0


def redis_of(serve: Serve) -> redis.Redis:
    """A client of the embedded Redis a serve started (in its workdir)."""
    (instance,) = running(serve.workdir / '.gamelist', serve.config)
    return redis.Redis.from_url(instance.redis_url)


# -- a list the tests publish themselves -------------------------------------------------------------------------

MARKER = 'wire-identity'
# non-ASCII of every width: json.dumps escapes it (\u043f..., a surrogate pair for the die), on both paths
GAME_NAME = 'Покер ♠ café 🎲 ' + MARKER


def fixed_list(version: int) -> dict[str, Any]:
    """A list of 20 games named GAME_NAME (each frame that carries it has MARKER), with the version given."""
    game = {**CONTRACT_GAME, 'game_id': 'game_1', 'game_name': GAME_NAME}
    return {
        'gamelist': [dict(game, game_id=f'game_{i}') for i in range(20)],
        'updated_at': '2024-01-01T12:00:00.000000Z',
        'cache_duration': '300 seconds',
        'total_games': 20,
        'active_games': 20,
        'total_players': 300000,
        'version': version,
    }


def publish_live_list(serve: Serve, version: int, updated_at: str | None = None) -> None:
    """A list with the test's marker, written now: every serve process keeps it in memory for main:screen."""
    data = fixed_list(version)
    data['updated_at'] = updated_at or utc_now_iso()
    client = redis_of(serve)
    try:
        client.set('gamelist:current', json.dumps(data), ex=300)
        client.publish('gamelist:updates', json.dumps({'list': 'current', 'data': data}))
    finally:
        client.close()


def metric(serve: Serve, name: str, labels: str = '') -> float:
    """One sample of serve's /metrics (all workers added up), 0 when it is not there yet: metric(s, 'x_total', '{a="b"}')."""
    with urllib.request.urlopen(f'{serve.url}/metrics', timeout=5) as response:
        text = response.read().decode()
    found = re.search(rf'^{re.escape(name + labels)} (\S+)$', text, re.MULTILINE)
    return float(found.group(1)) if found else 0.0


def schedule_runs(serve: Serve, schedule: str = 'refresh-current', result: str = 'success') -> float:
    """Runs of a schedule /metrics counts, per result (success, failure): >= 1 once the start-up tick is written."""
    return metric(serve, 'gamelist_schedule_runs_total', f'{{result="{result}",schedule="{schedule}"}}')
