"""Every library internal transport/ relies on, per feature, and the check that each is still there.

A library upgrade is a review of this file (docs/upgrading.md): each entry says what is used and why. `check()`
resolves every static entry (a module, class, method or slot), then runs each feature's own probe, which builds the
objects and looks at their instance attributes. A feature with anything missing is switched off (logged, with the
missing names) and the service runs it through the libraries' own code paths; nothing here stops the service from
starting. tests/test_compat.py checks that the pinned libraries pass, that docs/upgrading.md lists every entry, and
that no module outside transport/ imports or touches these internals.
"""

from __future__ import annotations

import importlib
import logging
import sys
from collections.abc import Callable
from dataclasses import dataclass
from importlib import metadata
from typing import Any

logger = logging.getLogger('gamelist_service.transport.compat')

# What transport/ was written and measured against (pyproject.toml pins them; constraints.txt pins the rest).
TESTED = {
    'sanic': '25.12.1',
    'python-socketio': '5.18.1',
    'python-engineio': '4.15.1',
    'websockets': '17.4',
    'uvloop': '0.23.0',
}
TESTED_PYTHON = ((3, 11),)

FEATURES = (
    'server',
    'guards',
    'fastpath',
    'lean',
    'screen',
    'connect',
    'slim',
    'rooms',
    'httpproto',
    'reuseport',
    'sweep',
)


@dataclass(frozen=True, slots=True)
class Internal:
    """One internal: path is a dotted name (module.Class.attr); kind says how it is checked: 'attr' (exists on the
    module or class), 'slot' (in the class's __slots__), 'instance' (set on instances: the feature's probe checks
    it), 'behaviour' (how a library behaves: the feature's probe or tests check it)."""

    feature: str
    path: str
    kind: str
    why: str


def _i(feature: str, kind: str, why: str, *paths: str) -> tuple[Internal, ...]:
    return tuple(Internal(feature, path, kind, why) for path in paths)


SIO = 'socketio.async_server.AsyncServer'
EIO = 'engineio.async_server.AsyncServer'
SOCKET = 'engineio.async_socket.AsyncSocket'
DRIVER = 'engineio.async_drivers.sanic'
WSIMPL = 'sanic.server.websockets.impl.WebsocketImplProtocol'

