"""Smaller per-connection state for websocket clients: what each idle connection keeps, and does not need.

An empty collections.deque costs 760 bytes (it allocates its first 64-slot block up front), and a websocket
connection on Sanic's machinery holds a dozen of them in asyncio Queues and Events that hold at most one item or
waiter. Also per connection: Sanic's frame assembler creates an asyncio.Queue it never uses, and python-engineio's
Sanic driver defines a new class for every request (the `wsgi.input` of the environ python-socketio keeps for the
connection's lifetime). The tracemalloc census behind this: bench/README.md (Memory).

- small_queue() is python-engineio's AsyncServer.create_queue (a documented hook) for this server: an asyncio.Queue
  whose deques are lists (it holds the few packets waiting for the connection's writer);
- trim() runs once per websocket connection, when the broadcast fast path records it (fastpath.on_websocket): the
  waiters of Sanic's four per-connection Events become lists, the assembler's unused queue is dropped, and the
  environ's empty `wsgi.input` becomes one shared object.

Each relies on CPython's asyncio and the libraries' attribute names; check() verifies them at start and the service
runs without these cuts (logged) when one is missing. A list behaves as the deque here: these hold 0 or 1 items.
Since lean.py runs the websockets that connect directly, trim() meets the ones upgraded from polling; lean.py shares
EMPTY_INPUT, and its sessions keep the small queue (empty after the handshake).
"""

from __future__ import annotations

import asyncio
import collections
import logging
from typing import Any

try:  # an internal: a rename switches the trims off (check, compat.check), it does not stop the service
    from sanic.server.websockets.frame import WebsocketFrameAssembler

    _IMPORT_ERROR: str | None = None
except ImportError as exc:  # pragma: no cover - only with other library versions
    WebsocketFrameAssembler = object  # type: ignore[misc,assignment]
    _IMPORT_ERROR = f'{type(exc).__name__}: {exc}'

logger = logging.getLogger('gamelist_service.transport.slim')


class Slots(list[Any]):
    """A list with deque's popleft, for asyncio's waiter and item collections of a few entries."""

    __slots__ = ()

    def popleft(self) -> Any:
        return self.pop(0)


class SmallQueue(asyncio.Queue[Any]):
    """asyncio.Queue holding its items, getters, putters and its 'finished' Event's waiters in lists."""

    def __init__(self, maxsize: int = 0) -> None:
        super().__init__(maxsize)
        self._getters: Any = Slots()
        self._putters: Any = Slots()
        _slim_event(self._finished)  # type: ignore[attr-defined]

    def _init(self, maxsize: int) -> None:
        self._queue: Any = Slots()


def small_queue(*args: Any, **kwargs: Any) -> asyncio.Queue[Any]:
    return SmallQueue(*args, **kwargs)


class _EmptyInput:
    """The `wsgi.input` of a websocket handshake (it has no body), shared by every connection."""

    __slots__ = ()

    async def read(self, length: int | None = None) -> bytes:
        return b''


EMPTY_INPUT = _EmptyInput()


def _slim_event(event: Any) -> None:
    if isinstance(event._waiters, collections.deque) and not event._waiters:
        event._waiters = Slots()


def check() -> list[str]:
    """What the cuts need and this environment lacks; empty when they can run."""
    if _IMPORT_ERROR is not None:
        return [_IMPORT_ERROR]
    missing: list[str] = []
    try:
        queue = SmallQueue()
        queue.put_nowait(1)
        if queue.get_nowait() != 1 or not isinstance(queue._queue, Slots):
            missing.append('asyncio.Queue keeps its items elsewhere')
        for name in ('_getters', '_putters', '_finished'):
            if not hasattr(queue, name):
                missing.append(f'asyncio.Queue.{name}')
        event = asyncio.Event()
        if not isinstance(getattr(event, '_waiters', None), collections.deque):
            missing.append('asyncio.Event._waiters is not a deque')
        slots = getattr(WebsocketFrameAssembler, '__slots__', ())
        missing += [
            f'WebsocketFrameAssembler.{name}'
            for name in ('completed_queue', 'message_complete', 'message_fetched')
            if name not in slots
        ]
    except Exception as exc:  # noqa: BLE001 - any failure of the probe means: do not use them
        missing.append(f'probe failed: {type(exc).__name__}: {exc}')
    return missing


class Trimmer:
    """trim() for one server; switches itself off (logged once) if a connection lacks what it expects."""

    def __init__(self, environ: dict[str, dict[str, Any]]) -> None:
        self.environ = environ  # python-socketio's AsyncServer.environ: eio sid -> the handshake's environ
        self.enabled = True

    def trim(self, sock: Any, ws: Any) -> None:
        if not self.enabled:
            return
        try:
            assembler = ws.assembler
            assembler.completed_queue = None  # never read or written by Sanic
            _slim_event(assembler.message_complete)
            _slim_event(assembler.message_fetched)
            io_proto = ws.io_proto
            _slim_event(io_proto._can_write)
            _slim_event(io_proto._data_received)
            environ = self.environ.get(sock.sid)
            body = environ.get('wsgi.input') if environ is not None else None
            if body is not None and getattr(body, 'payload', None) == b'':
                environ['wsgi.input'] = EMPTY_INPUT  # type: ignore[index]
        except AttributeError as exc:
            self.enabled = False
            logger.warning('per-connection trimming off: %s: %s', type(exc).__name__, exc)


def install(sio: Any, manager: Any) -> Trimmer | None:
    """Use the small queue for sio's Engine.IO sessions and trim each websocket the fast path records."""
    missing = check()
    if missing:
        logger.warning('per-connection trimming off: this environment lacks %s', ', '.join(missing))
        return None
    sio.eio.create_queue = small_queue
    trimmer = Trimmer(sio.environ)
    hooks = getattr(manager, 'on_websocket', None)
    if isinstance(hooks, list):
        hooks.append(trimmer.trim)
    return trimmer
