"""create_app(settings, redis_url) -> App: the one place that wires Sanic, Socket.IO, Redis and the scheduler."""

from __future__ import annotations

import asyncio
import logging
from types import SimpleNamespace
from typing import Any

from sanic import Sanic
from sanic.config import Config

from . import routes
from .exceptions import GamelistError
from .service import GamelistService
from .sockets import GamelistServer, create_server, emit_to_namespace
from .store import Store, redact_url

logger = logging.getLogger('gamelist_service.app')

# Socket.IO is hosted by Sanic's own server (python-engineio's 'sanic' driver); see the README's design notes.
ASYNC_MODE = 'sanic'
App = Sanic[Config, SimpleNamespace]
MAX_REQUEST_BYTES = 1024 * 1024


def create_app(settings: Any, redis_url: str, *, name: str = 'gamelist_service', schedules: bool = True) -> App:
    """The Sanic app with Socket.IO attached; Redis and the scheduler start and stop with the server."""
    app: App = Sanic(name, configure_logging=False)
    app.config.ACCESS_LOG = False
    app.config.REQUEST_MAX_SIZE = MAX_REQUEST_BYTES
    # Engine.IO already pings every client; Sanic's own WebSocket keepalive would double that work.
    app.config.update({'WEBSOCKET_PING_INTERVAL': None})
    app.config.WEBSOCKET_MAX_SIZE = settings.server.max_http_buffer_size
    app.config.GRACEFUL_SHUTDOWN_TIMEOUT = 3.0

    store = Store(redis_url)
    sio: GamelistServer | None = None

    async def emit(event: str, data: dict[str, Any], namespace: str) -> int:
        assert sio is not None
        return await emit_to_namespace(sio, event, data, namespace)

    service = GamelistService(settings, store, emit)
    sio = create_server(service, ASYNC_MODE)
    sio.attach(app)
    app.ctx.settings = settings
    app.ctx.store = store
    app.ctx.service = service
    app.ctx.sio = sio
    app.blueprint(routes.bp)
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
        service.start(schedules=schedules)
        logger.info(
            'gamelist-service listening on http://%s:%d (namespaces %s)',
            settings.server.host,
            settings.server.port,
            ', '.join(ns.name for ns in settings.namespaces),
        )

    @app.before_server_stop
    async def stop(app: App) -> None:
        logger.info('stopping: scheduler, updates listener, %d Socket.IO connections', len(sio.eio.sockets))
        await service.stop()
        await sio.shutdown()

    @app.after_server_stop
    async def close(app: App) -> None:
        await store.close()
        # engine.io leaves per-connection ping tasks behind; end them before Sanic closes the loop
        leftovers = [task for task in asyncio.all_tasks() if task is not asyncio.current_task()]
        for task in leftovers:
            task.cancel()
        await asyncio.gather(*leftovers, return_exceptions=True)
        logger.info('gamelist-service stopped')

    return app
