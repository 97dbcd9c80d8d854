"""Client garbage at the protocol level: a malformed Engine.IO or Socket.IO packet drops that connection.

python-engineio and python-socketio (versions pinned) raise on such packets from inside their receive loops: the
exception reaches a log with a full traceback and, for a bad Engine.IO frame on a websocket, skips the session's
cleanup until its ping times out. Here a bad packet closes its connection (websocket close code 1002) with one warning
line; the service and every other client go on.
"""

from __future__ import annotations

import base64
import binascii
import logging
from typing import Any

from engineio import exceptions as eio_exceptions
from engineio.async_drivers.sanic import WebSocket as SanicWebSocket
from socketio import packet as sio_packet

logger = logging.getLogger('gamelist_service.protocol')

ENGINEIO_PACKET_TYPES = frozenset('0123456')  # open, close, ping, pong, message, upgrade, noop
MAX_ATTACHMENTS = 10  # binary attachments one Socket.IO event may announce; each is kept in memory until it is whole
PROTOCOL_ERROR = 1002  # websocket close code

_websockets: dict[str, GuardedWebSocket] = {}  # Engine.IO session id -> its open websocket


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


def install(sio: Any) -> None:
    """Guard sio's Engine.IO websockets and Socket.IO packet handling (call once, after the server is built)."""
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
        if session is not None:
            session.handle_post_request = _guarded_post(sio, session)
        return await handle_connect(eio_sid, environ)

    async def on_message(eio_sid: str, data: Any) -> None:
        try:
            await handle_message(eio_sid, data)
        except (ValueError, TypeError, KeyError, IndexError) as exc:  # what decoding a malformed packet raises
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
                refusal = {'status': 'error', 'message': f'{data[0]!r} is a reserved event name'}
                reply = sio.packet_class(sio_packet.ACK, namespace=namespace or '/', id=id, data=[refusal])
                await sio._send_packet(eio_sid, reply)
            return
        await handle_event(eio_sid, namespace, id, data)

    eio.on('connect', on_connect)
    eio.on('message', on_message)
    sio._handle_event = on_event


def _guarded_post(sio: Any, session: Any) -> Any:
    """A polling session's POST handler that ends the session on a body Engine.IO cannot decode or accept."""
    handle_post = session.handle_post_request

    async def handle_post_request(environ: dict[str, Any]) -> Any:
        try:
            return await handle_post(environ)
        except eio_exceptions.EngineIOError:  # a body over max_http_buffer_size: Engine.IO answers 400 and disconnects
            await _close_now(sio, session)  # ... without waiting for a poll that may never come
            raise
        except (ValueError, TypeError, KeyError, IndexError) as exc:  # what decoding a malformed payload raises
            logger.warning(
                'dropping connection %s: malformed Engine.IO payload (%s: %s)',
                session.sid,
                type(exc).__name__,
                str(exc)[:80],
            )
            await _close_now(sio, session)
            raise eio_exceptions.EngineIOError('malformed payload') from None  # Engine.IO answers 400

    return handle_post_request


async def _close_now(sio: Any, session: Any) -> None:
    await session.close(wait=False, reason=sio.eio.reason.SERVER_DISCONNECT)


async def drop(sio: Any, eio_sid: str, why: str) -> None:
    """Close one client's connection now: its websocket with code 1002, or its polling session."""
    logger.warning('dropping connection %s: %s', eio_sid, why)
    lean = getattr(sio.eio.sockets.get(eio_sid), 'lean', None)  # a lean.LeanConnection
    if lean is not None:
        lean.close(PROTOCOL_ERROR, 'malformed Socket.IO packet')
        return
    websocket = _websockets.get(eio_sid)
    if websocket is not None:
        await websocket.close_with(PROTOCOL_ERROR, 'malformed Socket.IO packet')
        return
    session = sio.eio.sockets.get(eio_sid)
    if session is not None:  # polling: the CLOSE packet goes with the next poll; no waiting for it here
        await _close_now(sio, session)
