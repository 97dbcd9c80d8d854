"""Fixtures: a private redis-server per session (never the user's 6379), a flushed client per test, serve runners."""

from __future__ import annotations

import logging
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import pytest
import redis
from redis.asyncio import Redis

from gamelist_service.logs import default_log_config
from gamelist_service.storage.embedded import EmbeddedRedis, find_redis_server

ROOT = Path(__file__).resolve().parent.parent
SHIPPED_CONFIG = ROOT / 'config' / 'games.yaml'


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(('127.0.0.1', 0))
        port: int = sock.getsockname()[1]
        return port


def wait_for_ping(client: redis.Redis, timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if client.ping():
                return
        except (redis.ConnectionError, OSError):
            time.sleep(0.05)
    raise TimeoutError('redis-server did not answer')


class RedisServer:
    """A real redis-server on a free loopback port, started and stopped by the tests that own it."""

    def __init__(self, directory: Path, *extra: str) -> None:
        self.port = free_port()
        self.directory = directory
        self.extra = extra
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f'redis://127.0.0.1:{self.port}/0'

    def start(self) -> None:
        self.process = subprocess.Popen(
            [
                find_redis_server(),
                '--port',
                str(self.port),
                '--bind',
                '127.0.0.1',
                '--save',
                '',
                '--appendonly',
                'no',
                '--dir',
                str(self.directory),
                *self.extra,
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        password = self.extra[self.extra.index('--requirepass') + 1] if '--requirepass' in self.extra else None
        client = redis.Redis(port=self.port, password=password, socket_connect_timeout=0.5)
        try:
            wait_for_ping(client)
        finally:
            client.close()

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(10)
        self.process = None


@pytest.fixture(scope='session')
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path_factory.mktemp('redis'))
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope='session')
def redis_url(redis_server: RedisServer) -> str:
    return redis_server.url


@pytest.fixture
async def redis_client(redis_url: str) -> AsyncIterator[Redis]:
    client = Redis.from_url(redis_url)
    await client.flushdb()
    yield client
    await client.aclose()


@pytest.fixture(scope='session', autouse=True)
def no_serve_left_behind() -> Iterator[None]:
    """A test cut short by its timeout may not reach its own cleanup: end its serve processes here (by PID)."""
    from .helpers import Serve  # noqa: PLC0415

    yield
    for serve in Serve.started:
        if serve.process is not None and serve.process.poll() is None:
            serve.process.send_signal(signal.SIGCONT)
            serve.stop()


@pytest.fixture
def flushed(redis_url: str) -> Iterator[redis.Redis]:
    """A synchronous client of the session Redis, emptied for this test."""
    client = redis.Redis.from_url(redis_url)
    client.flushdb()
    yield client
    client.close()


@pytest.fixture
def restore_logging() -> Iterator[None]:
    """main() configures logging for the process; put it back so later tests see pytest's own handlers."""
    loggers = [logging.getLogger(name) for name in ('', *default_log_config()['loggers'])]
    saved = [(logger, logger.handlers[:], logger.level, logger.propagate) for logger in loggers]
    yield
    for logger, handlers, level, propagate in saved:
        logger.handlers[:] = handlers
        logger.setLevel(level)
        logger.propagate = propagate


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """No GAMELIST_* variables from the developer's shell leak into a test."""
    for name in list(os.environ):
        if name.startswith('GAMELIST_'):
            monkeypatch.delenv(name)


def cli_command(*args: str) -> list[str]:
    return [sys.executable, '-m', 'gamelist_service', *args]


@pytest.fixture
def make_embedded() -> Iterator[Callable[..., EmbeddedRedis]]:
    """EmbeddedRedis objects that are stopped after the test, whatever happened in it."""
    made: list[EmbeddedRedis] = []

    def make(directory: Path, **kwargs: object) -> EmbeddedRedis:
        server = EmbeddedRedis(directory, **kwargs)  # type: ignore[arg-type]
        made.append(server)
        return server

    yield make
    for server in made:
        server.stop()
