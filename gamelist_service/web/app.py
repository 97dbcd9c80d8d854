"""create_app(settings, redis_url) -> App: the one place that wires Sanic, Socket.IO, Redis and the scheduler."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
from types import SimpleNamespace
from typing import Any

from sanic import Sanic
from sanic.config import Config

from .. import metrics, transport
from ..config.reload import Launch, ReloadStatus, load_for_reload
from ..config.settings import Settings
from ..core.service import GamelistService
from ..errors import GamelistError
from ..storage.store import Store, redact_url
from ..transport import GamelistServer
from . import lists_api, page, routes, stalls
from .sockets import ClientSummary, GameNamespace, apply_namespaces, create_server, emit_to_namespace

logger = logging.getLogger('gamelist_service.web.app')

# Socket.IO is hosted by Sanic's own server (python-engineio's 'sanic' driver); see the README's design notes.
ASYNC_MODE = 'sanic'
App = Sanic[Config, SimpleNamespace]
MAX_REQUEST_BYTES = 1024 * 1024
STOP_TIMEOUT_S = 3.0


def create_app(
    settings: Settings,
    redis_url: str,
    *,
    name: str = 'gamelist_service',
    schedules: bool = True,
    launch: Launch | None = None,
) -> App:
    """The Sanic app with Socket.IO attached; Redis and the scheduler start and stop with the server.

    :param launch: how serve was started; SIGHUP reloads the configuration with it.
    """
    app: App = Sanic(name, configure_logging=False)
    app.config.ACCESS_LOG = False
    app.config.REQUEST_MAX_SIZE = MAX_REQUEST_BYTES
    # Engine.IO already pings every client; Sanic's own WebSocket keepalive would double that work.
    app.config.update({'WEBSOCKET_PING_INTERVAL': None})
    app.config.WEBSOCKET_MAX_SIZE = settings.server.max_http_buffer_size
    app.config.GRACEFUL_SHUTDOWN_TIMEOUT = 3.0
    # Sanic's request timeout restarts with every chunk; httpproto bounds the whole head. This one sets how often
    # each connection's timeouts are checked (half the smallest timeout).
    app.config.update({'REQUEST_TIMEOUT': settings.server.handshake_timeout_s})

    store = Store(redis_url)
    store.on_error = lambda operation: metrics.REDIS_ERRORS.labels(operation).inc()
    links: dict[str, Any] = {}  # the server and its transport, for the service's callbacks

    async def emit(event: str, data: dict[str, Any], namespace: str) -> int:
        return await emit_to_namespace(links['sio'], event, data, namespace)

    async def all_written() -> None:
        await links['transport'].written()

    service = GamelistService(settings, store, emit, written=all_written)
    sio = create_server(service, ASYNC_MODE)
    # guards (every packet counted and screened where it arrives), and the fast path when server.fast_path says so
    several = launch is not None and launch.workers > 1  # a session's requests may land on any worker: handed over
    wired = transport.install(
        sio,
        app,
        service,
        GameNamespace,
        handoff_port=settings.server.port if several else None,
        deflate_threshold=settings.server.compression_threshold if settings.server.compression else None,
    )
    links.update(sio=sio, transport=wired)
    sio.attach(app)
    app.ctx.settings = settings
    app.ctx.store = store
    app.ctx.service = service
    app.ctx.sio = sio
    app.ctx.transport = wired
    app.ctx.reload_status = ReloadStatus(digest=settings.digest)
    app.ctx.reload_lock = asyncio.Lock()
    app.blueprint(routes.bp)
    app.blueprint(lists_api.bp)
    app.blueprint(page.bp)
    app.error_handler.add(Exception, routes.error_response)

    @app.before_server_start
    async def start(app: App) -> None:
        try:
            latency = await store.ping()
            info = await store.server_info()
            logger.info(
                'Redis %s at %s answers (%.2f ms)',
                info.get('redis_version', '?'),
                redact_url(redis_url),
                latency * 1000,
            )
        except GamelistError as exc:
            logger.error('%s; the service keeps running and retries (see /ready)', exc)
        status: ReloadStatus = app.ctx.reload_status
        metrics.config_loaded(status.generation, status.digest, status.loaded_at)
        service.start(schedules=schedules)
        wired.start(lambda: sio.closed_sessions)
        loop = asyncio.get_running_loop()
        app.ctx.summary_task = loop.create_task(ClientSummary(sio).run())
        app.ctx.stall_task = loop.create_task(stalls.watch())
        if launch is not None:
            loop.add_signal_handler(signal.SIGHUP, lambda: _spawn_reload(app, launch))
        logger.info(
            'gamelist-service listening on http://%s:%d (namespaces %s)',
            settings.server.host,
            settings.server.port,
            ', '.join(ns.name for ns in settings.namespaces),
        )

    @app.before_server_stop
    async def stop(app: App) -> None:
        # Sanic may run this hook twice on uvloop (its first run_until_complete after stop() can abort), so the
        # work happens once, in one task that a second call simply waits for.
        if getattr(app.ctx, 'stopping', None) is None:
            app.ctx.stopping = asyncio.get_running_loop().create_task(_stop_service(app, service, sio))
        await asyncio.shield(app.ctx.stopping)

    @app.after_server_stop
    async def close(app: App) -> None:
        await store.close()
        metrics.mark_process_dead(os.getpid())
        # engine.io leaves per-connection ping tasks behind; end them before Sanic closes the loop, within bounds
        leftovers = [task for task in asyncio.all_tasks() if task is not asyncio.current_task()]
        for task in leftovers:
            task.cancel()
        if leftovers:
            await asyncio.wait(leftovers, timeout=STOP_TIMEOUT_S)
        logger.info('gamelist-service stopped')

    return app


async def _stop_service(app: App, service: GamelistService, sio: GamelistServer) -> None:
    logger.info('stopping: scheduler, updates listener, %d Socket.IO connections', len(sio.eio.sockets))
    wired: transport.Transport = app.ctx.transport
    for name in ('summary_task', 'stall_task'):
        task: asyncio.Task[None] | None = getattr(app.ctx, name, None)
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
    await wired.stop()
    try:
        await asyncio.wait_for(service.stop(), STOP_TIMEOUT_S)
    except TimeoutError:
        logger.warning('scheduler and listener did not stop within %.0fs; going on', STOP_TIMEOUT_S)
    await wired.close_all(timeout_s=STOP_TIMEOUT_S)  # Sanic closes the websockets it runs itself
    await sio.shutdown()


_reloads: set[asyncio.Task[bool]] = set()


def _spawn_reload(app: App, launch: Launch) -> None:
    task = asyncio.get_running_loop().create_task(reload_app(app, launch))
    _reloads.add(task)
    task.add_done_callback(_reloads.discard)


async def reload_app(app: App, launch: Launch) -> bool:
    """SIGHUP: re-read and validate the file; apply it if valid, else keep running as before. Never raises."""
    service: GamelistService = app.ctx.service
    status: ReloadStatus = app.ctx.reload_status
    async with app.ctx.reload_lock:  # SIGHUPs in a burst apply one after another
        logger.info('SIGHUP: reloading %s', launch.config)
        old_digest = status.digest
        try:
            new = await asyncio.to_thread(load_for_reload, service.settings, launch, status)
        except Exception:  # a reload must never take the service down
            logger.exception('reload failed unexpectedly; still running generation %d', status.generation)
            status.last_attempt_ok = False
            metrics.RELOAD_SUCCESS.set(0)
            return False
        if new is None:
            metrics.RELOAD_SUCCESS.set(0)
            return False
        apply_namespaces(app.ctx.sio, service, new.namespaces)
        changes = service.apply(new)
        app.ctx.settings = new
        metrics.config_loaded(status.generation, status.digest, status.loaded_at, previous_digest=old_digest)
        logger.info(
            'reload applied: generation %d (sha256 %s); schedules %s',
            status.generation,
            status.digest[:12],
            ', '.join(f'{kind} {names}' for kind, names in changes.items() if names) or 'unchanged (not leading)',
        )
        return True