INTERNALS: tuple[Internal, ...] = (
    # transport/server.py: the server class
    *_i('server', 'attr', 'handlers learn whether the client asked for an ack', f'{SIO}._handle_event_internal'),
    *_i('server', 'attr', 'sessions per address, connect timeout', f'{SIO}._handle_eio_connect'),
    *_i('server', 'attr', 'bookkeeping released with the session', f'{SIO}._handle_eio_disconnect'),
    *_i('server', 'attr', 'unknown namespace: a connect_error object', f'{SIO}._handle_connect', f'{SIO}._send_packet'),
    *_i('server', 'instance', 'a closed session is not acted on again', f'{SOCKET}.closing', f'{SOCKET}.closed'),
    *_i('server', 'instance', 'a NOOP ends a pending poll', f'{SOCKET}.queue'),
    # transport/guards.py: packets screened on arrival, Node's protocol corners
    *_i('guards', 'attr', 'Socket.IO packets screened before they are parsed', f'{SIO}._handle_eio_message'),
    *_i('guards', 'attr', 'events that must be arrays; reserved names refused', f'{SIO}._handle_event'),
    *_i('guards', 'instance', 'binary attachments counted', f'{SIO}._binary_packet', f'{EIO}.handlers'),
    *_i('guards', 'instance', "each server's copy of the driver table", f'{EIO}._async'),
    *_i('guards', 'attr', "the session's class switched to GuardedSocket", f'{SOCKET}.handle_post_request',
        f'{SOCKET}.handle_get_request', f'{SOCKET}.receive', f'{SOCKET}.check_ping_timeout', f'{SOCKET}.close'),
    *_i('guards', 'instance', 'handshake pingInterval in ms', f'{EIO}.ping_interval_grace_period'),
    *_i('guards', 'attr', 'a malformed frame closes the websocket', f'{DRIVER}.WebSocket.wait'),
    *_i('guards', 'instance', 'the Sanic websocket of a session', f'{DRIVER}.WebSocket._sock'),
    # transport/fastpath.py: one frame per broadcast, written to every idle websocket
    *_i('fastpath', 'attr', "the manager's emit replaced", 'socketio.async_manager.AsyncManager.emit',
        'socketio.base_manager.BaseManager.get_participants', 'socketio.async_manager.AsyncManager.initialize'),
    *_i('fastpath', 'attr', 'the normal path for clients that are not idle', f'{SIO}._send_eio_packet',
        f'{EIO}.send_packet', f'{EIO}._get_socket'),
    *_i('fastpath', 'attr', "the driver's websocket recorded per session", f'{DRIVER}.WebSocket.__call__',
        f'{DRIVER}.WebSocket.send', f'{SOCKET}._websocket_handler', f'{SOCKET}.poll', f'{SOCKET}.send'),
    *_i('fastpath', 'instance', 'is this session idle', f'{SOCKET}.upgraded', f'{SOCKET}.upgrading',
        f'{SOCKET}.last_ping', 'asyncio.Queue._queue', 'asyncio.Queue._getters'),
    *_i('fastpath', 'slot', 'where and when Sanic writes', 'sanic.server.protocols.base_protocol.SanicProtocol.transport',
        'sanic.server.protocols.base_protocol.SanicProtocol._can_write',
        'sanic.server.protocols.base_protocol.SanicProtocol._time'),
    *_i('fastpath', 'instance', "Sanic's websocket is open and idle", f'{WSIMPL}.ws_proto', f'{WSIMPL}.io_proto',
        f'{WSIMPL}.conn_mutex', f'{WSIMPL}.data_finished_fut', 'websockets.server.ServerProtocol.extensions'),
    *_i('fastpath', 'behaviour', 'one write per client, at once', 'uvloop.UVStream.write'),
    # transport/lean.py and wsframe.py: websockets without Sanic's websocket machinery
    *_i('lean', 'attr', "the session's packets, pings and end", f'{SOCKET}.schedule_ping', f'{SOCKET}._send_ping'),
    *_i('lean', 'slot', "the connection taken from Sanic's protocol",
        'sanic.server.protocols.http_protocol.HttpProtocol.transport',
        'sanic.server.protocols.http_protocol.HttpProtocol.connections',
        'sanic.server.protocols.http_protocol.HttpProtocol.recv_buffer',
        'sanic.server.protocols.http_protocol.HttpProtocol._http', 'sanic.http.http1.Http.keep_alive'),
    *_i('lean', 'instance', 'the session as lean.py runs it', f'{SOCKET}.connected', f'{EIO}.reason',
        f'{EIO}._ok', f'{EIO}.sockets'),
    *_i('lean', 'behaviour', 'the transport switched to a protocol of our own', 'uvloop.UVStream.set_protocol'),
    # transport/screen.py: main:screen answered where its frame arrives
    *_i('screen', 'attr', "Sanic's receive callback", f'{WSIMPL}.data_received', f'{WSIMPL}.async_data_received'),
    *_i('screen', 'attr', "websockets' parser", 'websockets.server.ServerProtocol.receive_data',
        'websockets.server.ServerProtocol.data_to_send', 'websockets.server.ServerProtocol.events_received'),
    *_i('screen', 'behaviour', "the reply's bytes are python-socketio's", 'socketio.packet.Packet.json'),
    # transport/connect.py: a namespace CONNECT answered where its frame arrives
    *_i('connect', 'attr', "python-socketio's connect bookkeeping, called without its coroutine wrappers",
        'socketio.base_manager.BaseManager.pre_connect', 'socketio.base_manager.BaseManager.connect',
        'socketio.base_manager.BaseManager.is_pre_connected'),
    *_i('connect', 'instance', 'what _handle_connect reads: the session environ, a binary packet in progress, '
        'always_connect', f'{SIO}.environ', f'{SIO}._binary_packet', f'{SIO}.always_connect'),
    *_i('connect', 'behaviour', "the CONNECT reply's and refusal's bytes are python-socketio's",
        f'{SIO}._handle_connect', 'socketio.exceptions.ConnectionRefusedError.error_args'),
    # transport/slim.py: smaller per-connection state
    *_i('slim', 'instance', 'deques that hold at most one item become lists', 'asyncio.Queue._putters',
        'asyncio.Queue._finished', 'asyncio.Event._waiters'),
    *_i('slim', 'slot', "the assembler's unused queue dropped",
        'sanic.server.websockets.frame.WebsocketFrameAssembler.completed_queue',
        'sanic.server.websockets.frame.WebsocketFrameAssembler.message_complete',
        'sanic.server.websockets.frame.WebsocketFrameAssembler.message_fetched'),
    # transport/rooms.py: O(1) disconnects
    *_i('rooms', 'attr', 'the rooms of a client, indexed', 'socketio.base_manager.BaseManager.basic_enter_room',
        'socketio.base_manager.BaseManager.basic_leave_room', 'socketio.base_manager.BaseManager.basic_disconnect',
        'socketio.base_manager.BaseManager.get_rooms', 'socketio.base_manager.BaseManager.get_participants',
        'socketio.base_manager.BaseManager.is_sid_room'),
    *_i('rooms', 'instance', "a room's forward dict, copied as python-socketio's get_participants does",
        'bidict.BidictBase._fwdm'),
    *_i('rooms', 'instance', "python-socketio's room bookkeeping", 'socketio.base_manager.BaseManager.rooms',
        'socketio.base_manager.BaseManager.pending_connect', 'socketio.base_manager.BaseManager.pending_disconnect'),
    # transport/httpproto.py: sockets per address, the request-head deadline
    *_i('httpproto', 'attr', "Sanic's connection callbacks",
        'sanic.server.protocols.websocket_protocol.WebSocketProtocol.check_timeouts',
        'sanic.server.protocols.websocket_protocol.WebSocketProtocol.data_received', 'sanic.http.constants.Stage.REQUEST'),
    *_i('httpproto', 'slot', "the connection's request stage and task",
        'sanic.server.protocols.http_protocol.HttpProtocol._task'),
    *_i('lean', 'slot', "a websocket taken over at its first bytes: Sanic's timeout timer for it is cancelled",
        'sanic.server.protocols.http_protocol.HttpProtocol._callback_check_timeouts'),
    # transport/handoff.py (several workers): a connection handed over is served as Sanic serves its own
    *_i('httpproto', 'behaviour', 'Sanic builds each connection protocol(**kwargs); adopt() builds one the same way',
        'sanic.server.runners._serve_http_1'),
    *_i('httpproto', 'attr', 'session ids that name their worker (a documented method, replaced per server)',
        'engineio.base_server.BaseServer.generate_id'),
    # transport/reuseport.py (several workers): a listening socket per worker, SO_REUSEPORT
    *_i('reuseport', 'behaviour', 'the main process uses a socket given to prepare(sock=) as it is and never listens '
        'on it (the probe checks): it holds the port and takes no connection', 'sanic.server.socket.configure_socket'),
    *_i('reuseport', 'behaviour', "each worker listens on the main process's socket, inherited as a descriptor, after "
        "the app factory ran: the worker's own socket is put in its place there (tests/test_spread.py)",
        'sanic.worker.serve.worker_serve'),
    # transport/sweep.py: overdue pongs found by a sweep, not a wake-up per session
    *_i('sweep', 'attr', "python-engineio's service task, replaced per server", f'{EIO}._service_task'),
    *_i('sweep', 'instance', 'the service task is started at the first session and stopped by shutdown() through '
        'service_task_event', f'{EIO}.start_service_task', f'{EIO}.service_task_event'),
    *_i('sweep', 'behaviour', "a session whose pong is overdue is closed by its own check (python-engineio's log "
        'line, CLOSE packet and reason)', f'{SOCKET}.check_ping_timeout'),
)  # fmt: skip


