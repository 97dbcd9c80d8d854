"""Websocket connections run without Sanic's websocket machinery: the connection is an asyncio.Protocol of its own.

On Sanic's machinery a websocket client (`/socket.io/?EIO=4&transport=websocket`, directly or to upgrade a polling
session) holds Sanic's request handler, suspended for the connection's lifetime (a dozen coroutines through Sanic,
python-engineio and the driver), Sanic's websocket protocol with its frame assembler and a task waiting on it, a task
closing it when the handler ends, websockets' parser, python-engineio's ping task and a writer task. A lean
connection holds the transport, this protocol object, the socket, python-socketio's entries and the environ (the
per-connection figures of both: bench/README.md, Lean connections).

Here, when python-engineio hands a websocket handshake to its driver (fastpath.RecordingWebSocket), Hub.takeover
answers it (101, the RFC 6455 accept key) and makes the transport's protocol a LeanConnection; Sanic's request then
ends as after any response (its protocol is given a transport that writes nowhere, and lets go of the connection).
The engineio AsyncSocket stays the session, as a LeanSocket:
- received frames are parsed in data_received (wsframe.FrameReader); each Engine.IO packet goes to the socket's
  receive() in a task of its own, as python-engineio's reader does; a main:screen request is answered in place
  (screenpath) and a PONG re-arms the ping timer, without a task;
- send() writes the frame to the transport at once: no queue and no writer task;
- pings come from one timer per connection instead of a sleeping task; a missing pong is found by the session sweep
  (sweep.py; python-engineio's own service task where the sweep is off), which closes the session through its
  check_ping_timeout as before;
- when the connection drops, the session is closed with the same reason python-engineio gives (transport close).
A connection that upgrades from polling runs the same steps as python-engineio's handler (2probe, 3probe and a NOOP
for the pending poll, then UPGRADE); only then does its socket become a LeanSocket, and a failed upgrade leaves the
session polling. Every connection keeps python-engineio's handler when check() finds something missing (logged).
The bytes on the wire are the same: tests/test_lean.py.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import collections
import contextvars
import hashlib
import logging
import sys
import time
from http import HTTPStatus
from typing import Any
from urllib.parse import parse_qs

import engineio
from engineio import exceptions as eio_exceptions
from engineio import packet as eio_packet

try:  # internals: a rename switches lean connections off (check, compat.check), it does not stop the service
    from engineio.async_socket import AsyncSocket
    from sanic.http.http1 import Http
    from sanic.server.protocols.http_protocol import HttpProtocol

    _IMPORT_ERROR: str | None = None
except ImportError as exc:  # pragma: no cover - only with other library versions
    AsyncSocket = Http = HttpProtocol = object  # type: ignore[misc,assignment]
    _IMPORT_ERROR = f'{type(exc).__name__}: {exc}'

from ..metrics import DEFLATED_FRAMES
from . import slim, wsframe
from .guards import engineio_frame_ok

logger = logging.getLogger('gamelist_service.transport.lean')
_DEFLATED_SINGLE = DEFLATED_FRAMES.labels('single')

ACCEPT_GUID = b'258EAFA5-E914-47DA-95CA-C5AB0DC85B11'
SLOW_CLIENT_BYTES = 4 * 1024 * 1024  # unsent bytes at which a client that stopped reading is disconnected
MAX_IN_FLIGHT = 4  # a connection's packets on their way through tasks; beyond this its reading pauses
FIRST_PING_ATTR = '_gamelist_first_ping'  # python-engineio's ping task of a socket that is not connected yet
_DEFERRED = 'deferred'  # FIRST_PING_ATTR of a direct handshake's socket: no task was started for its first ping
_IN_DIRECT_HANDSHAKE: contextvars.ContextVar[bool] = contextvars.ContextVar('gamelist_direct_handshake', default=False)
PING_FRAME = wsframe.text_frame(eio_packet.Packet(eio_packet.PING).encode())
PONG = eio_packet.Packet(eio_packet.PONG).encode()
PROBE = eio_packet.Packet(eio_packet.PING, data='probe').encode()
PROBE_ANSWER = wsframe.text_frame(eio_packet.Packet(eio_packet.PONG, data='probe').encode())
UPGRADE = eio_packet.Packet(eio_packet.UPGRADE).encode()
OPEN, PROBING, UPGRADING, ENDING = 0, 1, 2, 3  # LeanConnection.stage
POLICY_VIOLATION = 1008  # websocket close code


def check() -> list[str]:
    """What takeover needs of python-engineio and Sanic and this environment lacks; empty when it can run."""
    if _IMPORT_ERROR is not None:
        return [_IMPORT_ERROR]
    missing: list[str] = []
    for name in ('receive', 'send', 'close', 'schedule_ping', 'check_ping_timeout', '_send_ping'):
        if not hasattr(AsyncSocket, name):
            missing.append(f'AsyncSocket.{name}')
    try:
        for name in ('transport', 'connections', 'recv_buffer', '_http'):
            if name not in _slots(HttpProtocol):
                missing.append(f'sanic HttpProtocol.{name}')
        if 'keep_alive' not in _slots(Http):
            missing.append('sanic Http.keep_alive')
        server = engineio.AsyncServer(async_mode='sanic')
        sock = AsyncSocket(server, 'check')
        for name in ('connected', 'upgraded', 'closed', 'closing', 'queue', 'last_ping', 'server', 'sid'):
            if not hasattr(sock, name):
                missing.append(f'AsyncSocket().{name}')
        sock.__class__ = LeanSocket  # the switch takeover makes
        if not hasattr(server.reason, 'TRANSPORT_CLOSE'):
            missing.append('engineio.AsyncServer.reason.TRANSPORT_CLOSE')
        for name in ('ping_interval', 'ping_timeout', 'max_http_buffer_size', 'logger', 'sockets', '_ok'):
            if not hasattr(server, name):
                missing.append(f'engineio.AsyncServer().{name}')
    except Exception as exc:  # noqa: BLE001 - any failure of the probe means: do not use it
        missing.append(f'probe failed: {type(exc).__name__}: {exc}')
    return missing


def _slots(cls: type) -> set[str]:
    return {name for klass in cls.__mro__ for name in getattr(klass, '__slots__', ())}


def accept_key(key: str) -> str | None:
    """Sec-WebSocket-Accept for a client's Sec-WebSocket-Key; None when the key is not 16 bytes in base64."""
    try:
        if len(base64.b64decode(key.encode('ascii'), validate=True)) != 16:
            return None
    except (binascii.Error, UnicodeEncodeError, ValueError):
        return None
    return base64.b64encode(hashlib.sha1(key.encode('ascii') + ACCEPT_GUID).digest()).decode('ascii')


