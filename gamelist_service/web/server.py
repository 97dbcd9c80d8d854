"""serve: claim the instance directory, start the embedded Redis if asked, run Sanic, then undo it all in order."""

from __future__ import annotations

import contextlib
import ctypes
import json
import logging
import os
import shutil
import signal
import socket
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Any

from sanic import Sanic
from sanic.worker.loader import AppLoader

from ..config.reload import Launch
from ..errors import EmbeddedRedisError
from ..logs import setup_logging
from ..storage import instances
from ..storage.embedded import EmbeddedRedis, Supervisor
from . import forking
from .limits import raise_file_limit, socket_ceiling

if TYPE_CHECKING:
    from .app import App

logger = logging.getLogger('gamelist_service.web.server')

METRICS_DIR_ENV = 'PROMETHEUS_MULTIPROC_DIR'
SOMAXCONN = Path('/proc/sys/net/core/somaxconn')
_WORKER_ENV = 'GAMELIST_WORKER_LAUNCH'  # how worker processes learn what the main process resolved


def serve(launch: Launch) -> int:
    """Run until SIGINT or SIGTERM; returns the exit code."""
    # SIGHUP's default action is to exit: until the service can reload, an early `systemctl reload` is ignored.
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    settings = launch.load()
    server = settings.server
    directory = instances.claim(settings.redis.state_dir, server.port, settings.source)
    embedded: EmbeddedRedis | None = None
    supervisor: Supervisor | None = None
    metrics_server: Any = None
    try:
        if settings.redis.embedded:
            embedded = EmbeddedRedis(
                directory,
                persistence=settings.redis.persistence,
                maxmemory=settings.redis.maxmemory,
                maxmemory_policy=settings.redis.maxmemory_policy,
            )
            redis_url = embedded.start()
            # if it dies it is restarted on the same socket; if it keeps dying, serve stops (SIGTERM to itself)
            supervisor = Supervisor(embedded, on_give_up=lambda: os.kill(os.getpid(), signal.SIGTERM))
            supervisor.start()
        else:
            redis_url = settings.redis.url
        instances.publish(directory, server.port, settings.source, redis_url)
        before, limit = raise_file_limit()
        room = socket_ceiling()
        logger.info(
            'open files: %d per process%s; each process holds at most %s client sockets%s, then answers new ones 503',
            limit,
            f' (raised from {before}, the hard limit)' if limit != before else '',
            room or 'unlimited',
            f' ({launch.workers * room} with {launch.workers} workers)' if launch.workers > 1 and room else '',
        )
        if launch.workers > 1:  # one process needs no shared directory (and its mmap on every update)
            _prepare_metrics_dir(directory / 'metrics')
        # after the metrics directory is set: prometheus-client reads it on import (transport/ imports metrics),
        # and the workers forked from this process inherit it as imported here (web/forking.py)
        from .. import metrics, transport  # noqa: PLC0415
        from .app import create_app  # noqa: PLC0415

        run_kwargs: dict[str, Any] = {
            'host': server.host,
            'port': server.port,
            'motd': False,
            'access_log': False,
            'auto_reload': False,
            'debug': False,
            'backlog': listen_backlog(server.backlog),
            'protocol': transport.http_protocol(),
        }
        if server.metrics_listen is not None:
            metrics_server = metrics.serve_on(*server.metrics_listen)
            logger.info('metrics on http://%s:%d/metrics', *server.metrics_listen)
        if launch.workers == 1:
            app = create_app(settings, redis_url, launch=launch)
            app.run(single_process=True, **run_kwargs)
        else:
            _serve_workers(launch, redis_url, run_kwargs, reuse_port=server.reuse_port)
    finally:
        if metrics_server is not None:
            metrics_server.shutdown()
        if supervisor is not None:
            supervisor.stop()
        if embedded is not None:
            embedded.stop()
        instances.release(directory)
    if supervisor is not None and supervisor.failure:
        raise EmbeddedRedisError(supervisor.failure)
    return 0


def listen_backlog(wanted: int, somaxconn_path: Path = SOMAXCONN) -> int:
    """The backlog to ask for; says so (once, at start) when the kernel will cap it at net.core.somaxconn."""
    try:
        cap = int(somaxconn_path.read_text().strip())
    except (OSError, ValueError):
        return wanted
    if cap < wanted:
        logger.warning(
            'server.backlog is %d but the kernel caps it at net.core.somaxconn = %d: a storm of more connects than '
            'that at once waits for SYN retries (raise it with: sysctl -w net.core.somaxconn=%d)',
            wanted,
            cap,
            wanted,
        )
    return wanted


def _prepare_metrics_dir(directory: Path) -> None:
    """Every process of this instance writes its metrics here (prometheus-client's multiprocess mode)."""
    shutil.rmtree(directory, ignore_errors=True)
    directory.mkdir(parents=True)
    os.environ[METRICS_DIR_ENV] = str(directory)


