"""main:screen answered where its frame arrives: the receive half of the fast path.

On the normal path a `main:screen` request passes Sanic's frame assembler, Engine.IO's receive loop, two asyncio tasks
(Engine.IO's message handler and python-socketio's event handler), the namespace's handler, and python-socketio's
packet encoder, which walks the whole reply looking for binary data and JSON-encodes the 4 KB list again for every
request (the CPU per ack on each path: bench/README.md).

Here the request is looked at where its frame arrives: in a lean connection's data_received (lean.py, a websocket
that connected directly), or in the Sanic websocket's data_received, which lets websockets parse the frames as before
(a websocket upgraded from polling). A frame that is exactly a main:screen request
(`42["main:screen"]`, `42/ns,7["main:screen"]`, with or without an ack id) from a client connected to that namespace,
whose list is held in memory (service.ListCache, keyed by version), whose event bucket has a token, and whose
connection can take a frame now (fastpath.direct_transport: open, and for a Sanic websocket nothing queued or being
written) is answered in place: the reply is the bytes
python-socketio would send (the list's JSON is encoded once per version and spliced into the envelope), framed and
written to the transport. Any other frame, and every frame after it in the same read, goes the normal way, in order;
so does every request while a read's earlier frames are still on their way through the normal path. The bytes on
the wire are the same on both paths: tests/test_screenpath.py.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import time
from collections.abc import Sequence
from typing import Any

from engineio import packet as eio_packet
from socketio import packet as sio_packet

from ..core.lists import MAIN_SCREEN_MESSAGE, envelope, utc_now_iso
from ..core.service import GamelistService
from ..metrics import SCREEN_REQUESTS
from . import fastpath, wsframe

logger = logging.getLogger('gamelist_service.transport.screen')
_DIRECT = SCREEN_REQUESTS.labels('direct')
_HANDLER = SCREEN_REQUESTS.labels('handler')

try:
    from sanic.server.websockets.impl import WebsocketImplProtocol
    from websockets.frames import Frame, Opcode
    from websockets.protocol import State
    from websockets.server import ServerProtocol

    _IMPORT_ERROR: str | None = None
except ImportError as exc:  # pragma: no cover - only with other library versions
    _IMPORT_ERROR = f'{type(exc).__name__}: {exc}'

EVENT = 'main:screen'
# the request exactly: an event packet, an optional namespace (no query), an optional ack id, no arguments
REQUEST = re.compile(r'42(?:(/[^,?]*),)?([0-9]{1,18})?\["main:screen"\]')
_DATA = '\x00gamelist-data\x00'  # stands for the list in the envelope; json.dumps gives it as below
_DATA_JSON = json.dumps(_DATA)
_TIME = '\x00gamelist-time\x00'  # stands for the reply's timestamp
_TIME_JSON = json.dumps(_TIME)
TASK_ATTR = '_gamelist_receive_task'  # on the Sanic websocket: its last read's task on the normal path


def check() -> list[str]:
    """What answering in the receive callback needs and this environment lacks; empty when it can run."""
    if _IMPORT_ERROR is not None:
        return [_IMPORT_ERROR]
    missing: list[str] = []
    for name in ('data_received', 'async_data_received'):  # its ws_proto and io_proto: fastpath.check()
        if not hasattr(WebsocketImplProtocol, name):
            missing.append(f'WebsocketImplProtocol.{name}')
    if '__slots__' in vars(WebsocketImplProtocol):
        missing.append('WebsocketImplProtocol has __slots__ (its data_received cannot be set per connection)')
    for name in ('receive_data', 'data_to_send', 'events_received'):
        if not hasattr(ServerProtocol, name):
            missing.append(f'websockets ServerProtocol.{name}')
    if sio_packet.Packet.json is not json and getattr(sio_packet.Packet.json, 'dumps', None) is not json.dumps:
        missing.append("socketio.packet.Packet.json is not the standard library's json")
    try:
        pkt = sio_packet.Packet(sio_packet.ACK, namespace='/n', id=7, data=[{'a': 'é'}])
        if eio_packet.Packet(eio_packet.MESSAGE, pkt.encode()).encode() != '43/n,7[{"a":"\\u00e9"}]':
            missing.append('python-socketio encodes an ACK packet differently')
        frame = Frame(Opcode.TEXT, b'x')
        if not (frame.fin and frame.opcode is Opcode.TEXT and frame.data == b'x' and State.OPEN):
            missing.append('websockets Frame changed')
    except Exception as exc:  # noqa: BLE001 - any failure of the probe means: do not use it
        missing.append(f'probe failed: {type(exc).__name__}: {exc}')
    return missing


class ScreenResponder:
    """Answers main:screen requests in the Sanic websocket's data_received; see the module docstring."""

    def __init__(
        self, sio: Any, service: GamelistService, manager: fastpath.FastAsyncManager, namespace_class: Any
    ) -> None:
        self.sio = sio
        self.service = service
        self.manager = manager
        self.namespace_class = namespace_class  # sockets.GameNamespace, whose main:screen handling this reproduces
        self.enabled = True
        # list name -> (the data, the reply's JSON around its timestamp: for an emit, for an ack)
        self._encoded: dict[str, tuple[dict[str, Any], tuple[tuple[str, str], tuple[str, str]]]] = {}

    def disable(self, reason: str) -> None:
        if self.enabled:
            self.enabled = False
            logger.warning('main:screen direct answers disabled, using the normal path: %s', reason)

    def attach(self, sock: Any, ws: Any) -> None:
        """Route this connection's received bytes through data_received below (called once per websocket)."""
        if not self.enabled or getattr(ws, TASK_ATTR, False) is not False:
            return
        setattr(ws, TASK_ATTR, None)
        ws.data_received = lambda data: self.data_received(sock, ws, data)

    def data_received(self, sock: Any, ws: Any, data: bytes) -> None:
        """Sanic's WebsocketImplProtocol.data_received, answering main:screen requests before the normal path."""
        proto = ws.ws_proto
        proto.receive_data(data)
        to_send = proto.data_to_send()
        events = proto.events_received()
        if events and not to_send and self.enabled:
            previous = getattr(ws, TASK_ATTR, None)
            if previous is None or previous.done():  # nothing of an earlier read still on its way
                events = self._answer(sock, events)  # answer_text disables itself if a library changed shape
        if to_send or events:
            setattr(ws, TASK_ATTR, asyncio.get_running_loop().create_task(ws.async_data_received(to_send, events)))

    def _answer(self, sock: Any, events: Sequence[Any]) -> Sequence[Any]:
        """Answer the leading main:screen requests; returns the events for the normal path (from the first other)."""
        for index, event in enumerate(events):
            if not isinstance(event, Frame) or event.opcode is not Opcode.TEXT or not event.fin:
                return events[index:]
            if not self.answer_text(sock, bytes(event.data).decode('utf-8', 'replace')):
                return events[index:]
        return ()

    def answer_text(self, sock: Any, text: str) -> bool:
        """Answer this Engine.IO packet if it is a main:screen request that can be answered here; False: not done."""
        match = REQUEST.fullmatch(text)
        if match is None or not self.enabled:
            return False
        try:
            return self._answer_one(sock, match.group(1) or '/', match.group(2))
        except Exception as exc:  # noqa: BLE001 - a library changed shape: the normal path from now on
            self.disable(f'{type(exc).__name__}: {exc}')
            return False

    def _answer_one(self, sock: Any, namespace: str, ack_id: str | None) -> bool:
        sio = self.sio
        handler = sio.namespace_handlers.get(namespace)
        if not self._plain_handler(handler) or not self.manager.enabled:
            return False
        eio = sio.eio
        manager = sio.manager
        eio_sid = sock.sid
        sid = manager.sid_from_eio_sid(eio_sid, namespace)
        if sid is None or not manager.is_connected(sid, namespace):
            return False  # the normal path logs it and drops the event
        if eio.logger.isEnabledFor(logging.INFO) or sio.logger.isEnabledFor(logging.INFO):
            return False  # the libraries log every packet: keep that
        data = self.service.cached(handler.settings.list)
        if data is None or eio_sid in self.manager._pending:
            _HANDLER.inc()
            return False
        transport = fastpath.direct_transport(sock, time.time(), eio.ping_timeout, self.manager.clock())
        if transport is None:
            _HANDLER.inc()
            return False
        limiter = getattr(sio, 'limiter', None)
        lean = getattr(sock, 'lean', None)  # a lean connection counted it where it arrived
        if limiter is not None and lean is None and not limiter.allow_event(eio_sid):
            _HANDLER.inc()
            return False  # the normal path refuses it, with the error ack, and acts on the limit
        text = self.encode(handler.settings.list, data, namespace, ack_id)
        # compressed like any message when the connection negotiated permessage-deflate (lean.frame_for)
        transport.write(lean.frame_for(text.encode('utf-8')) if lean is not None else wsframe.text_frame(text))
        _DIRECT.inc()
        if logger.isEnabledFor(logging.DEBUG):
            logger.debug('main:screen answered directly: %s on %s', f'ack {ack_id}' if ack_id else 'emit', namespace)
        return True

    def _plain_handler(self, handler: Any) -> bool:
        """The service's namespace class, with its main:screen handling as written (what the answer reproduces)."""
        base = self.namespace_class
        cls = type(handler)
        return (
            isinstance(handler, base)
            and cls.trigger_event is base.trigger_event
            and cls.on_main_screen is base.on_main_screen
        )

    def encode(self, list_name: str, data: dict[str, Any], namespace: str, ack_id: str | None) -> str:
        """The Engine.IO packet python-socketio sends for the handler's reply (its ack, or its emit to the sender)."""
        held = self._encoded.get(list_name)
        if held is None or held[0] is not data:
            held = (data, _pieces(data))
            self._encoded[list_name] = held
        if ack_id is not None:
            before, after = held[1][1]
            head = '43' + ('' if namespace == '/' else namespace + ',') + str(int(ack_id))
        else:
            before, after = held[1][0]
            head = '42' + ('' if namespace == '/' else namespace + ',')
        return head + before + utc_now_iso() + after  # the timestamp is ASCII: its JSON is itself in quotes


