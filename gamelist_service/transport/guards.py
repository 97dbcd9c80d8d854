"""Client garbage at the protocol level, and every client packet counted where it arrives.

python-engineio and python-socketio (versions pinned) raise on malformed packets from inside their receive loops: the
exception reaches a log with a full traceback and, for a bad Engine.IO frame on a websocket, skips the session's
cleanup until its ping times out. Here a bad packet closes its connection (websocket close code 1002) with one warning
line; the service and every other client go on.

Gate screens each Socket.IO packet a client sends before anything parses it or starts a task for it: it takes a token
from the connection's event bucket (limits.events_per_second and burst; namespace connects count too) and refuses JSON
nested deeper than MAX_JSON_DEPTH (the standard library's parser recurses: 1,000 levels raise RecursionError). A
refused event gets its error ack from the packet's header alone; over the rate, with over_limit disconnect, the
connection is then closed. Lean websockets (lean.py) call it from their receive callback, every other transport from
Engine.IO's message handler.
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from engineio import exceptions as eio_exceptions
from engineio import packet as eio_packet
from sanic.response import json as sanic_json
from socketio import packet as sio_packet

from ..config.settings import LimitSettings
from ..errors import RATE_LIMITED, error_body
from .types import Limiter

try:  # internals: a rename switches the guards off (compat.check), it does not stop the service
    from engineio.async_drivers.sanic import WebSocket as SanicWebSocket
    from engineio.async_socket import AsyncSocket

    _IMPORT_ERROR: str | None = None
except ImportError as exc:  # pragma: no cover - only with other library versions
    SanicWebSocket = AsyncSocket = object
    _IMPORT_ERROR = f'{type(exc).__name__}: {exc}'

logger = logging.getLogger('gamelist_service.transport.guards')

ENGINEIO_PACKET_TYPES = frozenset('0123456')  # open, close, ping, pong, message, upgrade, noop
MAX_ATTACHMENTS = 10  # binary attachments one Socket.IO event may announce; each is kept in memory until it is whole
PROTOCOL_ERROR = 1002  # websocket close code
MAX_JSON_DEPTH = 32  # arrays and objects inside each other in one client packet; the contract needs 3
PARSE_ERRORS = (ValueError, TypeError, KeyError, IndexError, RecursionError)  # what decoding a malformed packet raises
# a Socket.IO packet's header: type, binary attachment count, namespace, ack id (the JSON follows)
_HEADER = re.compile(r'([0-6])(?:[0-9]{1,6}-)?(?:(/[^,]{0,256}),)?([0-9]{1,18})?')
_STRING = re.compile(r'"(?:[^"\\]|\\.)*"')
_NOT_BRACKET = re.compile(r'[^\[\]{}]+')
TOO_DEEP = f'nested deeper than {MAX_JSON_DEPTH} levels'

_websockets: dict[str, GuardedWebSocket] = {}  # Engine.IO session id -> its open websocket


def check() -> list[str]:
    """What the guards need of python-engineio and python-socketio and this environment lacks; empty: they can run."""
    if _IMPORT_ERROR is not None:
        return [_IMPORT_ERROR]
    missing: list[str] = []
    try:
        import socketio  # noqa: PLC0415 - only the probe needs the server class itself

        sio = socketio.AsyncServer(async_mode='sanic', logger=False, engineio_logger=False)
        eio = sio.eio
        if not isinstance(getattr(eio, '_async', None), dict) or 'websocket' not in eio._async:
            missing.append('engineio.AsyncServer()._async["websocket"]')
        if not isinstance(getattr(eio, 'handlers', None), dict):
            missing.append('engineio.AsyncServer().handlers')
        if not isinstance(getattr(sio, '_binary_packet', None), dict):
            missing.append('socketio.AsyncServer()._binary_packet')
        if not hasattr(eio, 'ping_interval_grace_period'):
            missing.append('engineio.AsyncServer().ping_interval_grace_period')
        sock = AsyncSocket(eio, 'check')
        for name in ('queue', 'closing', 'closed', 'connected', 'upgraded', 'upgrading', 'server', 'sid'):
            if not hasattr(sock, name):
                missing.append(f'engineio AsyncSocket().{name}')
        sock.__class__ = GuardedSocket  # the switch install() makes
    except Exception as exc:  # noqa: BLE001 - any failure of the probe means: do not use the guards
        missing.append(f'probe failed: {type(exc).__name__}: {exc}')
    return missing


def engineio_frame_ok(data: str | bytes) -> bool:
    """A websocket text frame Engine.IO can decode: a packet type digit first, or 'b' and base64 (binary)."""
    if isinstance(data, bytes):
        return True  # a binary frame is a binary message
    if data[:1] == 'b':
        try:
            base64.b64decode(data[1:], validate=True)
        except (binascii.Error, ValueError):
            return False
        return True
    return data[:1] in ENGINEIO_PACKET_TYPES


def json_depth_ok(text: str, limit: int = MAX_JSON_DEPTH) -> bool:
    """False when the JSON in text nests arrays and objects deeper than limit (brackets inside strings do not count)."""
    if text.count('[') + text.count('{') <= limit:
        return True  # the common case, in two C-speed scans
    depth = 0
    for char in _NOT_BRACKET.sub('', _STRING.sub('', text)):
        if char in '[{':
            depth += 1
            if depth > limit:
                return False
        else:
            depth -= 1
    return True


@dataclass(frozen=True, slots=True)
class Refusal:
    """What to do with a refused packet: reply (a Socket.IO packet, e.g. an error ack) and drop or disconnect."""

    reply: str | None
    drop: str | None = None  # close the connection now as malformed (1002), logged with this reason
    disconnect: bool = False  # over the rate with over_limit disconnect: namespaces disconnected, then the session


class Gate:
    """Screens each Socket.IO packet of a client as it arrives; see the module docstring."""

    def __init__(self, limiter: Limiter) -> None:
        self.limiter = limiter

    def check(self, eio_sid: str, text: str) -> Refusal | None:
        """None: the packet may go on; else how it is refused. text is the Socket.IO packet (after the '4')."""
        header = _HEADER.match(text)
        kind = header.group(1) if header is not None else ''
        if kind == '1':
            return None  # a namespace disconnect: always let a client leave
        if not self.limiter.allow_event(eio_sid):
            return self._over_rate(eio_sid, header)
        if not json_depth_ok(text):
            return Refusal(_refusal_reply(header, f'a packet {TOO_DEEP}'), drop=f'a packet {TOO_DEEP}')
        return None

    def check_binary(self, eio_sid: str) -> Refusal | None:
        """A binary frame (an attachment) takes a token as well; None: it may go on."""
        return None if self.limiter.allow_event(eio_sid) else self._over_rate(eio_sid, None)

    def _over_rate(self, eio_sid: str, header: re.Match[str] | None) -> Refusal:
        limiter = self.limiter
        limits: LimitSettings = limiter.limits()
        first = limiter.trip(eio_sid)  # logged and acted on once per session
        disconnect = first and limits.over_limit == 'disconnect'
        if first:
            logger.warning(
                'client %s is over its event rate (%g/s, burst %d); %s',
                eio_sid,
                limits.events_per_second,
                limits.burst,
                'disconnecting it' if disconnect else 'refusing events over it',
            )
        return Refusal(_refusal_reply(header, RATE_LIMITED), disconnect=disconnect)


def _refusal_reply(header: re.Match[str] | None, message: str) -> str | None:
    """The error ack of a refused event that asked for one, or the connect_error of a refused connect."""
    if header is None:
        return None
    kind, namespace, ack_id = header.groups()
    prefix = f'{namespace},' if namespace and namespace != '/' else ''
    if kind == '2' and ack_id is not None:
        return f'3{prefix}{ack_id}' + json.dumps([error_body(message)], separators=(',', ':'))
    if kind == '0':
        return f'4{prefix}' + json.dumps({'message': message}, separators=(',', ':'))
    return None


class GuardedWebSocket(SanicWebSocket):  # type: ignore[misc]
    """python-engineio's Sanic websocket, closing the connection on a frame Engine.IO cannot decode.

    Mixed in before whatever websocket class the server's driver table holds (see install), so that other wrappers
    of the same class (the broadcast fast path's) keep working.
    """

    async def __call__(self, environ: dict[str, Any]) -> Any:
        sid = getattr(getattr(self.handler, '__self__', None), 'sid', None)  # the handler is the session's method
        if sid is not None:
            _websockets[sid] = self
        try:
            return await super().__call__(environ)
        finally:
            if sid is not None and _websockets.get(sid) is self:
                del _websockets[sid]

    async def wait(self) -> str | bytes:
        data: str | bytes = await super().wait()
        if not engineio_frame_ok(data):
            logger.warning('closing a websocket: malformed Engine.IO packet %r', data[:40])
            await self.close_with(PROTOCOL_ERROR, 'malformed Engine.IO packet')
            raise OSError('malformed Engine.IO packet')  # engine.io ends the session as after a client close
        return data

    async def close_with(self, code: int, reason: str) -> None:
        await self._sock.close(code, reason)


def install(sio: Any, gate: Gate, on_refusal: Callable[[str, Refusal], Any]) -> None:
    """Guard sio's Engine.IO websockets and Socket.IO packet handling (call once, after the server is built).

    :param on_refusal: called with (eio_sid, refusal) for a packet the gate refuses (it writes the reply and acts).
    """
    eio = sio.eio
    current = eio._async['websocket']
    if not issubclass(current, GuardedWebSocket):  # per server: the driver module's own table stays as it is
        guarded = type(f'Guarded{current.__name__}', (GuardedWebSocket, current), {})
        eio._async = {**eio._async, 'websocket': guarded}
    handle_message = sio._handle_eio_message
    handle_event = sio._handle_event
    handle_connect = eio.handlers['connect']

    async def on_connect(eio_sid: str, environ: dict[str, Any]) -> Any:
        session = eio.sockets.get(eio_sid)
        if session is not None and type(session) is AsyncSocket:
            session.__class__ = GuardedSocket
            fix_open_packet(session)
        return await handle_connect(eio_sid, environ)

    async def on_message(eio_sid: str, data: Any) -> None:
        session = eio.sockets.get(eio_sid)
        if session is None or session.closing or session.closed:
            return  # what a dropped session had still in flight
        if isinstance(data, str) and getattr(session, 'lean', None) is None:  # lean: screened on arrival (lean.py)
            refusal = gate.check(eio_sid, data)
            if refusal is not None:
                await on_refusal(eio_sid, refusal)
                return
        try:
            await handle_message(eio_sid, data)
        except PARSE_ERRORS as exc:
            await drop(sio, eio_sid, f'malformed Socket.IO packet ({type(exc).__name__}: {str(exc)[:80]})')
            return
        pending = sio._binary_packet.get(eio_sid)
        if pending is not None and pending.attachment_count > MAX_ATTACHMENTS:
            await drop(sio, eio_sid, f'an event announces {pending.attachment_count} binary attachments')

    async def on_event(eio_sid: str, namespace: str | None, id: int | None, data: Any) -> None:
        if not isinstance(data, list) or not data:
            raise ValueError(f'an event must be a non-empty array, not {type(data).__name__}')
        if data[0] in sio.reserved_events:  # "connect" or "disconnect" sent as an event: not the client's to send
            logger.info('event %r from a client refused (reserved)', data[0])
            if id is not None:
                refusal = error_body(f'{data[0]!r} is a reserved event name')
                reply = sio.packet_class(sio_packet.ACK, namespace=namespace or '/', id=id, data=[refusal])
                await sio._send_packet(eio_sid, reply)
            return
        await handle_event(eio_sid, namespace, id, data)

    eio.on('connect', on_connect)
    eio.on('message', on_message)
    sio._handle_event = on_event


def guard_requests(eio: Any, second_websocket: Callable[[Any], bool] | None = None) -> None:
    """Answer, before python-engineio sees them, the requests Node's engine.io answers otherwise (call before attach).

    - JSONP polling (`&j=N`): python-engineio answers it as script text, outside the Origin check a browser applies
      to XHR, so any page could read the session. Node's socket.io 4 dropped JSONP; here it gets 400.
    - A request without a transport, or with one not served: 400 {"code":0,"message":"Transport unknown"}
      (python-engineio took a handshake without one for polling, and said "Invalid transport" in a string).
    - A POST without a sid: 400 "Bad handshake method" (python-engineio's 400 said "Invalid session None").
    - A websocket for a session that is upgraded already: accepted, then closed, as Node does (second_websocket
      does it, when lean connections run); python-engineio refused the handshake, which a browser cannot tell from
      a server that is down. The upgraded connection is untouched.
    """
    handle_request = eio.handle_request

    async def guarded(request: Any, *args: Any, **kwargs: Any) -> Any:
        query = getattr(request, 'args', None)
        if query is not None:
            if 'j' in query:
                return bad_request(3, 'Bad request: JSONP polling is not supported')
            sid = query.get('sid')
            if query.get('transport') not in eio.transports and (sid is not None or request.method == 'GET'):
                return bad_request(0, 'Transport unknown')  # none, or not one served (python-engineio: a string)
            if sid is None and request.method == 'POST':  # a handshake is a GET (python-engineio: "Invalid session")
                return bad_request(2, 'Bad handshake method')
            if sid is not None and second_websocket is not None:
                session = eio.sockets.get(sid)
                upgrade = str(request.headers.get('upgrade', '')).lower() == 'websocket'
                if upgrade and session is not None and session.upgraded and second_websocket(request):
                    return sanic_json({})  # the connection was taken over: this answer goes nowhere
        return await handle_request(request, *args, **kwargs)

    eio.handle_request = guarded


def bad_request(code: int, message: str) -> Any:
    """Node's engine.io error answer: 400 with {"code": ..., "message": ...}."""
    return sanic_json({'code': code, 'message': message}, status=400)


async def bad_handshake_method(request: Any) -> Any:
    """PUT, PATCH, DELETE on the Engine.IO endpoint: Node's 400 "Bad handshake method", not a 405."""
    return bad_request(2, 'Bad handshake method')


class GuardedSocket(AsyncSocket):  # type: ignore[misc]
    """python-engineio's session, as Node's engine.io behaves (install() switches each new session to this class).

    - A POST body Engine.IO cannot decode or accept ends the session, with one warning line and a 400.
    - A close packet posted while a poll waits: the poll is answered with a NOOP (200), then the session closes
      (python-engineio left the poll hanging until its timeout, then answered 400).
    - A poll after ping interval + ping timeout without a pong: the session closes and the poll gets 400 (python-
      engineio's service task finds it only on its next round, up to a ping timeout later, and meanwhile polls are
      answered).
    """

    async def handle_post_request(self, environ: dict[str, Any]) -> Any:
        try:
            return await super().handle_post_request(environ)
        except eio_exceptions.EngineIOError:  # a body over max_http_buffer_size: Engine.IO answers 400 and disconnects
            await self._close_now()  # ... without waiting for a poll that may never come
            raise
        except PARSE_ERRORS as exc:  # what decoding a malformed payload raises
            logger.warning(
                'dropping connection %s: malformed Engine.IO payload (%s: %s)',
                self.sid,
                type(exc).__name__,
                str(exc)[:80],
            )
            await self._close_now()
            raise eio_exceptions.EngineIOError('malformed payload') from None  # Engine.IO answers 400

    async def receive(self, pkt: Any) -> None:
        if pkt.packet_type == eio_packet.CLOSE and not self.upgraded:
            self.queue.put_nowait(eio_packet.Packet(eio_packet.NOOP))  # the pending poll ends with it
        await super().receive(pkt)

    async def handle_get_request(self, environ: dict[str, Any]) -> Any:
        if self.connected and not self.upgraded and not self.upgrading and not await self.check_ping_timeout():
            raise eio_exceptions.EngineIOError('ping timeout')  # Engine.IO answers 400; the session is closed
        return await super().handle_get_request(environ)

    async def _close_now(self) -> None:
        await self.close(wait=False, reason=self.server.reason.SERVER_DISCONNECT)


def fix_open_packet(session: Any) -> None:
    """The handshake's pingInterval in milliseconds as configured (python-engineio rounds the seconds down first:
    300ms became 0, and a client trusting it timed out)."""
    queued = []
    while not session.queue.empty():
        queued.append(session.queue.get_nowait())
        session.queue.task_done()
    server = session.server
    for pkt in queued:
        if pkt is not None and pkt.packet_type == eio_packet.OPEN and isinstance(pkt.data, dict):
            grace = getattr(server, 'ping_interval_grace_period', 0)
            pkt.data['pingInterval'] = round((server.ping_interval + grace) * 1000)
            pkt.data['pingTimeout'] = round(server.ping_timeout * 1000)
        session.queue.put_nowait(pkt)


async def drop(sio: Any, eio_sid: str, why: str) -> None:
    """Close one client's connection now: its websocket with code 1002, or its polling session."""
    session = sio.eio.sockets.get(eio_sid)
    if session is None or session.closing or session.closed:
        return  # dropped already: one line per connection
    logger.warning('dropping connection %s: %s', eio_sid, why)
    lean = getattr(session, 'lean', None)  # a lean.LeanConnection
    if lean is not None:
        lean.close(PROTOCOL_ERROR, 'malformed Socket.IO packet')
        return
    websocket = _websockets.get(eio_sid)
    if websocket is not None:
        await websocket.close_with(PROTOCOL_ERROR, 'malformed Socket.IO packet')
        return
    session = sio.eio.sockets.get(eio_sid)
    if session is not None:  # polling: the CLOSE packet goes with the next poll; no waiting for it here
        await session.close(wait=False, reason=sio.eio.reason.SERVER_DISCONNECT)