def _listener(launch: Launch, run_kwargs: dict[str, Any], reuse_port: bool) -> socket.socket | None:
    """The main process's socket when each worker is to listen on a socket of its own (transport/reuseport.py);
    None: Sanic binds the one socket every worker accepts from."""
    if not reuse_port:
        logger.info('server.reuse_port is false: the %d workers share one listening socket', launch.workers)
        return None
    from ..transport import reuseport  # noqa: PLC0415 - see serve()

    reason = reuseport.unavailable()
    if reason is not None:
        logger.warning(
            'SO_REUSEPORT unavailable (%s): the %d workers share one listening socket, and each new connection goes '
            'to whichever accepts first',
            reason,
            launch.workers,
        )
        return None
    sock = reuseport.bind_main(run_kwargs['host'], run_kwargs['port'])
    logger.info(
        'each of the %d workers listens on a socket of its own (SO_REUSEPORT): the kernel spreads new connections '
        'evenly over them',
        launch.workers,
    )
    return sock


def _serve_workers(launch: Launch, redis_url: str, run_kwargs: dict[str, Any], *, reuse_port: bool) -> None:
    """N Sanic worker processes; this main process forwards SIGHUP to them, each reloads itself."""
    listener = _listener(launch, run_kwargs, reuse_port)
    os.environ[_WORKER_ENV] = json.dumps(
        {
            'config': str(launch.config),
            'env': dict(launch.env),
            'host': launch.host,
            'workers': launch.workers,
            'verbose': launch.verbose,
            'log_format': launch.log_format,
            'redis_url': redis_url,
            'main_pid': os.getpid(),
            'listen': listener.getsockname() if listener is not None else None,
        }
    )
    if listener is not None:
        run_kwargs = {**run_kwargs, 'sock': listener}
    try:
        _run_workers(launch, run_kwargs)
    finally:
        if listener is not None:
            listener.close()  # Sanic closed it too; this is for a failure before Sanic had it


def _run_workers(launch: Launch, run_kwargs: dict[str, Any]) -> None:
    logger.info('starting %d worker processes', launch.workers)
    loader = AppLoader(factory=worker_app)
    app = loader.load()

    @app.main_process_ready
    async def forward_sighup(app: App, _: Any) -> None:
        def forward(signum: int, frame: FrameType | None) -> None:
            pids = [process.pid for process in app.manager.processes if process.name.startswith('Sanic-Server')]
            logger.info('SIGHUP: asking %d workers to reload', len(pids))
            for pid in pids:
                if pid:
                    os.kill(pid, signal.SIGHUP)

        signal.signal(signal.SIGHUP, forward)

    app.prepare(workers=launch.workers, **run_kwargs)
    forking.fork_workers()  # not spawned: the workers share what this process has imported and built
    try:
        Sanic.serve(primary=app, app_loader=loader)
    except (BrokenPipeError, ConnectionResetError, EOFError) as exc:
        # Ctrl-C in a terminal reaches the whole process group, Sanic's state-sharing process included, which may
        # exit before the main process has finished stopping the workers; the workers have stopped by then.
        logger.info('worker manager gone while stopping (%s); workers stopped', type(exc).__name__)


def _die_with_parent() -> None:
    """A worker whose main process is killed (even with -9) stops too, instead of serving on alone (Linux)."""
    with contextlib.suppress(Exception):
        ctypes.CDLL('libc.so.6', use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def worker_app() -> App:
    """Factory Sanic calls in every worker process (and once in the main one)."""
    signal.signal(signal.SIGHUP, signal.SIG_IGN)  # until the worker's loop takes it over (a reload, not an exit)
    _die_with_parent()
    raw = json.loads(os.environ[_WORKER_ENV])
    if raw.get('main_pid') != os.getpid():
        forking.in_worker()
    launch = Launch(Path(raw['config']), raw['env'], raw['host'], raw['workers'], raw['verbose'], raw['log_format'])
    setup_logging(launch.verbose, launch.log_format)
    if raw.get('listen') and raw.get('main_pid') != os.getpid():  # a worker (the main process loads the app too)
        from ..transport import reuseport  # noqa: PLC0415 - see serve()

        why_not = reuseport.take_own(tuple(raw['listen']))
        if why_not is None:
            logger.debug('worker %d listens on a socket of its own', os.getpid())
        else:
            logger.warning(
                "worker %d listens on the main process's socket (%s); it has SO_REUSEPORT too: the spread holds",
                os.getpid(),
                why_not,
            )
    from .app import create_app  # noqa: PLC0415 - see serve()

    return create_app(launch.load(), raw['redis_url'], launch=launch)
