"""The broadcast fast path: encode once, frame once, write the same bytes to every idle websocket transport.

python-socketio's AsyncManager.emit creates a task per recipient, which puts the packet on the Engine.IO queue, which
wakes the connection's writer task, which takes Sanic's websocket lock and writes one frame. FastAsyncManager.emit
builds the websocket frame once and, for each recipient whose connection can take it now (a lean connection that is
open, see lean.py; or a Sanic websocket that is open and idle: nothing queued, writer parked, transport writable),
calls transport.write(frame) in a plain loop. Any other recipient (polling, an
upgrade in progress, a busy writer, a paused or closing transport, a ping timeout) goes through the normal path, so
ordering is kept per client. The bytes on the wire are the same as the normal path's: tests/test_fastpath.py.

It relies on internals of python-socketio, python-engineio, Sanic, websockets and asyncio (listed in
../shared/notes/fanout.md section 9). check() verifies them at start; when one is missing, create_manager() returns
the plain AsyncManager and logs why. An attribute that goes missing at run time switches the fast path off, logged.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Any

import engineio
import socketio
from engineio import packet as eio_packet
from socketio import packet as sio_packet

from ..metrics import DEFLATED_FRAMES, FANOUT_WRITES
from . import rooms, wsframe

logger = logging.getLogger('gamelist_service.transport.fastpath')
_FAST = FANOUT_WRITES.labels('fast')
_PLAIN = FANOUT_WRITES.labels('plain')
_DEFLATED = DEFLATED_FRAMES.labels('broadcast')

try:  # the imports themselves are part of the check: a rename disables the fast path, it does not crash
    from engineio.async_drivers import sanic as _eio_sanic
    from engineio.async_socket import AsyncSocket
    from sanic.server.protocols.base_protocol import SanicProtocol
    from sanic.server.websockets.impl import WebsocketImplProtocol
    from websockets.protocol import State
    from websockets.server import ServerProtocol

    _IMPORT_ERROR: str | None = None
except ImportError as exc:  # pragma: no cover - only with other library versions
    _IMPORT_ERROR = f'{type(exc).__name__}: {exc}'

ENCODED_KEPT = 8  # events whose encoding is kept (each holds its data object: a few lists, not more)
# Attribute on engineio's AsyncSocket holding the Sanic websocket of that connection (set by FastWebSocket).
SANIC_WS_ATTR = '_gamelist_sanic_ws'


def check() -> list[str]:
    """What the fast path needs and this environment lacks; empty when it can run."""
    if _IMPORT_ERROR is not None:
        return [_IMPORT_ERROR]
    missing: list[str] = []

    def need(obj: Any, *names: str, label: str = '') -> None:
        for name in names:
            if not hasattr(obj, name):
                missing.append(f'{label or getattr(obj, "__name__", type(obj).__name__)}.{name}')

    need(socketio.AsyncManager, 'emit', 'get_participants', 'initialize', 'set_server')
    need(socketio.AsyncServer, '_send_eio_packet', label='socketio.AsyncServer')
    need(sio_packet, 'EVENT', 'Packet', label='socketio.packet')
    need(eio_packet, 'MESSAGE', 'Packet', label='engineio.packet')
    need(engineio.AsyncServer, 'send_packet', '_get_socket', label='engineio.AsyncServer')
    need(_eio_sanic, 'WebSocket', '_async', label='engineio.async_drivers.sanic')
    need(_eio_sanic.WebSocket, '__call__', 'wait', 'send', label='engineio sanic WebSocket')
    need(AsyncSocket, '_websocket_handler', 'send', 'check_ping_timeout', 'poll', label='engineio AsyncSocket')
    need(State, 'OPEN', label='websockets State')
    slots = getattr(SanicProtocol, '__slots__', ())
    missing += [f'SanicProtocol.{name}' for name in ('transport', '_can_write', '_time') if name not in slots]
    try:
        sock = AsyncSocket(_FakeEioServer(), 'check')
        need(sock, 'closed', 'closing', 'upgraded', 'upgrading', 'last_ping', 'queue', label='engineio AsyncSocket()')
        need(sock.queue, '_queue', '_getters', label='asyncio.Queue()')
        ws = WebsocketImplProtocol(ServerProtocol())
        need(ws, 'ws_proto', 'io_proto', 'conn_mutex', 'data_finished_fut', label='sanic WebsocketImplProtocol()')
        need(ws.ws_proto, 'state', 'extensions', 'expect_continuation_frame', label='websockets ServerProtocol()')
        need(ws.conn_mutex, 'locked', label='asyncio.Lock()')
        if eio_packet.Packet(eio_packet.MESSAGE, '2["e"]').encode() != '42["e"]':
            missing.append('engineio.packet.Packet(MESSAGE).encode() changed')
    except Exception as exc:  # noqa: BLE001 - any failure of the probe means: do not use the fast path
        missing.append(f'probe failed: {type(exc).__name__}: {exc}')
    return missing


class _FakeEioServer:
    """Enough of an engineio server for AsyncSocket.__init__ in check()."""

    @staticmethod
    def create_queue() -> asyncio.Queue[Any]:
        return asyncio.Queue()


class Outgoing:
    """One Socket.IO packet on its way to many websockets: its plain frame, and its compressed frame
    (permessage-deflate, no context takeover) made at most once per window size, when a connection that negotiated
    the extension needs it."""

    __slots__ = ('_deflated', 'eio_pkt', 'frame', 'payload')

    def __init__(self, eio_pkt: Any, payload: bytes) -> None:
        self.eio_pkt = eio_pkt
        self.payload = payload
        self.frame = wsframe.frame(wsframe.TEXT, payload)
        self._deflated: dict[int, bytes] | None = None

    def frame_for(self, bits: int, hub: Any) -> bytes:
        """The bytes for a connection whose deflate window is bits (0: it did not negotiate the extension)."""
        if not bits or len(self.payload) < hub.deflate_threshold:  # bits: deflate_bits() of the connection
            return self.frame
        deflated = self._deflated
        if deflated is None:
            deflated = self._deflated = {}
        found = deflated.get(bits)
        if found is None:
            found = deflated[bits] = wsframe.deflated_frame(wsframe.TEXT, self.payload, bits, hub.deflate_level)
            _DEFLATED.inc()
        return found


def deflate_bits(sock: Any) -> int:
    """The permessage-deflate window a session's lean connection negotiated, 0 for none (or no lean connection)."""
    lean = getattr(sock, 'lean', None)
    return getattr(lean, 'deflate_bits', 0) if lean is not None else 0


