"""Sanic's connection protocol with two guards: open sockets per client address, and a deadline for a request head.

- Every socket counts against its address (limits.ConnectionLimiter.socket_opened): an address holding twice
  limits.max_connections_per_ip sockets has its next one closed at once, before any byte is read. A socket a lean
  websocket takes over (lean.py) is released by that connection when it closes. Behind a trusted proxy
  (server.trust_forwarded_for) every socket comes from the proxy, so sockets are not counted there.
- The whole head of a request must arrive within server.handshake_timeout of its first byte. Sanic's own request
  timeout restarts with every chunk received, so a client trickling a header line every few seconds (slowloris) was
  never closed; here the clock starts at the request's first byte and is not reset.

Sanic takes the class through app.run(protocol=...). It relies on Sanic's HttpProtocol (its _http.stage, _task and
check_timeouts); check() verifies them at start, and serve uses Sanic's own class, logged, when one is missing.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import time
from typing import Any

from sanic.exceptions import RequestTimeout

from ..logs import RateLimitedLog

logger = logging.getLogger('gamelist_service.transport.httpproto')

try:  # internals: a rename leaves Sanic's own protocol class (check, compat.check), it does not stop the service
    from sanic.http.constants import Stage
    from sanic.server.protocols.websocket_protocol import WebSocketProtocol

    _IMPORT_ERROR: str | None = None
except ImportError as exc:  # pragma: no cover - only with other library versions
    WebSocketProtocol = object  # type: ignore[misc,assignment]
    _IMPORT_ERROR = f'{type(exc).__name__}: {exc}'

_refusals = RateLimitedLog(logger, interval_s=10.0)
_FULL_BODY = b'{"code":503,"message":"server full: no room for another connection"}'
_FULL = (
    b'HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\nRetry-After: 5\r\n'
    b'Content-Length: ' + str(len(_FULL_BODY)).encode() + b'\r\nConnection: close\r\n\r\n' + _FULL_BODY
)


def check() -> list[str]:
    """What the guards need of Sanic and this environment lacks; empty when they can run."""
    if _IMPORT_ERROR is not None:
        return [_IMPORT_ERROR]
    missing = [
        f'sanic HttpProtocol.{name}'
        for name in ('_http', '_task', 'transport', 'connections')
        if name not in {slot for klass in WebSocketProtocol.__mro__ for slot in getattr(klass, '__slots__', ())}
    ]
    for name in ('check_timeouts', 'connection_made', 'connection_lost', 'data_received'):
        if not callable(getattr(WebSocketProtocol, name, None)):
            missing.append(f'sanic WebSocketProtocol.{name}')
    for name in ('IDLE', 'REQUEST'):
        if not hasattr(Stage, name):
            missing.append(f'sanic Stage.{name}')
    return missing


class GuardedHttpProtocol(WebSocketProtocol):
    """Sanic's protocol, counting sockets per address and bounding the time a request head may take."""

    __slots__ = ('counted_ip', 'head_started', 'refused')
    factory_kwargs: dict[str, Any] | None = None  # what Sanic builds its connections with: adopt() does the same

    def __init__(self, **kwargs: Any) -> None:
        if GuardedHttpProtocol.factory_kwargs is None:
            GuardedHttpProtocol.factory_kwargs = kwargs
        super().__init__(**kwargs)

    def connection_made(self, transport: Any) -> None:
        self.counted_ip: str | None = None
        self.head_started: float | None = None
        self.refused = False
        ctx = self.app.ctx
        sio = getattr(ctx, 'sio', None)
        limiter = getattr(sio, 'limiter', None)
        if limiter is not None and limiter.at_ceiling():
            _refusals.warning(
                'ceiling',
                'refusing new connections with 503: this process holds %d client sockets, what its open-file limit '
                '(ulimit -n) leaves room for; raise the limit or run more workers (serve --workers N)',
                limiter.open_sockets,
            )
            self.refused = True
            transport.write(_FULL)
            transport.close()
            return
        if limiter is not None:
            peer = transport.get_extra_info('peername')
            ip = peer[0] if isinstance(peer, tuple) and peer else None
            if limiter.trust_forwarded_for or not isinstance(ip, str):
                ip = ''  # the process's total only: behind a proxy every socket comes from the proxy
            if not limiter.socket_opened(ip):
                _refusals.warning(
                    ip,
                    'closing a new socket from %s: it holds twice limits.max_connections_per_ip sockets already',
                    ip,
                )
                self.refused = True  # never set up: Sanic's connection_lost has nothing to undo
                transport.abort()
                return
            self.counted_ip = ip
        super().connection_made(transport)  # type: ignore[no-untyped-call]

    def connection_lost(self, exc: Exception | None) -> None:
        self._release()
        if not self.refused:
            super().connection_lost(exc)  # type: ignore[no-untyped-call]

    def _release(self) -> None:
        ip = self.counted_ip
        if ip is not None:
            self.counted_ip = None
            sio = getattr(self.app.ctx, 'sio', None)
            limiter = getattr(sio, 'limiter', None)
            if limiter is not None:
                limiter.socket_closed(ip)

    def data_received(self, data: bytes) -> None:
        http = getattr(self, '_http', None)  # None before Sanic's connection task first ran
        if http is None or http.stage is Stage.IDLE:
            self.head_started = time.monotonic()  # the first bytes of a request: its head's clock starts
            if not self.recv_buffer:
                wired = getattr(self.app.ctx, 'transport', None)
                hub = getattr(wired, 'hub', None)
                if hub is not None and hub.direct_handshake(self, data):
                    return  # a websocket handshake, answered by lean.py without Sanic's request machinery
                handoff = getattr(wired, 'handoff', None)
                if handoff is not None and handoff.take(self.transport, data):
                    self._release()
                    return  # a request of a session another worker holds: that worker has the connection now
        super().data_received(data)  # type: ignore[no-untyped-call]

    def check_timeouts(self) -> None:
        http = getattr(self, '_http', None)
        task = getattr(self, '_task', None)
        if task is not None and http is not None and http.stage is Stage.REQUEST:
            now = time.monotonic()
            started = self.head_started
            if started is None:
                self.head_started = now  # a pipelined request, already in the buffer
            elif now - started > self.app.ctx.settings.server.handshake_timeout_s:
                peer = self.transport.get_extra_info('peername') if self.transport is not None else None
                _refusals.info(
                    'slow',
                    'closing a connection from %s: its request head took over server.handshake_timeout (%gs)',
                    peer[0] if isinstance(peer, tuple) and peer else '?',
                    self.app.ctx.settings.server.handshake_timeout_s,
                )
                http.exception = RequestTimeout('Request Timeout')
                task.cancel()
                return
        super().check_timeouts()  # type: ignore[no-untyped-call]


