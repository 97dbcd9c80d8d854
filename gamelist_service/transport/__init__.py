"""Everything that touches the internals of python-socketio, python-engineio, Sanic, websockets and asyncio.

The rest of the service uses these names from here: create_server() builds the Socket.IO server, install() hooks
transport/ into it and the Sanic app (one call; it returns the Transport handle the app's lifecycle uses),
http_protocol() is the connection class serve gives Sanic, emit_now() writes an emit to one client without awaiting
when it can, and serve's several workers use reuseport. Nothing outside this package touches a library's
private attribute: a test and ruff's banned-api rule hold that (tests/test_compat.py, pyproject.toml).

- server.py: the python-socketio server class, with the private overrides the service needs (acks, limits).
- guards.py: every client packet screened where it arrives (rate, JSON depth, malformed packets), and the
  Engine.IO corners answered as Node's socket.io does. On whatever server.fast_path says: they enforce the limits.
- fastpath.py: a broadcast's websocket frame built once and written to every idle websocket.
- lean.py, wsframe.py: websocket connections without Sanic's websocket machinery (RFC 6455 frames parsed here).
- screen.py: main:screen answered where its frame arrives; connect.py: the same for a namespace CONNECT.
- slim.py, heap.py: smaller per-connection state, and CPython's full collections kept off the connections.
- rooms.py: connects and disconnects in O(1).
- httpproto.py: open sockets per client address, and one deadline for a request head.
- reuseport.py: with several workers, a listening socket per worker (SO_REUSEPORT), so the kernel spreads new
  connections evenly; web/server.py uses it (bind_main, take_own) before Sanic starts.
- sweep.py: sessions whose pong is overdue found by a sweep a few times a second, not a wake-up per session.
- compat.py: every internal relied on, per feature; check() runs at start and switches off what is missing.

The fast parts (fastpath, lean, screen, connect, slim, heap, rooms, sweep) run when server.fast_path is true (the default) and
their internals are there; docs/design.md has why each exists and what it measured.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import socketio

from . import compat, guards, heap
from .server import POLICY_VIOLATION, GamelistServer, SessionIds, ack_requested

logger = logging.getLogger('gamelist_service.transport')

__all__ = [
    'POLICY_VIOLATION',
    'GamelistServer',
    'Transport',
    'ack_requested',
    'create_server',
    'emit_now',
    'http_protocol',
    'install',
]


def create_server(*, fast_path: bool, **kwargs: Any) -> GamelistServer:
    """The Socket.IO server: its manager writes broadcasts on the fast path when fast_path and compat allow it.

    kwargs go to socketio.AsyncServer, and limiter= and connect_timeout_s= to GamelistServer.
    """
    report = compat.check()
    compat.log_report(report)
    manager: socketio.AsyncManager = socketio.AsyncManager()
    if not fast_path:
        logger.info("fast path off (server.fast_path: false): python-socketio's and Sanic's own code paths")
    elif not report['fastpath']:
        from . import fastpath  # noqa: PLC0415 - imported once compat found what it needs

        manager = fastpath.create_manager(rooms_indexed=not report['rooms'])
    elif not report['rooms']:
        from . import rooms  # noqa: PLC0415

        manager = rooms.IndexedAsyncManager()
    sio = GamelistServer(client_manager=manager, **kwargs)
    sio.compat_report = report
    if fast_path:
        # a session's packets already run in a task of their own (lean.py), and python-socketio starts one per
        # event: python-engineio's task per message on top of those is one task too many (a connect storm makes
        # 20,000 of them); its documented option runs the message handler in the receiving task instead
        sio.eio.async_handlers = False
        if not report['sweep']:
            from .sweep import SessionSweep  # noqa: PLC0415 - imported once compat found what it needs

            SessionSweep(sio.eio).install()
    return sio


@dataclass
class Transport:
    """What install() set up; the app's lifecycle starts and stops it."""

    sio: GamelistServer
    fast: bool
    hub: Any = None  # lean.Hub: the lean websocket connections
    handoff: Any = None  # handoff.Handoff: requests of sessions other workers hold go there (several workers)
    _heap_task: asyncio.Task[None] | None = field(default=None, repr=False)

    def start(self, closed_sessions: Callable[[], int]) -> None:
        """At server start: the handoff listener (several workers) and the heap policy (fast path)."""
        if self.handoff is not None:
            self.handoff.start()
        if self.fast:
            sockets = self.sio.eio.sockets
            policy = heap.HeapPolicy()
            self._heap_task = asyncio.get_running_loop().create_task(
                heap.run(policy, lambda: (len(sockets), closed_sessions()))
            )

    async def close_all(self, timeout_s: float) -> None:
        """At shutdown: every lean connection closed (1001); Sanic closes the ones it runs itself."""
        if self.hub is not None:
            await self.hub.close_all(timeout_s=timeout_s)

    async def stop(self) -> None:
        if self.handoff is not None:
            self.handoff.stop()
        task, self._heap_task = self._heap_task, None
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)  # it gives the frozen objects back

    async def written(self) -> None:
        """Once the broadcasts emitted so far are handed to every idle websocket (the fast path writes a turn later)."""
        manager = self.sio.manager
        waiter = getattr(manager, 'written', None)
        if waiter is not None:
            await waiter()