def create_manager(rooms_indexed: bool = True) -> FastAsyncManager:
    """The fast path's client manager (transport.create_server calls it once compat.check() passed), with each
    client's rooms indexed (rooms.py: O(1) disconnects) unless rooms_indexed is False."""
    return FastAsyncManager() if rooms_indexed else PlainRoomsFastAsyncManager()


def install(sio: socketio.AsyncServer) -> None:
    """Record each connection's Sanic websocket for the fast path (see wrap_driver), and route single packets."""
    manager = sio.manager
    if not isinstance(manager, FastAsyncManager) or not wrap_driver(manager, sio.eio):
        return
    manager.installed = True
    # single packets (acks of main:screen, CONNECT replies) take the same direct write when the client is idle
    plain_send_packet = sio._send_packet

    async def send_packet(eio_sid: str, pkt: Any) -> None:
        encoded = pkt.encode()
        if not isinstance(encoded, str):
            await plain_send_packet(eio_sid, pkt)
        elif not manager.write_now(eio_sid, encoded):
            await sio.eio.send(eio_sid, encoded)  # what AsyncServer._send_packet does with a str

    sio._send_packet = send_packet
    logger.info('broadcast fast path on: one encode and one frame per broadcast, written to idle websockets')


def wrap_driver(manager: FastAsyncManager, eio: Any) -> bool:
    """Make engineio's websocket class (in this server's copy of the driver table) record the Sanic websocket.

    Whatever class is there (Sanic's, or a subclass that other code installed) gets a subclass that also stores the
    Sanic websocket on its AsyncSocket. Called at install, when the first client connects (manager.initialize) and
    before each fast emit, so a table replaced later is wrapped again; a connection opened meanwhile simply takes the
    normal path. False (and the fast path off) when the class is not python-engineio's Sanic websocket.
    """
    table: Any = getattr(eio, '_async', None)
    cls = table.get('websocket') if isinstance(table, dict) else None
    if getattr(cls, '_gamelist_records_sanic_ws', False):
        return True
    if not (isinstance(cls, type) and issubclass(cls, _eio_sanic.WebSocket)):
        manager.disable(f"engineio's websocket driver is {cls!r}, not Sanic's")
        return False
    eio._async = {**table, 'websocket': _recording_subclass(cls, manager)}
    return True