_adopting: set[asyncio.Task[None]] = set()


def adopt(sock: socket.socket, data: bytes) -> None:
    """Serve a connection another worker handed over (handoff.py), with the bytes it had read, as Sanic serves the
    connections it accepts."""
    kwargs = GuardedHttpProtocol.factory_kwargs
    if kwargs is None:  # no connection accepted here yet, so nothing can be ours: the client starts again
        sock.close()
        return
    loop: asyncio.AbstractEventLoop = kwargs['loop']

    async def serve() -> None:
        try:
            _transport, protocol = await loop.connect_accepted_socket(lambda: GuardedHttpProtocol(**kwargs), sock)
        except OSError as exc:
            logger.info('a connection handed over was gone before it was served: %s', exc)
            sock.close()
            return
        if not getattr(protocol, 'refused', False):
            protocol.data_received(data)

    task = loop.create_task(serve())
    _adopting.add(task)
    task.add_done_callback(_adopting.discard)


def protocol_class() -> type[Any]:
    """The protocol serve runs: the guarded one when check() passes, else Sanic's own (logged)."""
    missing = check()
    if missing:
        logger.warning('socket and request-head guards off, Sanic runs connections as shipped: missing %s', missing)
        from sanic.server.protocols.websocket_protocol import WebSocketProtocol as Shipped  # noqa: PLC0415

        return Shipped
    return GuardedHttpProtocol
