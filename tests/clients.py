"""Socket.IO clients on the wire, for the tests that need every byte: bare TCP streams that speak websocket (and
polling, for an upgrade) by hand, and the frames they send."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import re
import struct
import zlib
from typing import Any, Self

import aiohttp
from websockets.utils import apply_mask as ws_apply_mask

from gamelist_service.transport import wsframe

from .helpers import MARKER

NAMESPACES = ('/', '/gameplay')  # the ones a RawClient joins
TIMESTAMP_RE = re.compile(rb'"timestamp":"([^"]*)"')  # the envelope's, blanked by RawClient.events
CLOSE_OPCODE = 0x8
MASK = b'\x37\xfa\x21\x3d'  # raw_frame's, unless given another


def raw_frame(first: int, payload: bytes, *, masked: bool = True, mask: bytes = MASK) -> bytes:
    """A frame built by hand, for the frames websockets refuses to write: first is the whole first byte."""
    size = len(payload)
    bit = 0x80 if masked else 0
    if size < 126:
        head = bytes((first, bit | size))
    elif size < 65536:
        head = struct.pack('!BBH', first, bit | 126, size)
    else:
        head = struct.pack('!BBQ', first, bit | 127, size)
    return head + (mask + ws_apply_mask(payload, mask) if masked else payload)


def masked(opcode: int, payload: bytes, fin: bool = True, mask: bool = True) -> bytes:
    """A client frame of any size, masked (with a random key) unless told otherwise."""
    return raw_frame((0x80 if fin else 0) | opcode, payload, masked=mask, mask=os.urandom(4))


class RawClient:
    """A websocket Socket.IO client on a bare TCP stream that records every server frame byte for byte."""

    def __init__(self, port: int, extensions: str | None = None) -> None:
        self.port = port
        self.extensions = extensions  # a Sec-WebSocket-Extensions offer (permessage-deflate), or none
        self.head = b''  # the handshake's answer
        self.frames: list[bytes] = []  # raw frames: header and payload as they came off the socket
        self.connected: set[str] = set()
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._task: asyncio.Task[None] | None = None

    async def _handshake(self, query: str = 'EIO=4&transport=websocket') -> None:
        """Open the TCP stream, send the websocket handshake (with the extensions offered, if any), check the 101,
        and start reading frames."""
        self._reader, self._writer = await asyncio.open_connection('127.0.0.1', self.port)
        key = base64.b64encode(os.urandom(16)).decode()
        self._writer.write(
            (
                f'GET /socket.io/?{query} HTTP/1.1\r\n'
                f'Host: 127.0.0.1:{self.port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n'
                f'Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n'
                + (f'Sec-WebSocket-Extensions: {self.extensions}\r\n' if self.extensions else '')
                + '\r\n'
            ).encode()
        )
        head = self.head = await asyncio.wait_for(self._reader.readuntil(b'\r\n\r\n'), 10)
        assert head.startswith(b'HTTP/1.1 101'), head
        if not self.extensions:
            assert b'sec-websocket-extensions' not in head.lower(), head  # none offered: plain frames
        self._task = asyncio.get_running_loop().create_task(self._read())

    async def connect(self) -> Self:
        await self._handshake()
        await self._wait(lambda: any(self._text(f).startswith('0{') for f in self.frames))
        for ns in NAMESPACES:
            self.send('40' if ns == '/' else f'40{ns},')
        await self._wait(lambda: self.connected == set(NAMESPACES))
        return self

    async def _wait(self, predicate: Any, timeout_s: float = 10.0) -> None:
        for _ in range(int(timeout_s / 0.02)):
            if predicate():
                return
            await asyncio.sleep(0.02)
        raise AssertionError(f'timed out; frames so far: {self.frames[-5:]!r}')

    @staticmethod
    def _text(frame: bytes) -> str:
        return RawClient.message(frame).decode('utf-8', 'replace')

    @staticmethod
    def payload(frame: bytes) -> bytes:
        length = frame[1] & 0x7F
        return frame[{126: 4, 127: 10}.get(length, 2) :]

    @staticmethod
    def message(frame: bytes) -> bytes:
        """The frame's message: its payload, inflated when RSV1 says it is compressed (no context takeover)."""
        body = RawClient.payload(frame)
        if frame[0] & 0x40:
            return zlib.decompressobj(-15).decompress(body + b'\x00\x00\xff\xff')
        return body

    async def _read(self) -> None:
        assert self._reader is not None
        while True:
            head = await self._reader.readexactly(2)
            assert not head[1] & 0x80, 'server frames are never masked'
            length = head[1] & 0x7F
            ext = b''
            if length == 126:
                ext = await self._reader.readexactly(2)
                length = struct.unpack('!H', ext)[0]
            elif length == 127:
                ext = await self._reader.readexactly(8)
                length = struct.unpack('!Q', ext)[0]
            frame = head + ext + await self._reader.readexactly(length)
            self.frames.append(frame)
            text = self._text(frame)
            if head[0] & 0x0F == 0x9:
                self._send_frame(0xA, self.payload(frame))
            elif text == '2':
                self.send('3')
            elif text.startswith('40{'):
                self.connected.add('/')
            elif text.startswith('40/') and '{' in text:
                self.connected.add(text[2:].split(',', 1)[0])

    def send(self, text: str) -> None:
        self._send_frame(0x1, text.encode())

    def _send_frame(self, opcode: int, data: bytes) -> None:
        assert self._writer is not None and len(data) < 126
        mask = os.urandom(4)
        masked = bytes(b ^ mask[i % 4] for i, b in enumerate(data))
        self._writer.write(bytes([0x80 | opcode, 0x80 | len(data)]) + mask + masked)

    def events(self) -> list[bytes]:
        """The event frames of the published lists, with the envelope's timestamp blanked (it is the time of the
        broadcast; its length is fixed, so the frame header is unchanged)."""
        marked = [f for f in self.frames if MARKER.encode() in f]
        return [TIMESTAMP_RE.sub(lambda m: b'"timestamp":"' + b'T' * len(m.group(1)) + b'"', f) for f in marked]

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        if self._writer is not None:
            self._writer.close()