def _recording_subclass(base: type, manager: FastAsyncManager) -> type:
    class RecordingWebSocket(base):  # type: ignore[misc]
        """engineio's Sanic websocket wrapper that also stores the Sanic websocket on its AsyncSocket."""

        _gamelist_records_sanic_ws = True

        async def __call__(self, environ: dict[str, Any]) -> Any:
            handler: Any = getattr(self, 'handler', None)
            owner = getattr(handler, '__self__', None)
            hub = manager.lean_hub
            # a websocket connection, direct or an upgrade from polling: run by lean.py if it can
            if hub is not None and owner is not None and manager.enabled and hub.takeover(owner, environ):
                return {'status': '200 OK', 'headers': [], 'response': b''}  # Sanic writes it nowhere: taken over
            if hub is not None and owner is not None:
                hub.start_deferred_ping(owner)  # python-engineio's handler runs it: its pings too
            return await super().__call__(environ)

        async def wait(self) -> Any:
            if self._sock is not None:
                owner = getattr(self.handler, '__self__', None)
                if owner is not None and getattr(owner, SANIC_WS_ATTR, None) is not self._sock:
                    setattr(owner, SANIC_WS_ATTR, self._sock)
                    for hook in manager.on_websocket:
                        hook(owner, self._sock)
            return await super().wait()

    RecordingWebSocket.__name__ = RecordingWebSocket.__qualname__ = f'Recording{base.__name__}'
    return RecordingWebSocket