def install(
    sio: GamelistServer,
    app: Any,
    service: Any,
    namespace_class: type,
    *,
    handoff_port: int | None = None,
    deflate_threshold: int | None = None,
) -> Transport:
    """Hook transport/ into the server and the Sanic app (before sio.attach(app)); returns the handle.

    :param namespace_class: the service's AsyncNamespace class, whose main:screen the direct answers reproduce.
    :param deflate_threshold: permessage-deflate with clients that offer it, for messages of at least this many
        bytes (lean connections); None: never negotiated.
    :param handoff_port: with several workers, the port they share: each request of a session is served by the
        worker that holds it (handoff.py), so polling works without a sticky load balancer.
    """
    report: dict[str, list[str]] = getattr(sio, 'compat_report', None) or compat.check()
    hub = None
    if not report['guards']:
        guards.install(sio, sio.gate, sio.refuse)
    fast = not report['fastpath'] and getattr(sio.manager, 'fast', False)
    if fast:
        from . import fastpath, lean, screen, slim  # noqa: PLC0415 - the fast parts, once compat passed

        fastpath.install(sio)
        if not report['lean']:
            hub = lean.install(sio, sio.manager, deflate_threshold)
        if not report['slim']:
            slim.install(sio, sio.manager)
        responder = screen.install(sio, service, namespace_class) if not report['screen'] else None
        if hub is not None:
            hub.responder = responder
            if not report['connect']:
                from . import connect  # noqa: PLC0415

                hub.connector = connect.install(sio, namespace_class)
    sio.lean_hub = hub
    if not report['guards']:
        guards.guard_requests(sio.eio, hub.accept_and_close if hub is not None else None)
        # Node's engine.io answers a handshake with another method 400, not 405
        app.add_route(guards.bad_handshake_method, '/socket.io/', methods=['PUT', 'PATCH', 'DELETE'])
    passer = None
    if handoff_port is not None:
        from . import handoff, httpproto  # noqa: PLC0415 - several workers only

        if report['httpproto']:
            logger.warning(
                'several workers without the guarded connection class (%s): requests of a polling session that land '
                'on another worker are answered 400 (unknown session), and its client starts again',
                report['httpproto'],
            )
        passer = handoff.Handoff(handoff_port, httpproto.adopt)
        sio.eio.generate_id = SessionIds(owner=passer.pid)
    return Transport(sio, fast, hub, passer)


def emit_now(sio: GamelistServer, event: str, data: Any, namespace: str, sid: str) -> bool:
    """Write an emit of data to one client now, without awaiting, when the fast path can; False: nothing was done
    (then `await sio.emit(..., to=sid)`)."""
    emit = getattr(sio.manager, 'emit_now', None)
    return bool(emit is not None and emit(event, data, namespace, sid))


def http_protocol() -> type:
    """The connection class serve gives Sanic: sockets per address and the request-head deadline, when it can."""
    from . import httpproto  # noqa: PLC0415 - Sanic's protocol classes, only for serve

    return httpproto.protocol_class()