class LeanSocket(AsyncSocket):  # type: ignore[misc]
    """python-engineio's AsyncSocket of a LeanConnection (takeover switches the socket's class to this one)."""

    lean: LeanConnection

    async def send(self, pkt: Any) -> None:
        if not await self.check_ping_timeout():
            return
        self.lean.write_packet(pkt)

    def schedule_ping(self) -> None:
        if self.last_ping:  # type: ignore[has-type]  # as python-engineio: only once the last ping has its pong
            self.last_ping = None
            self.lean.schedule_ping()

    async def close(self, wait: bool = True, abort: bool = False, reason: Any = None) -> None:
        # nothing to wait for: sends are written at once (the queue may hold a NOOP for a poll that never came)
        await super().close(wait=False, abort=abort, reason=reason)
        self.lean.close(wsframe.NORMAL)


class _Detached:
    """The transport Sanic's protocol holds once the connection is taken over: it writes nowhere."""

    __slots__ = ('closing',)

    def __init__(self) -> None:
        self.closing = False

    def write(self, data: bytes) -> None:
        pass

    def is_closing(self) -> bool:
        return self.closing

    def close(self) -> None:
        self.closing = True

    def abort(self) -> None:
        self.closing = True

    def get_write_buffer_size(self) -> int:
        return 0

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return default

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass


class _Closing(asyncio.Protocol):
    """A connection accepted only to be closed: it releases its socket's count when it is gone."""

    def __init__(self, hub: Hub, ip: str | None) -> None:
        self.hub = hub
        self.ip = ip

    def connection_lost(self, exc: BaseException | None) -> None:
        limiter = getattr(self.hub.sio, 'limiter', None)
        if self.ip is not None and limiter is not None:
            limiter.socket_closed(self.ip)
            self.ip = None