class FastAsyncManager(rooms.IndexedAsyncManager):
    """AsyncManager whose emit writes one prebuilt websocket frame to every idle websocket transport.

    The frames of one event-loop turn are written together: emit() notes, for each idle recipient, which frames it
    gets, and a callback scheduled with call_soon writes them, so a client in both namespaces gets the '/' and the
    '/gameplay' frame of a broadcast in one write() (the same bytes, in the same order, half the system calls).
    Nothing else runs between the emits of one broadcast and that callback (the emits do not yield unless some
    recipient takes the normal path, and then the callback runs first). The callback checks each connection again
    before writing; one that is no longer idle gets its packets through the normal path, in order.
    """

    fast = True  # transport.install: this server runs the fast path

    def __init__(self) -> None:
        super().__init__()
        self.enabled = True
        self.installed = False
        self.clock: Callable[[], float] = time.monotonic
        self._frames: list[Outgoing] = []  # this turn's packets, by index
        self._pending: dict[str, list[int]] = {}  # eio sid -> indices into _frames, in emit order
        self._flush_handle: asyncio.Handle | None = None
        self._flush_done: asyncio.Future[None] | None = None  # resolved when _flush has written this turn's frames
        self._tasks: set[asyncio.Task[None]] = set()
        # the last events emitted, by (id of their data object, event, namespace): (that object, its frame, its engineio
        # packet); the same object emitted again (to one client after another, in each namespace) is not encoded again
        self._encoded: dict[tuple[int, str, str], tuple[Any, Outgoing]] = {}
        # called with (engineio AsyncSocket, Sanic websocket) when a connection's websocket is recorded
        self.on_websocket: list[Callable[[Any, Any], None]] = []
        # runs websocket connections, direct or upgraded from polling (lean.Hub); None: python-engineio's handler does
        self.lean_hub: Any = None

    def initialize(self) -> None:
        super().initialize()
        if self.installed:
            wrap_driver(self, self.server.eio)

    def disable(self, reason: str) -> None:
        if self.enabled:
            self.enabled = False
            logger.warning('broadcast fast path disabled, using the plain python-socketio emit: %s', reason)

    async def emit(
        self,
        event: str,
        data: Any,
        namespace: str,
        room: Any = None,
        skip_sid: Any = None,
        callback: Any = None,
        to: Any = None,
        **kwargs: Any,
    ) -> None:
        eio = self._fast_eio()
        if callback is not None or eio is None:
            await super().emit(event, data, namespace, room=room, skip_sid=skip_sid, callback=callback, to=to, **kwargs)
            return
        # the first half of AsyncManager.emit, unchanged
        original = data
        room = to or room
        if namespace not in self.rooms:
            return
        if isinstance(data, tuple):
            data = list(data)
        elif data is not None:
            data = [data]
        else:
            data = []
        if not isinstance(skip_sid, list):
            skip_sid = [skip_sid]
        item = self._outgoing(event, original, data, namespace)
        if item is None:  # binary attachments: several packets per client; the plain path
            await super().emit(event, original, namespace, room=room, skip_sid=skip_sid, **kwargs)
            return
        if isinstance(room, str) and skip_sid == [None] and self._write_to_one(eio, namespace, room, item):
            return  # one client, idle, nothing of this turn waiting for it: written now (a catch-up list)
        stashed, slow = self._stash(eio, namespace, room, skip_sid, item)
        if logger.isEnabledFor(logging.DEBUG):
            logger.debug(
                'fast emit %s to %s: %d frames to write directly, %d queued', event, namespace, stashed, len(slow)
            )
        if slow:
            _PLAIN.inc(len(slow))
            send = self.server._send_eio_packet
            await asyncio.wait([asyncio.create_task(send(eio_sid, item.eio_pkt)) for eio_sid in slow])

    def _fast_eio(self) -> Any:
        """The Engine.IO server when an emit can take the fast path now; None: python-socketio's own emit."""
        eio = getattr(self.server, 'eio', None)
        if (
            not self.enabled
            or not self.installed
            or eio is None
            or eio.logger.isEnabledFor(logging.INFO)  # AsyncSocket.send logs every packet at INFO
            or not wrap_driver(self, eio)
        ):
            return None
        return eio

    def _outgoing(self, event: str, original: Any, data: list[Any], namespace: str) -> Outgoing | None:
        """The packet of an emit, encoded once per object (the catch-up list of a reconnect storm is one object for
        everyone); None when it has binary attachments."""
        key = (id(original), event, namespace)
        held = self._encoded.get(key)
        if held is not None and held[0] is original:
            return held[1]
        encoded = self.server.packet_class(sio_packet.EVENT, namespace=namespace, data=[event, *data]).encode()
        if not isinstance(encoded, str):
            return None
        eio_pkt = eio_packet.Packet(eio_packet.MESSAGE, encoded)
        item = Outgoing(eio_pkt, eio_pkt.encode().encode('utf-8'))
        if len(self._encoded) >= ENCODED_KEPT:
            self._encoded.clear()
        self._encoded[key] = (original, item)
        return item

    def emit_now(self, event: str, data: Any, namespace: str, sid: str) -> bool:
        """An emit of one object to one client (its own room), written now without awaiting; False: nothing was
        done, emit() takes it (the client is not idle, a frame of this turn waits for it, or the plain path)."""
        eio = self._fast_eio()
        if eio is None or namespace not in self.rooms:
            return False
        item = self._outgoing(event, data, [data], namespace)
        return item is not None and self._write_to_one(eio, namespace, sid, item)

    def _stash(self, eio: Any, namespace: str, room: Any, skip_sid: list[Any], item: Outgoing) -> tuple[int, list[str]]:
        """Note the frame for every idle recipient (written by _flush); returns how many, and the others' eio sids."""
        sockets = eio.sockets
        ping_timeout = eio.ping_timeout
        now = time.time()
        pending = self._pending
        index = len(self._frames)
        self._frames.append(item)
        slow: list[str] = []
        stashed = 0
        for sid, eio_sid in self.get_participants(namespace, room):
            if sid in skip_sid:
                continue
            waiting = pending.get(eio_sid)
            if waiting is not None:  # a frame of this turn waits for it already: this one goes after it
                waiting.append(index)
                stashed += 1
                continue
            sock = sockets.get(eio_sid)
            if sock is None or not self.enabled:
                slow.append(eio_sid)  # gone (the normal path logs and drops it)
                continue
            try:
                idle = direct_transport(sock, now, ping_timeout) is not None
            except AttributeError as exc:  # a library changed shape under us: the plain path from now on
                self.disable(f'{type(exc).__name__}: {exc}')
                idle = False
            if not idle:
                slow.append(eio_sid)  # polling, not upgraded yet, busy, or closing
                continue
            pending[eio_sid] = [index]
            stashed += 1
        if pending and self._flush_handle is None:
            loop = asyncio.get_running_loop()
            self._flush_handle = loop.call_soon(self._flush)
            self._flush_done = loop.create_future()
        return stashed, slow

    def _flush(self) -> None:
        """Write each waiting client's frames in one write(); a client that is no longer idle gets the normal path."""
        self._flush_handle = None
        done, self._flush_done = self._flush_done, None
        frames, pending = self._frames, self._pending
        self._frames, self._pending = [], {}
        eio = self.server.eio
        sockets = eio.sockets
        ping_timeout = eio.ping_timeout
        now = time.time()
        mono = self.clock()
        joined: dict[tuple[tuple[int, ...], int], bytes] = {}
        hub = self.lean_hub
        deflating = hub is not None and hub.deflate  # else every connection takes the plain frames
        fallback: list[tuple[str, list[int]]] = []
        written = 0
        for eio_sid, indices in pending.items():
            sock = sockets.get(eio_sid)
            try:
                transport = (
                    None if sock is None or not self.enabled else direct_transport(sock, now, ping_timeout, mono)
                )
                if transport is None:
                    fallback.append((eio_sid, indices))
                    continue
                bits = deflate_bits(sock) if deflating else 0
                if len(indices) == 1:
                    data = frames[indices[0]].frame_for(bits, hub) if bits else frames[indices[0]].frame
                else:
                    key = (tuple(indices), bits)
                    data = joined.get(key) or joined.setdefault(
                        key, b''.join(frames[i].frame_for(bits, hub) for i in indices)
                    )
                transport.write(data)
                written += 1
            except AttributeError as exc:  # a library changed shape under us: the plain path from now on
                self.disable(f'{type(exc).__name__}: {exc}')
                fallback.append((eio_sid, indices))
        _FAST.inc(written)
        loop = asyncio.get_running_loop()
        for eio_sid, indices in fallback:
            _PLAIN.inc(len(indices))
            task = loop.create_task(self._send_in_order(eio_sid, [frames[i].eio_pkt for i in indices]))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        if done is not None and not done.done():
            done.set_result(None)

    async def written(self) -> None:
        """Return once the frames stashed so far are written (those of idle clients; the others are queued)."""
        done = self._flush_done
        if done is not None:
            await asyncio.shield(done)

    def _write_to_one(self, eio: Any, namespace: str, room: str, item: Outgoing) -> bool:
        """An emit to one client's own room: write its frame now when nothing of this turn waits for that client."""
        eio_sid = self.rooms.get(namespace, {}).get(None, {}).get(room)
        if eio_sid is None or eio_sid in self._pending or not self.enabled:
            return False
        return self._write_frame(eio, eio_sid, item)

    def _write_frame(self, eio: Any, eio_sid: str, item: Outgoing) -> bool:
        """Write a packet to one idle websocket now; False when it cannot take one directly (the normal path does)."""
        sock = eio.sockets.get(eio_sid)
        if sock is None:
            return False
        try:
            transport = direct_transport(sock, time.time(), eio.ping_timeout, self.clock())
            if transport is None:
                return False
            hub = self.lean_hub
            bits = deflate_bits(sock) if hub is not None and hub.deflate else 0
            transport.write(item.frame_for(bits, hub) if bits else item.frame)
        except AttributeError as exc:  # a library changed shape under us: the plain path from now on
            self.disable(f'{type(exc).__name__}: {exc}')
            return False
        _FAST.inc()
        return True

    def write_now(self, eio_sid: str, encoded: str) -> bool:
        """Write one Socket.IO packet to an idle websocket client now; False: the caller takes the normal path."""
        if not self.enabled or not self.installed or eio_sid in self._pending:  # frames of this turn go first
            return False
        eio = self.server.eio
        if eio.logger.isEnabledFor(logging.INFO):
            return False
        eio_pkt = eio_packet.Packet(eio_packet.MESSAGE, encoded)
        return self._write_frame(eio, eio_sid, Outgoing(eio_pkt, eio_pkt.encode().encode('utf-8')))

    async def _send_in_order(self, eio_sid: str, packets: list[Any]) -> None:
        for eio_pkt in packets:
            await self.server._send_eio_packet(eio_sid, eio_pkt)


