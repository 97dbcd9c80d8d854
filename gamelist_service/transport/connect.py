"""A namespace CONNECT answered where its frame arrives: a client joining a namespace without a task of its own.

On the normal path a `40` packet of a lean connection (a client joining a namespace) goes to a task
(LeanConnection.on_message), through python-engineio's receive, python-socketio's packet decoding and its
_handle_connect: pre_connect, the namespace's connect handler awaited through _trigger_event, the CONNECT reply
encoded, walked for binary data and sent, then the service's after_connect. In a connect storm that was about a third
of the server's CPU (bench/README.md, Storms).

Here a CONNECT on a lean connection with nothing of its own still on the normal path, to a namespace whose handler is
the service's namespace class as written, runs the same steps in the receive callback: python-socketio's manager
bookkeeping (pre_connect, connect, or disconnect when refused), the namespace's admit() (its connect handling, which
never awaits), the reply python-socketio would send (`40{"sid":"..."}`, or a CONNECT_ERROR with the refusal), and the
list due on connect when it is held in memory (else after_connect runs in a task, counted as the connection's packet
in flight). Anything else goes the normal way: an unknown namespace, a client already connected to it, a namespace
class whose connect handling a subclass changed, a manager or server that is not python-socketio's as measured,
libraries logging every packet. The bytes on the wire are the same on both paths: tests/test_connect.py.
"""

from __future__ import annotations

import logging
from typing import Any

import socketio
from socketio import base_manager
from socketio import packet as sio_packet

from ..metrics import NAMESPACE_CONNECTS
from . import fastpath

logger = logging.getLogger('gamelist_service.transport.connect')
_DIRECT = NAMESPACE_CONNECTS.labels('direct')

# what the namespace class offers for this (web.sockets.GameNamespace): admit() is its connect handling without
# awaiting, after_connect_now() its after_connect when that needs no wait
NAMESPACE_METHODS = ('trigger_event', '_connect', 'on_connect', 'admit', 'after_connect', 'after_connect_now')


def check() -> list[str]:
    """What answering a CONNECT in the receive callback needs of python-socketio and this environment lacks."""
    missing: list[str] = []
    for name in ('pre_connect', 'connect', 'is_pre_connected'):
        if not callable(getattr(base_manager.BaseManager, name, None)):
            missing.append(f'socketio BaseManager.{name}')
    try:
        sio = socketio.AsyncServer(async_mode='asgi', logger=False, engineio_logger=False)
        for name in ('environ', '_binary_packet', 'always_connect', 'packet_class', 'namespace_handlers'):
            if not hasattr(sio, name):
                missing.append(f'socketio.AsyncServer().{name}')
        pkt = sio_packet.Packet(encoded_packet='0/gameplay?x=1,{"since":3}')
        if (pkt.packet_type, pkt.namespace, pkt.data) != (sio_packet.CONNECT, '/gameplay', {'since': 3}):
            missing.append('python-socketio decodes a CONNECT packet differently')
        for namespace in ('/', '/n'):
            ours = reply(namespace, 'AbC-_12')
            theirs = '4' + sio_packet.Packet(sio_packet.CONNECT, {'sid': 'AbC-_12'}, namespace=namespace).encode()
            if ours != theirs:
                missing.append(f'python-socketio encodes a CONNECT reply as {theirs!r}, not {ours!r}')
        if socketio.exceptions.ConnectionRefusedError().error_args != {'message': 'Connection rejected by server'}:
            missing.append("socketio ConnectionRefusedError's default error_args changed")
    except Exception as exc:  # noqa: BLE001 - any failure of the probe means: do not use it
        missing.append(f'probe failed: {type(exc).__name__}: {exc}')
    return missing


def reply(namespace: str, sid: str) -> str:
    """The Engine.IO packet of python-socketio's CONNECT reply (a session id is URL-safe base64: no escaping)."""
    return '40' + ('' if namespace == '/' else namespace + ',') + '{"sid":"' + sid + '"}'


