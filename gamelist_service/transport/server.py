"""The python-socketio server class, with the few overrides of its private methods the service needs.

- `_handle_event_internal`: handlers learn whether the client asked for an ack (main:screen answers through the ack,
  or as an emit to that client only);
- `_handle_eio_connect`: sessions counted per client address (limits), refused at twice the cap, and a deadline to
  join a namespace (Node's connectTimeout);
- `_handle_eio_disconnect`: the session's bookkeeping released, and its websocket still upgrading closed with it;
- `_handle_connect`: an unknown namespace gets a connect_error object, as protocol v5 wants.

compat.py lists these (and what the rest of transport/ uses); create_server() uses socketio.AsyncServer itself,
logged, when one is missing, and the limits then apply at the namespaces only.
"""

from __future__ import annotations

import asyncio
import base64
import contextvars
import logging
import os
from collections.abc import Coroutine
from typing import Any

import socketio
from engineio import packet as eio_packet
from socketio import packet as sio_packet

from ..errors import TOO_MANY_CONNECTIONS
from ..metrics import NAMESPACE_CONNECTS
from . import guards
from .types import Limiter

logger = logging.getLogger('gamelist_service.transport.server')

# True while a handler runs for an event that carries an ack id (the client passed a callback).
_ack_requested: contextvars.ContextVar[bool] = contextvars.ContextVar('ack_requested', default=False)
CLOSE_GRACE_S = 1.0  # after the namespace disconnects: time for the client to close its Engine.IO session itself
POLICY_VIOLATION = 1008  # websocket close code
_CONNECT_HANDLER = NAMESPACE_CONNECTS.labels('handler')


def check() -> list[str]:
    """What the server class needs of python-socketio and this environment lacks; empty when it can run."""
    missing: list[str] = []
    try:
        sio = socketio.AsyncServer(async_mode='asgi', logger=False, engineio_logger=False)
        for name in ('environ', 'manager', 'eio', 'namespace_handlers', 'handlers', 'reason', 'packet_class'):
            if not hasattr(sio, name):
                missing.append(f'socketio.AsyncServer().{name}')
        if not hasattr(sio.reason, 'TRANSPORT_CLOSE') or not hasattr(sio.eio.reason, 'SERVER_DISCONNECT'):
            missing.append('socketio/engineio reason.TRANSPORT_CLOSE, SERVER_DISCONNECT')
    except Exception as exc:  # noqa: BLE001 - any failure of the probe means: do not rely on it
        missing.append(f'probe failed: {type(exc).__name__}: {exc}')
    return missing


def ack_requested() -> bool:
    """True inside an event handler whose client asked for an ack."""
    return _ack_requested.get()


class SessionIds:
    """Engine.IO and Socket.IO session ids as python-engineio makes them (12 random bytes and a 3-byte sequence
    number, URL-safe base64: 20 characters), with the random bytes drawn from os.urandom 4 KB at a time instead of
    one system call per id: a connect storm made three per client.

    With an owner (a worker's pid, under 2**24), the last 3 bytes are the owner instead of a sequence number: the
    id names the worker that holds the session (handoff.py).
    """

    __slots__ = ('_at', '_owner', '_pool', '_sequence')

    _BATCH = 12 * 341

    def __init__(self, owner: int | None = None) -> None:
        self._pool = b''
        self._at = 0
        self._sequence = 0
        self._owner = None if owner is None else owner.to_bytes(3, 'big')

    def __call__(self) -> str:
        if self._at >= len(self._pool):
            self._pool, self._at = os.urandom(self._BATCH), 0
        random = self._pool[self._at : self._at + 12]
        self._at += 12
        tail = self._owner
        if tail is None:
            tail = self._sequence.to_bytes(3, 'big')
            self._sequence = (self._sequence + 1) & 0xFFFFFF
        return base64.urlsafe_b64encode(random + tail).decode('ascii')