def direct_transport(sock: Any, now: float, ping_timeout: float, mono: float | None = None) -> Any:
    """The transport to write a frame to now, where the normal path's frame would land; None: the normal path.

    A lean connection (lean.py) writes every frame at once, so it takes any frame while it is open. A websocket run
    by python-engineio's handler (an upgrade from polling) must be idle: see _idle. mono, when given, is noted as the
    Sanic protocol's last write time, as its own send does.
    """
    if sock.closed or sock.closing:
        return None
    lean = getattr(sock, 'lean', None)
    if lean is not None:
        last_ping = sock.last_ping
        if last_ping and now - last_ping > ping_timeout:
            return None  # AsyncSocket.send closes it; let the normal path do that
        return lean.sink()
    ws = getattr(sock, SANIC_WS_ATTR, None)
    if ws is None or not _idle(sock, ws, now, ping_timeout, State.OPEN):
        return None
    io_proto = ws.io_proto
    if mono is not None:
        io_proto._time = mono
    return io_proto.transport


def _idle(sock: Any, ws: Any, now: float, ping_timeout: float, open_state: Any) -> bool:
    """True when a frame written to this connection's transport now lands exactly where the normal path's would."""
    if sock.closed or sock.closing or not sock.upgraded or sock.upgrading:
        return False
    last_ping = sock.last_ping
    if last_ping and now - last_ping > ping_timeout:
        return False  # AsyncSocket.send closes it; let the normal path do that
    queue = sock.queue
    getters = queue._getters
    # nothing queued, and the writer parked on the queue (a writer holding a packet leaves no getter)
    if queue._queue or len(getters) != 1 or getters[0].done():
        return False
    proto = ws.ws_proto
    if proto.state is not open_state or proto.extensions or proto.expect_continuation_frame:
        return False
    if ws.conn_mutex.locked():
        return False
    fut = ws.data_finished_fut
    if fut is None or fut.done():
        return False
    io_proto = ws.io_proto
    if io_proto is None or not io_proto._can_write.is_set():
        return False
    transport = io_proto.transport
    return transport is not None and not transport.is_closing()


class PlainRoomsFastAsyncManager(FastAsyncManager):
    """The fast path over python-socketio's own room bookkeeping (when rooms.check() fails)."""

    basic_enter_room = socketio.AsyncManager.basic_enter_room
    basic_leave_room = socketio.AsyncManager.basic_leave_room
    basic_disconnect = socketio.AsyncManager.basic_disconnect
    get_rooms = socketio.AsyncManager.get_rooms
    get_participants = socketio.AsyncManager.get_participants