class LeanConnection(asyncio.Protocol):
    """One websocket connection of an Engine.IO session; see the module docstring."""

    __slots__ = (
        'backlog',
        'deadline',
        'deflate_bits',
        'gathered',
        'head',
        'hub',
        'inflight',
        'ip',
        'ping_handle',
        'reader',
        'sock',
        'stage',
        'transport',
    )

    def __init__(self, sock: Any, hub: Hub, transport: Any, ip: str | None = None) -> None:
        self.sock = sock
        self.hub = hub
        self.transport: Any = transport
        self.reader = wsframe.FrameReader(hub.eio.max_http_buffer_size)
        self.ping_handle: asyncio.TimerHandle | None = None
        self.deadline: asyncio.TimerHandle | None = None  # an upgrade from polling must finish before it
        self.inflight = 0  # packets of this connection on their way through the normal path (tasks)
        self.backlog: list[tuple[int, bytes]] | None = None  # frames received while MAX_IN_FLIGHT were in flight
        self.stage = OPEN  # or, for an upgrade from polling, PROBING, then UPGRADING
        self.ip = ip  # the address this socket is counted under (limits), released when it closes
        self.deflate_bits = 0  # permessage-deflate negotiated: the window its compressed frames use (0: none)
        self.head = b''  # the 101 answer, written with the first frame (the OPEN packet) in one system call
        self.gathered: list[bytes] | None = None  # while one read's frames are handled: the replies, for one write

    # -- the transport's callbacks

    def data_received(self, data: bytes) -> None:
        try:
            items = self.reader.feed(data)
        except wsframe.FrameError as exc:
            self.fail(exc.code, exc.reason)
            return
        if self.backlog is not None:  # frames of earlier reads wait for the packets in flight: these go after them
            self.backlog.extend(items)
        elif items:
            # what is answered while this read's frames are handled goes out in one system call (a client joining
            # two namespaces gets both CONNECT replies and the list due on connect in one write)
            self.gathered = []
            try:
                self.handle(items)
            finally:
                self.write_gathered()

    def handle(self, items: list[tuple[int, bytes]]) -> None:
        """Act on received frames in order; with MAX_IN_FLIGHT packets in flight, the rest wait (reading paused)."""
        for index, (opcode, payload) in enumerate(items):
            if self.inflight >= MAX_IN_FLIGHT:
                self.backlog = items[index:]
                transport = self.open_transport()
                if transport is not None:
                    transport.pause_reading()  # backpressure: the client's next bytes wait in the kernel
                return
            if not self.handle_frame(opcode, payload):
                return  # the connection closed

    def handle_frame(self, opcode: int, payload: bytes) -> bool:
        """One frame; False when the connection closed."""
        if opcode == wsframe.TEXT:
            try:
                text = payload.decode('utf-8')
            except UnicodeDecodeError:
                self.fail(wsframe.INVALID_DATA, 'text frame is not UTF-8')
                return False
            return self.on_message(text)
        if opcode == wsframe.BINARY:
            return self.on_message(payload)
        if opcode == wsframe.PING:
            self.write(wsframe.frame(wsframe.PONG, payload))
        elif opcode == wsframe.CLOSE:
            try:
                code, _ = wsframe.parse_close(payload)
            except wsframe.FrameError as exc:
                self.fail(exc.code, exc.reason)
                return False
            self.close(code)  # the client's code, echoed; its close completes the handshake
            return False
        return True

    def pause_writing(self) -> None:
        transport = self.transport
        if transport is not None:
            logger.warning('closing a websocket: %s has %d bytes it does not read', self.sock.sid, SLOW_CLIENT_BYTES)
            asyncio.get_running_loop().call_soon(transport.abort)

    def connection_lost(self, exc: BaseException | None) -> None:
        self.transport = None
        self.reader.closed = True
        for handle in (self.ping_handle, self.deadline):
            if handle is not None:
                handle.cancel()
        self.ping_handle = self.deadline = None
        self.hub.ended(self.sock, self)

    # -- Engine.IO

    def on_message(self, data: str | bytes) -> bool:
        """One Engine.IO packet from the client; False when it closed the connection."""
        sock = self.sock
        hub = self.hub
        if self.stage != OPEN:
            if self.stage == ENDING:
                return False  # the server ends this connection (close_soon): the rest of its read is dropped
            return self.upgrade_step(data)
        gate = hub.gate
        if isinstance(data, str):
            if data == PONG and not hub.verbose():
                sock.schedule_ping()
                return True
            if not engineio_frame_ok(data):
                logger.warning('closing a websocket: malformed Engine.IO packet %r', data[:40])
                self.fail(wsframe.PROTOCOL_ERROR, 'malformed Engine.IO packet')
                return False
            if data[:1] == '4' and gate is not None:  # a Socket.IO packet: counted and screened before anything else
                refusal = gate.check(sock.sid, data[1:])
                if refusal is not None:
                    return self.refuse(refusal)
            if not self.inflight and self.answered_here(data):
                return True  # nothing of this client's was still on the normal path: the answer keeps the order
        elif gate is not None:
            refusal = gate.check_binary(sock.sid)
            if refusal is not None:
                return self.refuse(refusal)
        try:
            pkt = eio_packet.Packet(encoded_packet=data)
        except Exception as exc:  # noqa: BLE001 - whatever decoding a bad packet raises: its connection closes
            logger.warning('closing a websocket: malformed Engine.IO packet (%s: %s)', type(exc).__name__, exc)
            self.fail(wsframe.PROTOCOL_ERROR, 'malformed Engine.IO packet')
            return False
        self.run(self._receive(pkt))
        return True

    def answered_here(self, data: str) -> bool:
        """A main:screen request or a namespace CONNECT answered in this callback (screen.py, connect.py)."""
        kind = data[:2]
        if kind == '42':
            responder = self.hub.responder
            return responder is not None and bool(responder.answer_text(self.sock, data))
        if kind == '40':
            connector = self.hub.connector
            return connector is not None and bool(connector.answer(self.sock, self, data))
        return False

    def run(self, coro: Any) -> None:
        """A packet's way through the normal path, in a task: counted in flight until it is done."""
        task = asyncio.get_running_loop().create_task(coro)
        self.hub.receiving.add(task)
        task.add_done_callback(self._received)
        self.inflight += 1

    def refuse(self, refusal: Any) -> bool:
        """A packet the gate refused (protocol.Refusal): its reply, then the connection's end if it says so."""
        if refusal.reply is not None:
            self.write(wsframe.text_frame('4' + refusal.reply))
        if refusal.drop is not None:
            logger.warning('dropping connection %s: %s', self.sock.sid, refusal.drop)
            self.close(wsframe.PROTOCOL_ERROR, 'malformed Socket.IO packet')
            return False
        if refusal.disconnect:
            self.reader.closed = True  # nothing more is read from it: the server disconnects it now
            self.hub.sio.refuse_soon(self.sock.sid, refusal)
            return False
        return True

    def upgrade_step(self, data: str | bytes) -> bool:
        """An upgrade from polling, as python-engineio's handler runs it: 2probe -> 3probe (and a NOOP ends the
        poll), then 5 (UPGRADE) and the websocket carries the session. Anything else: the upgrade fails, this
        websocket closes and the session goes on polling. False when it closed."""
        sock = self.sock
        if self.stage == PROBING and data == PROBE:
            self.write(PROBE_ANSWER)
            sock.queue.put_nowait(eio_packet.Packet(eio_packet.NOOP))  # end the pending poll
            self.stage = UPGRADING
            return True
        if self.stage == UPGRADING and data == UPGRADE:
            self.stage = OPEN
            self.hub.became_lean(sock, self)
            return True
        logger.info(
            '%s: websocket upgrade failed: %r instead of %s',
            sock.sid,
            data[:20],
            'PING probe' if self.stage == PROBING else 'UPGRADE',
        )
        sock.upgrading = False
        self.close(wsframe.NORMAL)
        return False

    async def _receive(self, pkt: Any) -> None:
        sock = self.sock
        try:
            await sock.receive(pkt)
        except eio_exceptions.UnknownPacketError:
            pass
        except eio_exceptions.SocketIsClosedError:
            self.close(wsframe.NORMAL)
        except Exception:  # as python-engineio: log it, keep the session
            sock.server.logger.exception('Unknown receive error')

    def _received(self, task: asyncio.Task[None]) -> None:
        self.hub.receiving.discard(task)
        self.inflight -= 1
        backlog = self.backlog
        if backlog is None:
            return
        self.backlog = None
        if self.open_transport() is None:
            return  # closed meanwhile: what waited is dropped with it
        self.handle(backlog)
        transport = self.open_transport()
        if self.backlog is None and transport is not None:
            transport.resume_reading()

    def upgrade_expired(self) -> None:
        """The upgrade from polling did not finish within ping interval + ping timeout: close this websocket."""
        self.deadline = None
        if self.stage != OPEN:
            logger.info('%s: websocket upgrade not finished in time; closing it', self.sock.sid)
            self.close(POLICY_VIOLATION, 'upgrade not finished in time')

    def schedule_ping(self) -> None:
        if self.ping_handle is not None:
            self.ping_handle.cancel()
        loop = asyncio.get_running_loop()
        self.ping_handle = loop.call_later(self.hub.eio.ping_interval, self._ping)

    def _ping(self) -> None:
        self.ping_handle = None
        sock = self.sock
        if not sock.closing and not sock.closed:
            sock.last_ping = time.time()
            self.write(PING_FRAME)

    # -- writing

    def open_transport(self) -> Any:
        """The transport, when frames can be written to it; None once the connection is closing."""
        transport = self.transport
        return None if transport is None or transport.is_closing() else transport

    def sink(self) -> Any:
        """Where a frame written now goes: the transport, or this connection while it gathers the replies to one read
        (write() keeps them in order); None once the connection is closing."""
        transport = self.open_transport()
        return transport if transport is None or self.gathered is None else self

    def write_gathered(self) -> None:
        gathered, self.gathered = self.gathered, None
        if gathered:
            self.write(gathered[0] if len(gathered) == 1 else b''.join(gathered))

    def write(self, data: bytes) -> None:
        gathered = self.gathered
        if gathered is not None:
            gathered.append(data)
            return
        transport = self.open_transport()
        if transport is not None:
            head = self.head
            if head:
                self.head = b''
                data = head + data
            transport.write(data)

    def write_text(self, text: str) -> None:
        """One Engine.IO packet (text) in a frame of its own."""
        self.write(self.frame_for(text.encode('utf-8')))

    def write_packet(self, pkt: Any) -> None:
        encoded = pkt.encode()
        if isinstance(encoded, str):
            self.write(self.frame_for(encoded.encode('utf-8')))
        else:
            self.write(self.frame_for(encoded, wsframe.BINARY))

    def frame_for(self, payload: bytes, opcode: int = wsframe.TEXT) -> bytes:
        """The frame of one message for this connection: compressed when it negotiated permessage-deflate and the
        message is at least the compression threshold."""
        bits = self.deflate_bits
        if bits and len(payload) >= self.hub.deflate_threshold:
            _DEFLATED_SINGLE.inc()
            return wsframe.deflated_frame(opcode, payload, bits, self.hub.deflate_level)
        return wsframe.frame(opcode, payload)

    def close(self, code: int, reason: str = '') -> None:
        """Send a close frame and close the transport (after what is buffered is written); the session then ends.

        No Engine.IO close packet goes first (Node's websocket transport sends none either): python-socketio's client
        takes one as final and does not reconnect, while a close frame alone is a transport close it reconnects after.
        """
        if self.gathered:
            self.write_gathered()  # the replies written before it go first
        transport = self.open_transport()
        if transport is None:
            return
        self.reader.closed = True
        if code == wsframe.NO_STATUS:
            transport.write(wsframe.frame(wsframe.CLOSE, b''))
        else:
            transport.write(wsframe.close_frame(code, reason))
        transport.close()

    def close_soon(self, code: int, reason: str = '') -> None:
        """close() once the packet being handled is answered; nothing more this connection sent is acted on."""
        if self.open_transport() is not None and self.stage != ENDING:
            self.stage = ENDING
            self.reader.closed = True
            asyncio.get_running_loop().call_soon(self.close, code, reason)

    def fail(self, code: int, reason: str) -> None:
        logger.info('closing a websocket (%s): %s', self.sock.sid, reason)
        self.close(code, reason)


