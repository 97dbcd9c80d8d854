"""Several workers without a sticky load balancer: every request of an Engine.IO session reaches the worker holding it.

The kernel gives each new connection to any of the workers of `serve --workers N` (each listens on a socket of its
own, reuseport.py, or they share one); a polling session (the socket.io clients' default start) makes many requests,
on new connections too. Here a session id names its worker: the last 3 of the 15 bytes python-engineio's ids encode
carry the worker's pid (server.SessionIds). When a request of a session (`sid=` in its query) reaches another
worker, that worker hands the connection itself over before Sanic parses it: the socket's file descriptor and the
bytes already read go to the owner over a unix socket (SCM_RIGHTS), and the owner serves the connection as if it had
accepted it, from that request on. Handshakes, and websockets that connect directly (no sid), stay where they land:
the direct path costs one look at the request line.

Each worker listens on a Linux abstract unix socket named after the port and its pid (no file to clean up, and no
path-length limit), SOCK_SEQPACKET so that each message is one connection with its bytes, and takes connections only
from processes of its own user (SO_PEERCRED). A request for a worker that is gone (killed, restarted) stays where it
landed, and python-engineio answers it as any unknown session (400): the client starts a new session.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import logging
import os
import socket
import struct
from collections.abc import Callable
from typing import Any

from ..metrics import HANDOFFS

logger = logging.getLogger('gamelist_service.transport.handoff')
_HANDED = HANDOFFS.labels('handed')
_ADOPTED = HANDOFFS.labels('adopted')

MAX_MESSAGE = 256 * 1024  # the bytes read with a request (a polling POST carries at most max_http_buffer_size)
_PREFIXES = (b'GET /socket.io/', b'POST /socket.io/')
_CRED = struct.Struct('3i')  # struct ucred: pid, uid, gid


def address(port: int, pid: int) -> bytes:
    """The abstract unix socket of the worker with this pid, serving this port."""
    return b'\0gamelist-service-%d-%d' % (port, pid)


def owner_of(sid: str) -> int | None:
    """The pid a session id names (server.SessionIds with an owner), or None for anything else."""
    if len(sid) != 20:
        return None
    try:
        raw = base64.urlsafe_b64decode(sid)
    except (binascii.Error, ValueError):
        return None
    return int.from_bytes(raw[12:15], 'big') if len(raw) == 15 else None


def request_sid(data: bytes) -> str | None:
    """The sid of an Engine.IO request whose request line is in data (`GET /socket.io/?EIO=4&...&sid=X HTTP/1.1`)."""
    if not data.startswith(_PREFIXES):
        return None
    end = data.find(b' HTTP/', 0, 2048)
    if end < 0:
        return None
    target = data[:end]
    at = target.find(b'sid=')
    while at > 0 and target[at - 1 : at] not in (b'?', b'&'):
        at = target.find(b'sid=', at + 4)
    if at < 0:
        return None
    value = target[at + 4 :].split(b'&', 1)[0]
    return value.decode('ascii', 'replace') if len(value) == 20 else None


class Handoff:
    """This worker's side: the listener that adopts connections, and the senders to the other workers."""

    def __init__(self, port: int, adopt: Callable[[socket.socket, bytes], Any], pid: int | None = None) -> None:
        self.port = port
        self.pid = os.getpid() if pid is None else pid
        self.adopt = adopt  # serves a connection handed over, with the bytes read so far (web: the Sanic protocol)
        self._listener: socket.socket | None = None
        self._peers: dict[int, socket.socket] = {}  # pid -> connected sender
        self._inbound: set[socket.socket] = set()
        self._loop: asyncio.AbstractEventLoop | None = None

    def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        listener.bind(address(self.port, self.pid))
        listener.listen(64)
        listener.setblocking(False)
        self._listener = listener
        self._loop.add_reader(listener.fileno(), self._accept)
        logger.debug('handoff listener of worker %d on port %d', self.pid, self.port)

    def stop(self) -> None:
        loop = self._loop
        for sock in [*self._inbound, *([self._listener] if self._listener else [])]:
            if loop is not None:
                with contextlib.suppress(Exception):
                    loop.remove_reader(sock.fileno())
            sock.close()
        self._inbound.clear()
        self._listener = None
        for peer in self._peers.values():
            peer.close()
        self._peers.clear()

    def _accept(self) -> None:
        assert self._listener is not None and self._loop is not None
        try:
            conn, _ = self._listener.accept()
        except (BlockingIOError, InterruptedError):
            return
        _pid, uid, _gid = _CRED.unpack(conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _CRED.size))
        if uid != os.geteuid():
            logger.warning('handoff: refused a connection from uid %d (this service runs as uid %d)', uid, os.geteuid())
            conn.close()
            return
        conn.setblocking(False)
        self._inbound.add(conn)
        self._loop.add_reader(conn.fileno(), self._receive, conn)

    def _receive(self, conn: socket.socket) -> None:
        assert self._loop is not None
        try:
            data, fds, _flags, _addr = socket.recv_fds(conn, MAX_MESSAGE, 4)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data, fds = b'', []
        if not data and not fds:  # the sending worker closed its end
            self._loop.remove_reader(conn.fileno())
            self._inbound.discard(conn)
            conn.close()
            return
        for fd in fds[1:]:  # one connection per message; anything else is not ours to keep
            os.close(fd)
        if fds:
            _ADOPTED.inc()
            self.adopt(socket.socket(fileno=fds[0]), data)

    def take(self, transport: Any, data: bytes) -> bool:
        """Hand the connection over to the worker owning the session data's request names; False: serve it here.

        The caller stops using the transport when this returns True (it is closed: the owner holds the socket).
        """
        sid = request_sid(data)
        if sid is None:
            return False
        owner = owner_of(sid)
        if owner is None or owner == self.pid or len(data) > MAX_MESSAGE:
            return False
        sock = transport.get_extra_info('socket')
        if sock is None:
            return False
        peer = self._peer(owner)
        if peer is None:
            return False  # that worker is gone: python-engineio answers the unknown session
        try:
            socket.send_fds(peer, [data], [sock.fileno()])
        except OSError as exc:  # its queue is full or it went away meanwhile: the request is answered here
            logger.info('handoff to worker %d failed (%s): answered here', owner, exc)
            self._peers.pop(owner, None)
            peer.close()
            return False
        _HANDED.inc()
        transport.pause_reading()
        transport.close()  # our descriptor only: the socket stays open in the owner (no FIN is sent)
        return True

    def _peer(self, pid: int) -> socket.socket | None:
        peer = self._peers.get(pid)
        if peer is not None:
            return peer
        peer = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        try:
            peer.connect(address(self.port, pid))
        except OSError:
            peer.close()
            return None
        peer.settimeout(0.2)  # a full queue (the owner stalled) waits this long at most, then is answered here
        self._peers[pid] = peer
        return peer