def _pieces(data: dict[str, Any]) -> tuple[tuple[str, str], tuple[str, str]]:
    """The reply's JSON around its timestamp, for an emit and for an ack: encoded once per version of the list."""
    reply = envelope({}, EVENT, MAIN_SCREEN_MESSAGE)
    reply['data'] = _DATA  # in their places: json.dumps keeps the order of the keys
    reply['timestamp'] = _TIME
    data_json = json.dumps(data, separators=(',', ':'))
    pieces = []
    for args in ([EVENT, reply], [reply]):
        before, _, after = json.dumps(args, separators=(',', ':')).partition(_TIME_JSON)
        before, after = before.replace(_DATA_JSON, data_json, 1), after.replace(_DATA_JSON, data_json, 1)
        pieces.append((before + '"', '"' + after))
    return pieces[0], pieces[1]


def install(sio: Any, service: GamelistService, namespace_class: Any) -> ScreenResponder | None:
    """Answer main:screen in the receive callback when the broadcast fast path is installed and check() passes."""
    manager = sio.manager
    if not isinstance(manager, fastpath.FastAsyncManager) or not manager.installed:
        return None
    missing = check()
    if missing:
        logger.warning('main:screen direct answers disabled: the installed libraries lack %s', ', '.join(missing))
        return None
    responder = ScreenResponder(sio, service, manager, namespace_class)
    manager.on_websocket.append(responder.attach)
    logger.info('main:screen direct answers on: requests for a list held in memory are answered where they arrive')
    return responder