DIRECT_PROTOCOL = 'gamelist.protocol'  # the environ key of a direct handshake's Sanic protocol
_DIRECT_PREFIX = b'GET /socket.io/?'


class _Headers:
    """The handshake's headers from its environ, as the Sanic request's headers answer get()."""

    __slots__ = ('environ',)

    def __init__(self, environ: dict[str, Any]) -> None:
        self.environ = environ

    def get(self, name: str, default: str = '') -> str:
        value = self.environ.get('HTTP_' + name.upper().replace('-', '_'), default)
        return value if isinstance(value, str) else default


def _direct_environ(protocol: Any, data: bytes, eio: Any) -> dict[str, Any] | None:
    """The environ python-engineio's Sanic driver would build for this handshake; None when it is not a plain
    websocket handshake in one read (then Sanic parses it, and python-engineio answers whatever it is)."""
    end = data.find(b'\r\n\r\n')
    if not data.startswith(_DIRECT_PREFIX) or end < 0 or end + 4 != len(data) or end > 8192:
        return None
    try:
        lines = data[:end].decode('latin-1').split('\r\n')
    except UnicodeDecodeError:  # pragma: no cover - latin-1 decodes any byte
        return None
    parts = lines[0].split(' ')
    if len(parts) != 3 or parts[2] != 'HTTP/1.1':
        return None
    target = parts[1]
    query = target[len('/socket.io/?') :]
    params = parse_qs(query)
    if params.get('EIO') != ['4'] or params.get('transport') != ['websocket'] or 'sid' in params or 'j' in params:
        return None
    transport = protocol.transport
    peer = transport.get_extra_info('peername')
    environ: dict[str, Any] = {
        'wsgi.input': slim.EMPTY_INPUT,
        'wsgi.url_scheme': 'https' if transport.get_extra_info('sslcontext') else 'http',
        'REQUEST_METHOD': 'GET',
        'QUERY_STRING': query,
        'RAW_URI': target,
        'SERVER_PROTOCOL': 'HTTP/1.1',
        'REMOTE_ADDR': peer[0] if isinstance(peer, tuple) and peer else '',
        'REMOTE_PORT': str(peer[1]) if isinstance(peer, tuple) and len(peer) > 1 else '0',
        'SERVER_NAME': 'sanic',
        'SERVER_PORT': '0',
        DIRECT_PROTOCOL: protocol,
    }
    for line in lines[1:]:
        name, sep, value = line.partition(':')
        if not sep or not name or name != name.strip():
            return None
        key = sys.intern('HTTP_' + name.upper().replace('-', '_'))  # one string for every connection's environ
        value = value.strip()
        environ[key] = f'{environ[key]},{value}' if key in environ else value
    connection = {token.strip().lower() for token in environ.get('HTTP_CONNECTION', '').split(',')}
    if environ.get('HTTP_UPGRADE', '').lower() != 'websocket' or 'upgrade' not in connection:
        return None
    if (
        environ.get('HTTP_SEC_WEBSOCKET_VERSION') != '13'
        or accept_key(environ.get('HTTP_SEC_WEBSOCKET_KEY', '')) is None
    ):
        return None  # the normal path answers it, with websockets' reason
    if 'websocket' not in eio.transports or 'HTTP_CONTENT_LENGTH' in environ or 'HTTP_TRANSFER_ENCODING' in environ:
        return None
    origin = environ.get('HTTP_ORIGIN')
    policy = eio.cors_allowed_origins
    if origin and policy != [] and not (callable(policy) and policy(origin, environ)):
        return None  # refused, or a policy this path does not know: the normal path answers it
    return environ


