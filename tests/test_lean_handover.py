"""A websocket taken over at its first bytes (lean.direct_handshake) leaves nothing of Sanic's connection behind:
its task ends, its timeout timer is cancelled (re-arming every 30 s, it held the protocol, two asyncio Events and
its ConnInfo for Sanic's whole keep-alive time: 2.3 KB per connection), and the environ no longer refers to it."""

from __future__ import annotations

import asyncio
import base64
import os
from typing import Any

from gamelist_service.transport import lean


class FakeTransport:
    def __init__(self) -> None:
        self.written = b''
        self.protocol: Any = None

    def is_closing(self) -> bool:
        return False

    def get_protocol(self) -> Any:
        return self.protocol

    def write(self, data: bytes) -> None:
        self.written += data


class FakeSanicProtocol:
    def __init__(self, transport: FakeTransport, timer: asyncio.TimerHandle, task: asyncio.Task[None]) -> None:
        self._http = None  # a direct handshake: Sanic never parsed a request
        self.transport: Any = transport
        self.counted_ip = '127.0.0.1'
        self.recv_buffer = bytearray()
        self.connections = {self}
        self._task = task
        self._callback_check_timeouts: asyncio.TimerHandle | None = timer


async def test_a_direct_takeover_cancels_sanics_task_and_timer() -> None:
    loop = asyncio.get_running_loop()
    transport = FakeTransport()
    timer = loop.call_later(30, lambda: None)
    task = loop.create_task(asyncio.sleep(3600))
    protocol = FakeSanicProtocol(transport, timer, task)
    transport.protocol = protocol
    hub = lean.Hub.__new__(lean.Hub)
    hub.deflate = False
    key = base64.b64encode(os.urandom(16)).decode()
    headers = {'sec-websocket-key': key, 'sec-websocket-version': '13'}
    answered = hub._switch(transport, headers, direct=True)  # the 101 written now (no defer)
    assert answered is not None and answered[0] is transport and answered[2] == '127.0.0.1'
    assert transport.written.startswith(b'HTTP/1.1 101 Switching Protocols\r\n')
    assert timer.cancelled() and protocol._callback_check_timeouts is None
    await asyncio.sleep(0)
    assert task.cancelled()
    assert protocol not in protocol.connections and protocol.transport is not transport


def test_the_environ_lets_the_protocol_go() -> None:
    environ: dict[str, Any] = {lean.DIRECT_PROTOCOL: object(), 'REMOTE_ADDR': '127.0.0.1'}
    lean._release_request(environ)
    assert lean.DIRECT_PROTOCOL not in environ and environ['REMOTE_ADDR'] == '127.0.0.1'