class GamelistServer(socketio.AsyncServer):  # type: ignore[misc]
    """AsyncServer that lets handlers know whether the client asked for an ack, and counts sessions per address."""

    def __init__(self, *args: Any, limiter: Limiter, connect_timeout_s: float = 45.0, **kwargs: Any) -> None:
        self.limiter = limiter
        self.connect_timeout_s = connect_timeout_s
        self._connect_timers: dict[str, asyncio.TimerHandle] = {}  # eio sid -> its deadline to join a namespace
        self.gate = guards.Gate(self.limiter)
        self.closed_sessions = 0  # Engine.IO sessions ended so far (heap.HeapPolicy)
        self.screen_responder: Any = None  # screen.ScreenResponder
        self.lean_hub: Any = None  # lean.Hub
        self.users: dict[str, str] = {}  # eio sid -> the user_id its device:info named (one user per connection)
        self._closing: set[asyncio.Task[None]] = set()
        super().__init__(*args, **kwargs)
        self.eio.generate_id = SessionIds()  # the Engine.IO sid and each namespace's sid

    async def _handle_event_internal(
        self, server: socketio.AsyncServer, sid: str, eio_sid: str, data: Any, namespace: str, id: int | None
    ) -> None:
        token = _ack_requested.set(id is not None)
        try:
            await super()._handle_event_internal(server, sid, eio_sid, data, namespace, id)
        finally:
            _ack_requested.reset(token)

    async def _handle_eio_connect(self, eio_sid: str, environ: dict[str, Any]) -> Any:
        ip = self.limiter.client_ip(environ)
        if self.limiter.refuse_handshake(ip):
            logger.warning('refused a connection from %s: it holds too many already', ip)
            return {'message': TOO_MANY_CONNECTIONS}  # Engine.IO answers 401 with this body
        self.limiter.opened(eio_sid, ip)
        loop = asyncio.get_running_loop()
        self._connect_timers[eio_sid] = loop.call_later(self.connect_timeout_s, self._connect_timeout, eio_sid)
        return await super()._handle_eio_connect(eio_sid, environ)

    def joined(self, eio_sid: str) -> None:
        """The session joined a namespace: its connect timeout no longer applies."""
        timer = self._connect_timers.pop(eio_sid, None)
        if timer is not None:
            timer.cancel()

    def _connect_timeout(self, eio_sid: str) -> None:
        """As Node's socket.io (connectTimeout): a session that joined no namespace in time is closed."""
        self._connect_timers.pop(eio_sid, None)
        logger.debug('closing session %s: it joined no namespace within %gs', eio_sid, self.connect_timeout_s)
        self._spawn(self.end_session(eio_sid, 1000, 'connect timeout'))

    async def _handle_connect(self, eio_sid: str, namespace: str | None, data: Any) -> None:
        namespace = namespace or '/'
        if namespace not in self.namespace_handlers and namespace not in self.handlers:
            # protocol v5: a connect_error carries an object (python-socketio sends the text 'Unable to connect')
            error = self.packet_class(
                sio_packet.CONNECT_ERROR, data={'message': 'Invalid namespace'}, namespace=namespace
            )
            await self._send_packet(eio_sid, error)
            return
        _CONNECT_HANDLER.inc()
        await super()._handle_connect(eio_sid, namespace, data)
        # the CONNECT packet is out: what the namespace sends a new client now follows it (no task for it)
        after = getattr(self.namespace_handlers.get(namespace), 'after_connect', None)
        if after is not None:
            sid = self.manager.sid_from_eio_sid(eio_sid, namespace)
            if sid is not None and self.manager.is_connected(sid, namespace):
                await after(sid)

    async def _handle_eio_disconnect(self, eio_sid: str, reason: Any = None) -> None:
        try:
            await super()._handle_eio_disconnect(eio_sid, reason)
        finally:
            self.limiter.closed(eio_sid)
            self.users.pop(eio_sid, None)
            self.joined(eio_sid)
            self.closed_sessions += 1
            if self.lean_hub is not None:
                self.lean_hub.session_ended(eio_sid)  # an upgrade still in progress ends with its session

    async def refuse(self, eio_sid: str, refusal: guards.Refusal) -> None:
        """A packet the gate refused (not on a lean connection: those act in their receive callback)."""
        if refusal.reply is not None:
            await self.eio.send(eio_sid, refusal.reply)
        if refusal.drop is not None:
            await guards.drop(self, eio_sid, refusal.drop)
        elif refusal.disconnect:
            await self.disconnect_connection(eio_sid)

    def refuse_soon(self, eio_sid: str, refusal: guards.Refusal) -> None:
        """For a lean connection, which wrote the reply itself: disconnect it, from a task."""
        if refusal.disconnect:
            self._spawn(self.disconnect_connection(eio_sid))

    def connect_refused(self, eio_sid: str) -> None:
        """A namespace refused this session's connect: after limits.max_refused_connects, the session is closed."""
        if eio_sid in self.eio.sockets and self.limiter.connect_refused(eio_sid):
            logger.warning('closing session %s: %d namespace connects refused', eio_sid, self.limiter.refused[eio_sid])
            conn = getattr(self.eio.sockets[eio_sid], 'lean', None)
            if conn is not None:
                conn.close_soon(POLICY_VIOLATION, 'too many refused connects')  # the rest of its read is dropped
            else:
                self._spawn(self.end_session(eio_sid, POLICY_VIOLATION, 'too many refused connects'))

    async def end_session(self, eio_sid: str, code: int, why: str) -> None:
        """Close a client's Engine.IO session as a transport close, which socket.io clients reconnect after: a close
        frame with code and why on a lean websocket; on polling, the pending poll ends (NOOP) and the next gets 400."""
        sock = self.eio.sockets.get(eio_sid)
        if sock is None or sock.closing or sock.closed:
            return
        conn = getattr(sock, 'lean', None)
        if conn is not None:
            conn.close(code, why)  # its connection_lost ends the session
            return
        sock.queue.put_nowait(eio_packet.Packet(eio_packet.NOOP))
        await sock.close(wait=False, abort=True, reason=self.eio.reason.SERVER_DISCONNECT)

    async def disconnect_connection(self, eio_sid: str) -> None:
        """Disconnect a client from every namespace (it sees each disconnect), then close its session if it stays."""
        for namespace in list(self.manager.get_namespaces()):
            sid = self.manager.sid_from_eio_sid(eio_sid, namespace)
            if sid is not None and self.manager.is_connected(sid, namespace):
                await self.disconnect(sid, namespace=namespace)
        self._spawn(self._close_later(eio_sid))

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)

    async def _close_later(self, eio_sid: str) -> None:
        await asyncio.sleep(CLOSE_GRACE_S)
        if eio_sid in self.eio.sockets:
            try:
                await asyncio.wait_for(self.eio.disconnect(eio_sid), CLOSE_GRACE_S * 5)
            except Exception as exc:  # noqa: BLE001 - a background task: log, never raise into the loop
                logger.info('closing the session of a client over its limit: %s', exc)