class ConnectResponder:
    """Answers namespace CONNECT packets of lean connections where they arrive; see the module docstring."""

    def __init__(self, sio: Any, manager: fastpath.FastAsyncManager, namespace_class: type) -> None:
        self.sio = sio
        self.manager = manager
        self.namespace_class = namespace_class
        self.enabled = True

    def disable(self, reason: str) -> None:
        if self.enabled:
            self.enabled = False
            logger.warning('namespace connects answered in place disabled, using the normal path: %s', reason)

    def answer(self, sock: Any, conn: Any, text: str) -> bool:
        """Answer this Engine.IO packet (`40...`) of a lean connection if it can be done here; False: not done."""
        if not self.enabled:
            return False
        try:
            pkt, handler, environ = self._ready(sock, text)
        except Exception as exc:  # noqa: BLE001 - a library changed shape: the normal path from now on
            self.disable(f'{type(exc).__name__}: {exc}')
            return False
        if handler is None:
            return False
        namespace = pkt.namespace or '/'
        manager = self.manager
        eio_sid = sock.sid
        sid = base_manager.BaseManager.pre_connect(manager, eio_sid, namespace)
        if sid is None:  # connected there already: the normal path answers it (python-socketio's error)
            return False
        fail_reason: Any = None
        try:
            # python-socketio hands the handler what the client sent only when it is not empty
            success = handler.admit(sid, environ, pkt.data or None)
        except socketio.exceptions.ConnectionRefusedError as exc:
            fail_reason, success = exc.error_args, False
        if success is False:
            if fail_reason is None:
                fail_reason = socketio.exceptions.ConnectionRefusedError().error_args
            refusal = self.sio.packet_class(sio_packet.CONNECT_ERROR, data=fail_reason, namespace=namespace)
            conn.write_text('4' + refusal.encode())
            manager.basic_disconnect(sid, namespace, ignore_queue=True)
        else:
            conn.write_text(reply(namespace, sid))
            base_manager.BaseManager.connect(manager, sid, namespace)
            if not handler.after_connect_now(sid):
                conn.run(handler.after_connect(sid))
        _DIRECT.inc()
        if logger.isEnabledFor(logging.DEBUG):
            logger.debug('namespace connect of %s to %s answered in place (%s)', eio_sid, namespace, success)
        return True

    def _ready(self, sock: Any, text: str) -> tuple[Any, Any, Any]:
        """The decoded packet, the namespace's handler and the session's environ; handler None: the normal path."""
        sio = self.sio
        manager = self.manager
        if not manager.enabled or sio.always_connect or sock.sid in sio._binary_packet:
            return None, None, None
        if sio.eio.logger.isEnabledFor(logging.INFO) or sio.logger.isEnabledFor(logging.INFO):
            return None, None, None  # the libraries log every packet: keep that
        pkt = sio.packet_class(encoded_packet=text[1:])
        if pkt.packet_type != sio_packet.CONNECT:
            return None, None, None
        handler = sio.namespace_handlers.get(pkt.namespace or '/')
        environ = sio.environ.get(sock.sid)
        if environ is None or not self._plain_handler(handler):
            return None, None, None
        return pkt, handler, environ

    def _plain_handler(self, handler: Any) -> bool:
        """The service's namespace class, with its connect handling as written (what admit() reproduces)."""
        base = self.namespace_class
        cls = type(handler)
        return isinstance(handler, base) and all(
            getattr(cls, name) is getattr(base, name) for name in NAMESPACE_METHODS
        )


def install(sio: Any, namespace_class: type) -> ConnectResponder | None:
    """Answer namespace CONNECTs in the receive callback of lean connections when check() passes."""
    manager = sio.manager
    if not isinstance(manager, fastpath.FastAsyncManager) or not manager.installed:
        return None
    if not all(callable(getattr(namespace_class, name, None)) for name in NAMESPACE_METHODS):
        return None
    if type(manager).pre_connect is not socketio.AsyncManager.pre_connect or (
        type(manager).connect is not socketio.AsyncManager.connect
    ):
        logger.warning('namespace connects answered in place disabled: the client manager overrides its connect')
        return None
    missing = check()
    if missing:
        logger.warning('namespace connects answered in place disabled: the installed libraries lack %s', missing)
        return None
    logger.info('namespace connects answered in place: a client joins a namespace without a task of its own')
    return ConnectResponder(sio, manager, namespace_class)
