"""Socket.IO: the server class and one AsyncNamespace subclass per configured namespace."""

from __future__ import annotations

import asyncio
import contextvars
import json
import logging
from collections.abc import Iterable
from typing import Any

import jsonschema
import socketio

from . import fastpath, metrics
from .config import schema
from .exceptions import GamelistError
from .gamelist import MAIN_SCREEN_MESSAGE, envelope, utc_now_iso
from .service import GamelistService
from .settings import NamespaceSettings

logger = logging.getLogger('gamelist_service.sockets')

DEVICE_INFO_SCHEMA = 'device_info.schema.json'
DEVICE_INFO_MAX_BYTES = 4096
DEFAULT_TRANSPORTS = ('polling', 'websocket')

# True while a handler runs for an event that carries an ack id (the client passed a callback).
_ack_requested: contextvars.ContextVar[bool] = contextvars.ContextVar('ack_requested', default=False)


class GamelistServer(socketio.AsyncServer):  # type: ignore[misc]
    """AsyncServer that lets handlers know whether the client asked for an ack."""

    async def _handle_event_internal(
        self, server: socketio.AsyncServer, sid: str, eio_sid: str, data: Any, namespace: str, id: int | None
    ) -> None:
        token = _ack_requested.set(id is not None)
        try:
            await super()._handle_event_internal(server, sid, eio_sid, data, namespace, id)
        finally:
            _ack_requested.reset(token)


def error_ack(message: str) -> dict[str, str]:
    return {'status': 'error', 'message': message}


class GameNamespace(socketio.AsyncNamespace):  # type: ignore[misc]
    """Handlers of one namespace: main:screen, device:info, and the connect-time list."""

    def __init__(self, settings: NamespaceSettings, service: GamelistService) -> None:
        super().__init__(settings.name)
        self.settings = settings
        self.service = service
        self.clients: set[str] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self._device_validator = jsonschema.Draft202012Validator(schema(DEVICE_INFO_SCHEMA))
        self._known_device_fields = frozenset(schema(DEVICE_INFO_SCHEMA)['properties'])

    async def trigger_event(self, event: str, *args: Any) -> Any:
        """Route 'main:screen' to on_main_screen; unknown events get an error ack; no exception reaches the client."""
        handler = getattr(self, 'on_' + event.replace(':', '_'), None) if isinstance(event, str) else None
        if handler is None or event.startswith('_') or '__' in event:
            logger.info('unknown event %r from %s on %s', event, args[0] if args else '?', self.namespace)
            return error_ack(f'unknown event {str(event)[:64]!r}')
        try:
            return await handler(*args)
        except socketio.exceptions.ConnectionRefusedError:
            raise
        except GamelistError as exc:
            logger.error('event %s on %s failed: %s', event, self.namespace, exc)
            return error_ack(exc.message if exc.status_code < 500 else 'the game list is unavailable right now')
        except Exception:
            logger.exception('event %s on %s failed unexpectedly', event, self.namespace)
            return error_ack('internal error')

    async def on_connect(self, sid: str, environ: dict[str, Any], auth: Any = None) -> bool:
        self.clients.add(sid)
        metrics.CONNECTED_CLIENTS.labels(self.namespace).inc()
        since = auth.get('since') if isinstance(auth, dict) else None
        logger.info('client %s connected to %s (%d clients)', sid, self.namespace, len(self.clients))
        if self.settings.send_list_on_connect or (isinstance(since, int) and not isinstance(since, bool)):
            # after this handler returns, so the list follows the CONNECT packet
            task = asyncio.get_running_loop().create_task(self._send_current(sid, since))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        return True

    async def on_disconnect(self, sid: str, reason: str | None = None) -> None:
        if sid in self.clients:
            self.clients.discard(sid)
            metrics.CONNECTED_CLIENTS.labels(self.namespace).dec()
        logger.info('client %s left %s (%s; %d clients)', sid, self.namespace, reason, len(self.clients))

    async def _send_current(self, sid: str, since: int | None) -> None:
        try:
            lst = self.service.settings.get_list(self.settings.list)
            data = await self.service.current(lst.name)
            if since is not None and not self.settings.send_list_on_connect and int(data.get('version', 0)) == since:
                return
            await self.emit(lst.event, envelope(data, lst.event), to=sid)
        except Exception as exc:  # noqa: BLE001 - a background task: log, never raise into the loop
            logger.error('could not send the current list to %s on %s: %s', sid, self.namespace, exc)

    async def on_main_screen(self, sid: str, *args: Any) -> dict[str, Any] | None:
        data = await self.service.current(self.settings.list)
        reply = envelope(data, 'main:screen', MAIN_SCREEN_MESSAGE)
        if _ack_requested.get():
            return reply
        await self.emit('main:screen', reply, to=sid)
        return None

    async def on_device_info(self, sid: str, payload: Any = None, *extra: Any) -> dict[str, Any]:
        if extra:
            return error_ack('device:info takes one object')
        if not isinstance(payload, dict):
            return error_ack(f'device:info must be an object, not {_json_type(payload)}')
        size = len(json.dumps(payload, separators=(',', ':'), default=str).encode())
        if size > DEVICE_INFO_MAX_BYTES:
            return error_ack(f'device:info is {size} bytes; at most {DEVICE_INFO_MAX_BYTES} are accepted')
        known = {key: value for key, value in payload.items() if key in self._known_device_fields}
        ignored = sorted(str(key) for key in payload if key not in self._known_device_fields)
        errors = sorted(self._device_validator.iter_errors(known), key=lambda e: list(map(str, e.absolute_path)))
        if errors:
            first = errors[0]
            where = '.'.join(str(p) for p in first.absolute_path) or 'payload'
            return error_ack(f'{where}: {_short(first.message)}')
        settings = self.service.settings.redis
        session = {'session_id': sid, 'namespace': self.namespace, 'device': known, 'updated_at': utc_now_iso()}
        await self.service.store.save_session(sid, session, settings.session_ttl_s)
        if 'user_id' in known:
            user = {'user_id': known['user_id'], 'session_id': sid, 'device': known, 'last_seen': utc_now_iso()}
            await self.service.store.save_user(known['user_id'], user, settings.user_ttl_s)
        reply: dict[str, Any] = {'status': 'success'}
        if ignored:
            reply['ignored'] = ignored
        return reply


