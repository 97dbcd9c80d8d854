"""A leaner Engine.IO websocket session: liveness by a timestamp instead of a timeout around every message.

python-engineio's AsyncSocket._websocket_handler reads each message under asyncio.wait_for (a task and a timer per
message) and its writer waits for its queue under wait_for too; each side closes the connection when nothing passed
through it for ping_interval + ping_timeout. So every ping and every pong had to go through the queue, the writer
task, Sanic's websocket lock, Sanic's frame assembler and the reader task: about 0.6 ms of CPU per ping-pong
(measured at 10,000 clients, 400 pings a second: bench/README.md).

Session runs a websocket that connected directly (not an upgrade from polling, which keeps python-engineio's handler):
- the reader awaits each message without a timeout, and a watchdog timer closes the websocket when the client has
  sent nothing for ping_interval + ping_timeout (the same rule, measured from the last bytes received);
- the writer waits for its queue without a timeout (the watchdog is the liveness check);
- a PING to an idle websocket is written directly (the same frame; FastAsyncManager.write_now's checks), a PONG is
  taken in the receive callback (screenpath) and does what python-engineio's receive does: schedule_ping().
Everything else is python-engineio's code path: receive(), send(), close(), the packets and their order.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

import engineio
from engineio import exceptions as eio_exceptions
from engineio import packet as eio_packet
from engineio.async_socket import AsyncSocket

from . import fastpath

logger = logging.getLogger('gamelist_service.session')

SEEN_ATTR = '_gamelist_seen'  # on the AsyncSocket: monotonic time of the last bytes from the client
PING = eio_packet.Packet(eio_packet.PING)
PONG_FRAME = b'3'


def check() -> list[str]:
    """What Session needs of python-engineio and this environment lacks; empty when it can run."""
    missing = [
        f'AsyncSocket.{name}'
        for name in ('receive', 'send', 'close', 'schedule_ping', '_websocket_handler')
        if not hasattr(AsyncSocket, name)
    ]
    try:
        server = engineio.AsyncServer(async_mode='sanic')
        sock = AsyncSocket(server, 'check')
        missing += [
            f'AsyncSocket().{name}'
            for name in ('connected', 'upgraded', 'closed', 'closing', 'queue', 'server', 'sid')
            if not hasattr(sock, name)
        ]
        if not hasattr(server.reason, 'TRANSPORT_CLOSE'):
            missing.append('engineio.AsyncServer.reason.TRANSPORT_CLOSE')
        for name in ('ping_interval', 'ping_timeout', 'max_http_buffer_size', 'logger'):
            if not hasattr(server, name):
                missing.append(f'engineio.AsyncServer().{name}')
    except Exception as exc:  # noqa: BLE001 - any failure of the probe means: do not use it
        missing.append(f'probe failed: {type(exc).__name__}: {exc}')
    return missing


def install(manager: Any) -> bool:
    """Run directly connected websockets as Session when the broadcast fast path is installed; False if not."""
    if not isinstance(manager, fastpath.FastAsyncManager) or not manager.installed:
        return False
    missing = check()
    if missing:
        logger.warning(
            "lean websocket sessions off, python-engineio's handler runs them: missing %s", ', '.join(missing)
        )
        return False
    manager.session_factory = lambda sock: Session(sock, manager.write_eio)
    return True


def mark_seen(sock: Any) -> None:
    if hasattr(sock, SEEN_ATTR):
        setattr(sock, SEEN_ATTR, time.monotonic())


def take_pong(sock: Any) -> bool:
    """A PONG frame from this session, in the receive callback; False: the normal path takes it."""
    if not hasattr(sock, SEEN_ATTR) or sock.closed or sock.server.logger.isEnabledFor(logging.INFO):
        return False  # not a Session (its reader is python-engineio's), or python-engineio logs every packet
    sock.schedule_ping()
    return True


class Session:
    """Runs one websocket session of an engineio AsyncSocket (given to the Sanic driver as its handler)."""

    def __init__(self, sock: Any, write_now: Any) -> None:
        self.__self__ = sock  # like the bound method it replaces: the driver wrappers look up the socket here
        self.sock = sock
        self.write_now = write_now  # (eio_sid, engineio packet) -> bool: written directly to an idle websocket

    async def __call__(self, ws: Any) -> None:
        sock = self.sock
        server = sock.server
        sock.connected = True
        sock.upgraded = True
        setattr(sock, SEEN_ATTR, time.monotonic())
        plain_send = sock.send

        async def send(pkt: Any) -> None:
            if pkt.packet_type == eio_packet.PING and self.write_now(sock.sid, pkt):
                return
            await plain_send(pkt)

        sock.send = send
        writer_task = asyncio.ensure_future(self._writer(ws))
        limit = server.ping_interval + server.ping_timeout
        loop = asyncio.get_running_loop()
        closing: list[asyncio.Task[Any]] = []

        timer: list[asyncio.TimerHandle] = []

        def watchdog() -> None:
            idle = time.monotonic() - getattr(sock, SEEN_ATTR)
            if idle < limit:
                timer[0] = loop.call_later(limit - idle, watchdog)
                return
            logger.debug('%s: nothing from the client for %.0f s, closing', sock.sid, idle)
            closing.append(loop.create_task(ws.close()))

        timer.append(loop.call_later(limit, watchdog))
        try:
            await self._read(ws)
        finally:
            timer[0].cancel()
            # Sanic cancels this task when the connection drops, possibly while the end runs: the end runs anyway
            await asyncio.shield(self._end(writer_task, closing))

    async def _end(self, writer_task: asyncio.Future[None], closing: list[asyncio.Task[Any]]) -> None:
        sock = self.sock
        sock.queue.put_nowait(None)  # unlock the writer task so it can exit
        await asyncio.gather(writer_task, return_exceptions=True)
        await sock.close(wait=False, abort=True, reason=sock.server.reason.TRANSPORT_CLOSE)
        if closing:
            await asyncio.gather(*closing, return_exceptions=True)

    async def _read(self, ws: Any) -> None:
        sock = self.sock
        server = sock.server
        while True:
            try:
                data = await ws.wait()
            except (Exception, asyncio.CancelledError):  # noqa: BLE001 - as python-engineio: closed (Sanic's recv
                return  # raises CancelledError when the client's close frame comes) or broken: the session ends
            if data is None or len(data) > server.max_http_buffer_size:
                return
            setattr(sock, SEEN_ATTR, time.monotonic())
            try:
                await sock.receive(eio_packet.Packet(encoded_packet=data))
            except eio_exceptions.UnknownPacketError:
                pass
            except eio_exceptions.SocketIsClosedError:
                return
            except Exception:  # as python-engineio: log it, keep the session
                server.logger.exception('Unknown receive error')

    async def _writer(self, ws: Any) -> None:
        queue = self.sock.queue
        while True:
            packets = [await queue.get()]
            queue.task_done()
            while packets[-1] is not None:
                try:
                    pkt = queue.get_nowait()
                except asyncio.QueueEmpty:
                    break
                queue.task_done()
                packets.append(pkt)
            if packets[-1] is None:
                if len(packets) > 1:
                    queue.put_nowait(None)  # as python-engineio's poll: send what came before, then stop
                packets.pop()
                if not packets:
                    break
            try:
                for pkt in packets:
                    await ws.send(pkt.encode())
            except Exception:  # noqa: BLE001 - as python-engineio: a failed send ends the writer
                break
        await ws.close()