class WireClient(RawClient):
    """A raw websocket client that can also send frames the protocol forbids, and sees the server close."""

    def send_raw(self, data: bytes) -> None:
        assert self._writer is not None
        self._writer.write(data)

    def close_code(self) -> int | None:
        for frame in self.frames:
            if frame[0] & 0x0F == CLOSE_OPCODE:
                payload = RawClient.payload(frame)
                return struct.unpack('!H', payload[:2])[0] if len(payload) >= 2 else wsframe.NO_STATUS
        return None

    def ended(self) -> bool:
        """The server closed the TCP connection (the reader met the end of the stream)."""
        return self._task is not None and self._task.done()


class UpgradeClient(WireClient):
    """A raw client that starts on polling and upgrades to websocket, step by step, as socket.io clients do."""

    def __init__(self, port: int) -> None:
        super().__init__(port)
        self.sid = ''
        self.http: aiohttp.ClientSession | None = None

    def url(self, transport: str) -> str:
        return f'http://127.0.0.1:{self.port}/socket.io/?EIO=4&transport={transport}&sid={self.sid}'

    async def open_polling(self) -> None:
        self.http = aiohttp.ClientSession()
        async with self.http.get(f'http://127.0.0.1:{self.port}/socket.io/?EIO=4&transport=polling') as response:
            body = await response.text()
        assert body.startswith('0{'), body
        self.sid = json.loads(body[1:])['sid']

    async def poll(self) -> str:
        assert self.http is not None
        async with self.http.get(self.url('polling')) as response:
            return f'{response.status} {await response.text()}'

    async def open_websocket(self) -> None:
        await self._handshake(f'EIO=4&transport=websocket&sid={self.sid}')

    def texts(self) -> list[str]:
        return [RawClient._text(f) for f in self.frames]

    async def close(self) -> None:
        await super().close()
        if self.http is not None:
            await self.http.close()


class GuessClient(WireClient):
    """A raw websocket client that opens the Engine.IO session and joins only the namespaces it is told to."""

    async def open(self, namespaces: tuple[str, ...] = ()) -> None:
        await self._handshake()
        await self._wait(lambda: any(self._text(f).startswith('0{') for f in self.frames))
        for ns in namespaces:
            self.send('40' if ns == '/' else f'40{ns},')
        await self._wait(lambda: self.connected == set(namespaces))