def _json_type(value: Any) -> str:
    return {
        list: 'an array',
        str: 'a string',
        int: 'a number',
        float: 'a number',
        bool: 'a boolean',
        type(None): 'null',
        bytes: 'binary data',
    }.get(type(value), type(value).__name__)


def _short(message: str, limit: int = 160) -> str:
    return message if len(message) <= limit else message[: limit - 3] + '...'


def create_server(service: GamelistService, async_mode: str) -> GamelistServer:
    """The AsyncServer with the config's CORS origins, transports and pings, and a namespace per config entry."""
    server = service.settings.server
    sio = GamelistServer(
        client_manager=fastpath.create_manager(server.fast_broadcast),
        async_mode=async_mode,
        cors_allowed_origins=list(server.cors_allowed_origins),
        transports=list(server.transports or DEFAULT_TRANSPORTS),
        ping_interval=server.ping_interval_s,
        ping_timeout=server.ping_timeout_s,
        max_http_buffer_size=server.max_http_buffer_size,
        logger=False,
        engineio_logger=False,
    )
    fastpath.install(sio)
    for ns in service.settings.namespaces:
        sio.register_namespace(GameNamespace(ns, service))
    return sio


def apply_namespaces(
    sio: socketio.AsyncServer, service: GamelistService, namespaces: Iterable[NamespaceSettings]
) -> None:
    """After a reload: existing namespaces take their new settings, new ones start accepting clients."""
    for ns in namespaces:
        handler = sio.namespace_handlers.get(ns.name)
        if isinstance(handler, GameNamespace):
            handler.settings = ns
        else:
            sio.register_namespace(GameNamespace(ns, service))
            logger.info('namespace %s added', ns.name)


async def emit_to_namespace(sio: socketio.AsyncServer, event: str, data: dict[str, Any], namespace: str) -> int:
    """Broadcast to every client of namespace in this process; returns how many there are."""
    handler = sio.namespace_handlers.get(namespace)
    count = len(handler.clients) if isinstance(handler, GameNamespace) else 0
    await sio.emit(event, data, namespace=namespace)
    return count