def _resolve(path: str) -> tuple[Any, str] | None:
    """(the object holding the last name, the last name); None when a module or class on the way is missing."""
    parts = path.split('.')
    for cut in range(len(parts) - 1, 0, -1):
        try:
            obj: Any = importlib.import_module('.'.join(parts[:cut]))
        except ImportError:
            continue
        for name in parts[cut:-1]:
            obj = getattr(obj, name, None)
            if obj is None:
                return None
        return obj, parts[-1]
    return None


def static_check(internal: Internal) -> bool:
    """True when an 'attr' or 'slot' internal is there (the other kinds are the probes' to check)."""
    if internal.kind not in ('attr', 'slot'):
        return True
    found = _resolve(internal.path)
    if found is None:
        return False
    holder, name = found
    if internal.kind == 'attr':
        return hasattr(holder, name)
    slots = {slot for klass in getattr(holder, '__mro__', ()) for slot in getattr(klass, '__slots__', ())}
    return name in slots


def _probes() -> dict[str, Callable[[], list[str]]]:
    """Each feature's own check: it builds the objects and looks at what they hold."""
    probes: dict[str, Callable[[], list[str]]] = {}
    for feature, module in (
        ('server', 'server'),
        ('guards', 'guards'),
        ('fastpath', 'fastpath'),
        ('lean', 'lean'),
        ('screen', 'screen'),
        ('connect', 'connect'),
        ('slim', 'slim'),
        ('rooms', 'rooms'),
        ('httpproto', 'httpproto'),
        ('reuseport', 'reuseport'),
        ('sweep', 'sweep'),
    ):
        try:
            loaded = importlib.import_module(f'{__package__}.{module}')
        except Exception as exc:  # noqa: BLE001 - a module that cannot even be imported: its feature is off
            probes[feature] = lambda exc=exc: [f'import failed: {type(exc).__name__}: {exc}']  # type: ignore[misc]
            continue
        probe = getattr(loaded, 'check', None)
        if callable(probe):
            probes[feature] = probe
    return probes