def _release_request(environ: dict[str, Any]) -> None:
    """Let the handshake's Sanic request (and its protocol) go: the environ keeps the peer address and the headers."""
    environ.pop(DIRECT_PROTOCOL, None)  # a direct handshake's Sanic protocol: done with
    request = environ.pop('sanic.request', None)
    if request is not None:
        environ['REMOTE_ADDR'] = getattr(request, 'ip', '') or environ.get('REMOTE_ADDR', '')
    if getattr(environ.get('wsgi.input'), 'payload', None) == b'':  # a class per request (the driver's)
        environ['wsgi.input'] = slim.EMPTY_INPUT


class Hub:
    """Takes over the directly connected websockets of one Engine.IO server, and ends their sessions."""

    def __init__(self, sio: Any, deflate_threshold: int | None = None) -> None:
        self.sio = sio
        self.eio = sio.eio
        # permessage-deflate for clients that offer it, for messages of at least this many bytes (None: never)
        self.deflate_threshold = deflate_threshold if deflate_threshold is not None else 0
        self.deflate = deflate_threshold is not None
        self.deflate_level = 6
        self.direct = True  # handshakes answered without Sanic's request machinery (direct_handshake)
        self.responder: Any = None  # screen.ScreenResponder, when main:screen is answered in place
        self.connector: Any = None  # connect.ConnectResponder, when namespace CONNECTs are answered in place
        self.gate: Any = getattr(sio, 'gate', None)  # protocol.Gate: each client packet counted where it arrives
        self.enabled = True
        self.upgrading: dict[str, LeanConnection] = {}  # eio sid -> its websocket while the upgrade is in progress
        self.receiving: set[asyncio.Task[None]] = set()  # the packets' tasks on the normal path
        self._ending: collections.deque[Any] = collections.deque()  # sessions whose connection is gone, to end
        self._tasks: set[asyncio.Task[None]] = set()
        plain_start = self.eio.start_background_task

        def start_background_task(target: Any, *args: Any, **kwargs: Any) -> Any:
            owner = getattr(target, '__self__', None)
            if getattr(target, '__func__', None) is AsyncSocket._send_ping and not getattr(owner, 'connected', True):
                if _IN_DIRECT_HANDSHAKE.get():
                    # a websocket handshake taken at its first bytes: takeover follows, and the connection's timer
                    # pings; no task only to be cancelled (start_deferred_ping starts it if takeover does not happen)
                    vars(owner)[FIRST_PING_ATTR] = _DEFERRED
                    return None
                task = plain_start(target, *args, **kwargs)
                vars(owner)[FIRST_PING_ATTR] = task  # takeover cancels it: the connection's timer pings instead
                task.add_done_callback(lambda _: vars(owner).pop(FIRST_PING_ATTR, None))
                return task
            return plain_start(target, *args, **kwargs)

        self.plain_start = plain_start
        self.eio.start_background_task = start_background_task

    def start_deferred_ping(self, sock: Any) -> None:
        """The websocket of a direct handshake was not taken over: python-engineio's first ping starts after all."""
        if vars(sock).get(FIRST_PING_ATTR) == _DEFERRED:
            del vars(sock)[FIRST_PING_ATTR]
            self.plain_start(sock._send_ping)

    def verbose(self) -> bool:
        """python-engineio logs every packet (at INFO): let it see each one."""
        return bool(self.eio.logger.isEnabledFor(logging.INFO))

    def takeover(self, sock: Any, environ: dict[str, Any]) -> bool:
        """Answer the websocket handshake and run the connection as a LeanConnection; False: the driver does it."""
        if not self.enabled:
            return False
        try:
            return self._takeover(sock, environ)
        except AttributeError as exc:  # a library changed shape under us: the driver's handler from now on
            self.enabled = False
            logger.warning("lean websocket connections off, python-engineio's handler runs them: %s", exc)
            return False

    def _takeover(self, sock: Any, environ: dict[str, Any]) -> bool:
        if sock.closed or sock.closing or sock.upgraded or sock.upgrading:
            return False
        request = environ.get('sanic.request')
        if request is not None:
            answered = self._switch(request.transport, request.headers, defer=True)
        else:  # a handshake direct_handshake() took before Sanic parsed it
            protocol = environ.get(DIRECT_PROTOCOL)
            answered = (
                self._switch(protocol.transport, _Headers(environ), direct=True, defer=True)
                if protocol is not None
                else None
            )
        if answered is None:
            return False
        transport, early, ip, bits, head = answered
        _release_request(environ)
        # The connection's callbacks, timers and tasks copy the context current when they are set up: not this
        # request's, where Sanic keeps the request (its Request.get_current()), so a fresh one.
        contextvars.Context().run(self._attach, sock, transport, early, ip, bits, head)
        return True

    def _switch(
        self, transport: Any, headers: Any, direct: bool = False, defer: bool = False
    ) -> tuple[Any, bytes, str | None, int, bytes] | None:
        """Answer a websocket handshake (101) and take the connection from Sanic: (transport, bytes the client sent
        after its handshake, the address its socket is counted under, the permessage-deflate window bits or 0); None
        (nothing done) when it cannot; with defer, the 101 answer is returned (last) instead of written.

        :param direct: a handshake Sanic never parsed (direct_handshake): its connection task is ended here.
        """
        if transport is None or transport.is_closing():
            return None
        accept = accept_key(headers.get('sec-websocket-key', ''))
        if accept is None or headers.get('sec-websocket-version') != '13':
            return None  # the driver (websockets) answers with the reason
        sanic_protocol = transport.get_protocol()
        http = getattr(sanic_protocol, '_http', None)
        if (http is None and not direct) or sanic_protocol.transport is not transport:
            return None
        ip = getattr(sanic_protocol, 'counted_ip', None)  # httpproto.GuardedHttpProtocol counted this socket
        if ip is not None:
            sanic_protocol.counted_ip = None  # whoever takes the connection releases it, when it closes
        early = bytes(sanic_protocol.recv_buffer)  # frames the client sent before the 101 (it should not)
        sanic_protocol.recv_buffer.clear()
        negotiated = wsframe.negotiate_deflate(wsframe.offered_extensions(headers)) if self.deflate else None
        extension = b'' if negotiated is None else b'Sec-WebSocket-Extensions: ' + negotiated[0].encode() + b'\r\n'
        head = (
            b'HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n'
            b'Sec-WebSocket-Accept: ' + accept.encode('ascii') + b'\r\n' + extension + b'\r\n'
        )
        if not defer:
            transport.write(head)
            head = b''
        # Sanic ends this request as after any response, on a transport that is no longer the client's
        sanic_protocol.transport = _Detached()
        if http is not None:
            http.keep_alive = False
        sanic_protocol.connections.discard(sanic_protocol)
        if direct:
            if sanic_protocol._task is not None:
                sanic_protocol._task.cancel()  # Sanic's task still waits for a request (or has not started): it ends
            timer = sanic_protocol._callback_check_timeouts
            if timer is not None:  # else it re-arms itself and keeps Sanic's protocol alive for its keep-alive time
                timer.cancel()
                sanic_protocol._callback_check_timeouts = None
        return transport, early, ip, 0 if negotiated is None else negotiated[1], head

    def direct_handshake(self, protocol: Any, data: bytes) -> bool:
        """A new connection's first bytes: a plain websocket handshake (/socket.io/?EIO=4&transport=websocket, the
        whole head in one read) is answered without Sanic's request machinery; False: Sanic takes it as any other.

        It runs what the normal path runs from python-engineio on (its connect handlers, the limits, the upgrade),
        from a task of its own; Sanic's HTTP parsing, routing and the response it writes nowhere are skipped (about a
        third of a handshake's CPU in a connect storm: bench/README.md). Anything unusual goes the normal way.
        """
        if not self.enabled or not self.direct:
            return False
        environ = _direct_environ(protocol, data, self.eio)
        if environ is None:
            return False
        task = asyncio.get_running_loop().create_task(self._direct_connect(protocol, environ))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return True

    async def _direct_connect(self, protocol: Any, environ: dict[str, Any]) -> None:
        transport = protocol.transport
        _IN_DIRECT_HANDSHAKE.set(True)  # this task's context only (start_background_task above)
        try:
            answer = await self.eio._handle_connect(environ, 'websocket')
        except Exception:  # as the normal path: log it; the client sees its connection close
            logger.exception('websocket handshake failed unexpectedly')
            answer = self.eio._bad_request()
        if not isinstance(answer, dict) or transport.get_protocol() is not protocol or transport.is_closing():
            return  # taken over (or gone): nothing more to write
        code = int(str(answer['status']).split(' ', 1)[0])
        headers, body = answer.get('headers', []), answer.get('response', b'')
        head = f'HTTP/1.1 {code} {HTTPStatus(code).phrase}\r\n'  # as Sanic words it
        head += ''.join(f'{name}: {value}\r\n' for name, value in headers)
        head += f'Content-Length: {len(body)}\r\nConnection: close\r\n\r\n'
        transport.write(head.encode('latin-1') + body)  # refused (over a limit): its answer, then the end
        transport.close()

    def accept_and_close(self, request: Any) -> bool:
        """A websocket for a session that is upgraded already: accept it (101), then close it, as Node's engine.io
        does; the session's own connection is untouched. False (nothing done) when it cannot."""
        if not self.enabled:
            return False
        try:
            answered = self._switch(request.transport, request.headers)
        except AttributeError:
            return False
        if answered is None:
            return False
        transport, _, ip, _, _ = answered
        transport.set_protocol(_Closing(self, ip))
        transport.write(wsframe.frame(wsframe.CLOSE, b''))  # no status, as Node's ws.close() sends
        transport.close()
        return True

    def _attach(
        self, sock: Any, transport: Any, early: bytes, ip: str | None, deflate_bits: int = 0, head: bytes = b''
    ) -> None:
        conn = LeanConnection(sock, self, transport, ip)
        conn.head = head  # written with the OPEN packet when became_lean sends it, else below
        if deflate_bits:
            conn.deflate_bits = deflate_bits
            conn.reader.inflate = True
        transport.set_protocol(conn)
        transport.set_write_buffer_limits(high=SLOW_CLIENT_BYTES)
        if sock.connected:  # an upgrade from polling: the session is the websocket's once the client says so
            conn.stage = PROBING
            sock.upgrading = True  # as python-engineio: polls get a NOOP from now on
            self.upgrading[sock.sid] = conn
            loop = asyncio.get_running_loop()
            conn.deadline = loop.call_later(self.eio.ping_interval + self.eio.ping_timeout, conn.upgrade_expired)
        else:
            sock.connected = True
            self.became_lean(sock, conn)
        if conn.head:  # nothing written yet (an upgrade from polling waits for the client's probe)
            head, conn.head = conn.head, b''
            transport.write(head)
        if early:
            conn.data_received(early)

    def became_lean(self, sock: Any, conn: LeanConnection) -> None:
        """From now on the session's packets go over this connection, written at once."""
        if self.upgrading.get(sock.sid) is conn:
            del self.upgrading[sock.sid]
        if conn.deadline is not None:
            conn.deadline.cancel()
            conn.deadline = None
        first_ping = vars(sock).pop(FIRST_PING_ATTR, None)
        sock.__class__ = LeanSocket
        sock.lean = conn
        sock.upgraded = True
        sock.upgrading = False
        if first_ping == _DEFERRED:
            conn.schedule_ping()  # the connection's timer pings from the start
        elif first_ping is not None and not first_ping.done():
            first_ping.cancel()  # python-engineio's first ping, still asleep: the connection's timer pings instead
            conn.schedule_ping()
        queue = sock.queue
        while not queue.empty():  # what python-engineio queued (the OPEN packet; after polling, what waited), in order
            pkt = queue.get_nowait()
            queue.task_done()
            if pkt is not None:
                conn.write_packet(pkt)
        environ = self.sio.environ.get(sock.sid)  # python-socketio's copy of the session's first request
        if environ is not None:
            _release_request(environ)

    def ended(self, sock: Any, conn: LeanConnection) -> None:
        """The connection is gone: end the Engine.IO session (the transport-close reason), as python-engineio does."""
        if conn.ip is not None:
            limiter = getattr(self.sio, 'limiter', None)
            if limiter is not None:
                limiter.socket_closed(conn.ip)
            conn.ip = None
        if getattr(sock, 'lean', None) is not conn:  # an upgrade that did not happen: the session goes on polling
            if self.upgrading.get(sock.sid) is conn:
                del self.upgrading[sock.sid]
                sock.upgrading = False
            return
        if sock.closed:
            self._forget(sock)
            return
        self._ending.append(sock)
        if len(self._ending) == 1:  # one task ends every session gone in this turn (a mass disconnect: 10,000)
            task = asyncio.get_running_loop().create_task(self._end_all())
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _end_all(self) -> None:
        while self._ending:
            sock = self._ending.popleft()
            try:
                await sock.close(wait=False, abort=True, reason=sock.server.reason.TRANSPORT_CLOSE)
            except Exception:  # as python-engineio: log it; the next session still ends
                logger.exception('ending session %s failed', sock.sid)
            finally:
                self._forget(sock)

    def _forget(self, sock: Any) -> None:
        if self.eio.sockets.get(sock.sid) is sock:
            del self.eio.sockets[sock.sid]

    def session_ended(self, eio_sid: str) -> None:
        """An Engine.IO session ended (on polling): its websocket still upgrading, if any, closes with it."""
        conn = self.upgrading.pop(eio_sid, None)
        if conn is not None:
            conn.close(wsframe.NORMAL, 'session closed')

    async def close_all(self, code: int = wsframe.GOING_AWAY, timeout_s: float = 5.0) -> int:
        """At shutdown: close every lean connection, whatever its stage (a close frame with code 1001: socket.io
        clients reconnect at once, to another instance if there is one), and wait, within bounds, for their ends."""
        conns = [sock.lean for sock in list(self.eio.sockets.values()) if isinstance(sock, LeanSocket)]
        conns += self.upgrading.values()
        self.upgrading.clear()
        for conn in conns:
            conn.close(code, 'server shutting down')
        deadline = time.monotonic() + timeout_s
        while self._tasks or any(conn.transport is not None for conn in conns):
            if time.monotonic() > deadline:
                break
            if self._tasks:
                await asyncio.wait(set(self._tasks), timeout=max(0.0, deadline - time.monotonic()))
            else:
                await asyncio.sleep(0.01)  # bounded by the deadline: connection_lost comes on a later loop turn
        return len(conns)


def install(sio: Any, manager: Any, deflate_threshold: int | None = None) -> Hub | None:
    """Take over websocket connections when the broadcast fast path is installed and check() passes.

    :param deflate_threshold: permessage-deflate for clients that offer it, for messages of at least this many bytes;
        None: never negotiated.
    """
    if not getattr(manager, 'installed', False) or not hasattr(manager, 'lean_hub'):
        return None
    missing = check()
    if missing:
        logger.warning("lean websocket connections off, python-engineio's handler runs them: missing %s", missing)
        return None
    hub = Hub(sio, deflate_threshold)
    manager.lean_hub = hub
    return hub