def check() -> dict[str, list[str]]:
    """Feature -> the internals it needs and this environment lacks (empty: the feature can run)."""
    report: dict[str, list[str]] = {feature: [] for feature in FEATURES}
    for internal in INTERNALS:
        if not static_check(internal):
            report[internal.feature].append(internal.path)
    for feature, probe in _probes().items():
        try:
            report[feature].extend(m for m in probe() if m not in report[feature])
        except Exception as exc:  # noqa: BLE001 - a probe that fails means: do not use the feature
            report[feature].append(f'probe failed: {type(exc).__name__}: {exc}')
    return report


def versions() -> dict[str, str]:
    """The installed version of each library transport/ relies on ('missing' when it is not installed)."""
    found = {}
    for name in TESTED:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            found[name] = 'missing'
    return found


def log_report(report: dict[str, list[str]]) -> None:
    """One line about what runs; one warning per feature switched off, naming what it lacks."""
    untested = {name: v for name, v in versions().items() if v != TESTED[name]}
    if sys.version_info[:2] not in TESTED_PYTHON:
        untested['python'] = '.'.join(map(str, sys.version_info[:3]))
    if untested:
        logger.info('transport: running with versions it was not tested with (%s); internals checked', untested)
    for feature, missing in report.items():
        if missing:
            logger.warning(
                "transport feature %s off, the libraries' own code runs instead: missing %s", feature, missing
            )
