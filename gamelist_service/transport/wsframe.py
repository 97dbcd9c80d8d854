"""WebSocket frames (RFC 6455) as a server sees them: unmasked frames out, masked client frames in.

Used by lean.py, which runs a websocket connection without Sanic's and websockets' per-connection machinery. The one
extension is permessage-deflate (RFC 7692), negotiated by negotiate_deflate() with no context takeover either way:
each compressed message stands alone, so one compressed frame serves every client that negotiated it, and a client
message is inflated on its own (bounded by max_size: no decompression bombs). Without it every RSV bit must be 0.
Client frames must be masked.
Fragmented messages are reassembled, control frames may come between the fragments, and a message longer than
max_size, or in more than MAX_FRAGMENTS frames, is refused with close code 1009. Reading is linear in the bytes
received, whatever the sizes of the reads. The bytes written are the ones websockets writes for the same frame:
tests/test_wsframe.py compares them.
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Callable, Mapping

_apply_mask_c: Callable[[bytes, bytes], bytes] | None
try:  # websockets' C helper (a dependency already, through Sanic); the pure Python one below otherwise
    from websockets.speedups import apply_mask as _apply_mask_c
except ImportError:  # pragma: no cover - only without websockets' compiled extension
    _apply_mask_c = None

CONTINUATION, TEXT, BINARY, CLOSE, PING, PONG = 0x0, 0x1, 0x2, 0x8, 0x9, 0xA
DATA_OPCODES = frozenset((CONTINUATION, TEXT, BINARY))
CONTROL_OPCODES = frozenset((CLOSE, PING, PONG))

# close codes
NORMAL, GOING_AWAY, PROTOCOL_ERROR, INVALID_DATA, TOO_BIG, INTERNAL_ERROR = 1000, 1001, 1002, 1007, 1009, 1011
NO_STATUS = 1005  # a close frame without a code (never sent in a frame)
DEFLATE_TAIL = b'\x00\x00\xff\xff'  # what a sync flush ends with; RFC 7692 takes it off the wire
RSV1 = 0x40
MAX_FRAGMENTS = 1024  # frames one message may come in: each is held until the last one (1 byte each is no limit)
_ALLOWED_CODES = frozenset((1000, 1001, 1002, 1003, 1007, 1008, 1009, 1010, 1011, 1012, 1013, 1014))


class FrameError(Exception):
    """A client frame the protocol forbids; the connection closes with code and reason."""

    def __init__(self, code: int, reason: str) -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason


def apply_mask(data: bytes, mask: bytes) -> bytes:
    if _apply_mask_c is not None:
        return _apply_mask_c(data, mask)
    return _apply_mask_py(data, mask)


def _apply_mask_py(data: bytes, mask: bytes) -> bytes:
    size = len(data)
    if not size:
        return b''
    repeated = (mask * (size // 4 + 1))[:size]
    return (int.from_bytes(data, 'big') ^ int.from_bytes(repeated, 'big')).to_bytes(size, 'big')


def frame(opcode: int, payload: bytes) -> bytes:
    """One final, unmasked frame (what a server sends)."""
    size = len(payload)
    if size < 126:
        return bytes((0x80 | opcode, size)) + payload
    if size < 65536:
        return struct.pack('!BBH', 0x80 | opcode, 126, size) + payload
    return struct.pack('!BBQ', 0x80 | opcode, 127, size) + payload


def text_frame(text: str) -> bytes:
    return frame(TEXT, text.encode('utf-8'))


def deflated_frame(opcode: int, payload: bytes, window_bits: int = 15, level: int = 6) -> bytes:
    """One final frame whose payload is compressed on its own (permessage-deflate, no context takeover): RSV1 set.

    The same bytes serve every client that negotiated the extension with at least this window."""
    compressor = zlib.compressobj(level, zlib.DEFLATED, -window_bits)
    body = compressor.compress(payload) + compressor.flush(zlib.Z_SYNC_FLUSH)
    if body.endswith(DEFLATE_TAIL):
        body = body[:-4]
    size = len(body)
    first = 0x80 | RSV1 | opcode
    if size < 126:
        return bytes((first, size)) + body
    if size < 65536:
        return struct.pack('!BBH', first, 126, size) + body
    return struct.pack('!BBQ', first, 127, size) + body


_DEFLATE_PARAMS = frozenset(
    ('server_no_context_takeover', 'client_no_context_takeover', 'server_max_window_bits', 'client_max_window_bits')
)


def negotiate_deflate(offers: str) -> tuple[str, int] | None:
    """The Sec-WebSocket-Extensions response to a client's offers and the window bits to compress with, or None.

    The first permessage-deflate offer whose parameters are understood is accepted, answered with
    server_no_context_takeover and client_no_context_takeover (a server may add both, RFC 7692 7.1.1.1 and 7.1.1.2):
    every message is compressed alone in both directions. server_max_window_bits is honoured (9 to 15; 8, which
    zlib cannot produce for raw deflate, skips the offer); client_max_window_bits needs nothing (inflating with a
    32 KB window reads any smaller one).
    """
    for offer in offers.split(','):
        name, *raw = (part.strip() for part in offer.split(';'))
        if name.lower() != 'permessage-deflate':
            continue
        params: dict[str, str | None] = {}
        for item in raw:
            key, sep, value = item.partition('=')
            params[key.strip().lower()] = value.strip().strip('"') if sep else None
        if not set(params) <= _DEFLATE_PARAMS or len(params) != len(raw):
            continue  # an unknown or repeated parameter: this offer is declined
        bits = 15
        if 'server_max_window_bits' in params:
            asked = params['server_max_window_bits']
            if asked is None or not asked.isdigit() or not 9 <= int(asked) <= 15:
                continue
            bits = int(asked)
        client_bits = params.get('client_max_window_bits')
        if client_bits is not None and (not client_bits.isdigit() or not 8 <= int(client_bits) <= 15):
            continue
        answer = 'permessage-deflate; server_no_context_takeover; client_no_context_takeover'
        if 'server_max_window_bits' in params:
            answer += f'; server_max_window_bits={bits}'
        return answer, bits
    return None


def offered_extensions(headers: Mapping[str, str]) -> str:
    """Every Sec-WebSocket-Extensions header of a handshake, as one list."""
    getall = getattr(headers, 'getall', None)
    if callable(getall):
        return ', '.join(getall('sec-websocket-extensions', []))
    return headers.get('sec-websocket-extensions', '') or ''


def close_frame(code: int, reason: str = '') -> bytes:
    cut = reason.encode('utf-8')[:123].decode('utf-8', 'ignore').encode('utf-8')  # whole characters only
    return frame(CLOSE, struct.pack('!H', code) + cut)


def parse_close(payload: bytes) -> tuple[int, str]:
    """The code and reason of a received close frame; FrameError when they are not allowed."""
    if not payload:
        return NO_STATUS, ''
    if len(payload) == 1:
        raise FrameError(PROTOCOL_ERROR, 'close frame with a 1-byte payload')
    (code,) = struct.unpack('!H', payload[:2])
    if code not in _ALLOWED_CODES and not 3000 <= code <= 4999:
        raise FrameError(PROTOCOL_ERROR, f'close code {code} is not allowed')
    try:
        reason = payload[2:].decode('utf-8')
    except UnicodeDecodeError:
        raise FrameError(INVALID_DATA, 'close reason is not UTF-8') from None
    return code, reason


class FrameReader:
    """Parses the bytes a client sends into messages and control frames, as they arrive.

    feed() returns (opcode, payload) for each complete TEXT or BINARY message (fragments joined; the payload is
    bytes, not yet decoded) and for each CLOSE, PING and PONG frame, in order. It raises FrameError for a frame the
    protocol forbids; the caller closes the connection with its code. Nothing is returned after a CLOSE frame.
    max_size bounds a message's bytes, max_fragments the data frames it comes in (control frames between them do not
    count); a frame that would exceed either is refused with TOO_BIG from its header. With inflate (permessage-deflate
    negotiated), a message whose first frame has RSV1 set is inflated on its own, and refused with TOO_BIG as soon as
    it inflates beyond max_size.
    """

    __slots__ = (
        '_buffer',
        '_compressed',
        '_fragments',
        '_need',
        '_opcode',
        '_size',
        'closed',
        'inflate',
        'max_fragments',
        'max_size',
    )

    def __init__(self, max_size: int, max_fragments: int = MAX_FRAGMENTS) -> None:
        self.max_size = max_size
        self.max_fragments = max_fragments
        self._buffer = bytearray()  # bytes of a frame not complete yet
        self._need = 0  # the bytes that frame needs in all, once its header is known (0: not known yet)
        self._fragments: list[bytes] | None = None  # the data frames of a fragmented message so far
        self._opcode = 0  # that message's opcode
        self._size = 0  # and its size so far
        self._compressed = False  # that message's first frame had RSV1 (permessage-deflate)
        self.closed = False
        self.inflate = False  # permessage-deflate was negotiated: RSV1 marks a compressed message

    def feed(self, data: bytes) -> list[tuple[int, bytes]]:
        """The messages and control frames completed by data. Linear in the bytes received: a frame that arrives in
        many small reads is appended to its buffer and parsed once, when it is whole."""
        if self.closed:
            return []
        pending = self._buffer
        if pending:
            pending += data
            if len(pending) < self._need:
                return []  # the frame at the front is still incomplete: nothing to parse again
            buffer: bytes | bytearray = pending
        else:
            buffer = data
        out: list[tuple[int, bytes]] = []
        view = memoryview(buffer)
        total = len(buffer)
        pos = 0
        need = 0
        try:
            while total - pos >= 2:
                header = self._header(buffer, pos, total)
                if header is None:
                    break
                opcode, fin, size, head, compressed = header
                end = pos + head + 4 + size
                if end > total:
                    need = end - pos
                    break
                mask = bytes(view[pos + head : pos + head + 4])
                payload = apply_mask(bytes(view[pos + head + 4 : end]), mask)
                pos = end
                if opcode in CONTROL_OPCODES:
                    out.append((opcode, payload))
                    if opcode == CLOSE:
                        self.closed = True
                        break
                else:
                    message = self._data(opcode, fin, payload, compressed)
                    if message is not None:
                        out.append(message)
        finally:
            # also on FrameError: an exported bytearray cannot be resized, and the caller may keep the exception
            # (its traceback holds this frame, and the view with it)
            view.release()
        if buffer is pending:
            del pending[:pos]  # what was parsed; CPython drops a bytearray's head without moving the rest
        elif pos < total:
            self._buffer = bytearray(buffer[pos:])
        self._need = need
        return out

    def _header(self, buffer: bytes | bytearray, pos: int, total: int) -> tuple[int, bool, int, int, bool] | None:
        """The opcode, FIN, payload size, header length and RSV1 of the frame at pos; None until its header is whole."""
        first, second = buffer[pos], buffer[pos + 1]
        opcode = first & 0x0F
        compressed = bool(first & 0x70) and self._rsv1(first, opcode)
        if not second & 0x80:
            raise FrameError(PROTOCOL_ERROR, 'client frame not masked')
        fin = bool(first & 0x80)
        size = second & 0x7F
        head = 2
        if size == 126:
            if total - pos < 4:
                return None
            (size,) = struct.unpack_from('!H', buffer, pos + 2)
            head = 4
        elif size == 127:
            if total - pos < 10:
                return None
            (size,) = struct.unpack_from('!Q', buffer, pos + 2)
            head = 10
        if opcode in CONTROL_OPCODES:
            if not fin or size > 125:
                raise FrameError(PROTOCOL_ERROR, 'fragmented or long control frame')
        elif opcode not in DATA_OPCODES:
            raise FrameError(PROTOCOL_ERROR, f'unknown opcode {opcode}')
        elif opcode == CONTINUATION:  # refused from its header: neither its mask nor its payload is waited for
            if self._size + size > self.max_size:
                raise FrameError(TOO_BIG, f'message over {self.max_size} bytes')
            fragments = self._fragments
            if fragments is not None and len(fragments) >= self.max_fragments:
                raise FrameError(TOO_BIG, f'message in more than {self.max_fragments} fragments')
        elif size > self.max_size:
            raise FrameError(TOO_BIG, f'message over {self.max_size} bytes')
        return opcode, fin, size, head, compressed

    def _rsv1(self, first: int, opcode: int) -> bool:
        """A frame with reserved bits: only RSV1, only on a message's first frame, only with permessage-deflate."""
        if not self.inflate:
            raise FrameError(PROTOCOL_ERROR, 'reserved bits set (no extension was negotiated)')
        if first & 0x70 != RSV1 or opcode not in (TEXT, BINARY):
            raise FrameError(PROTOCOL_ERROR, 'reserved bits set other than RSV1 on the first frame of a message')
        return True

    def _data(self, opcode: int, fin: bool, payload: bytes, compressed: bool = False) -> tuple[int, bytes] | None:
        if opcode == CONTINUATION:
            if self._fragments is None:
                raise FrameError(PROTOCOL_ERROR, 'continuation frame without a message')
            self._fragments.append(payload)
            self._size += len(payload)
            if not fin:
                return None
            joined = b''.join(self._fragments)
            self._fragments = None
            self._size = 0
            return self._opcode, self._inflate(joined) if self._compressed else joined
        if self._fragments is not None:
            raise FrameError(PROTOCOL_ERROR, 'new message before the last one ended')
        if fin:
            return opcode, self._inflate(payload) if compressed else payload
        self._fragments = [payload]
        self._opcode = opcode
        self._size = len(payload)
        self._compressed = compressed
        return None

    def _inflate(self, data: bytes) -> bytes:
        """A compressed message on its own (no context takeover), at most max_size bytes once inflated."""
        inflater = zlib.decompressobj(-15)
        try:
            out = inflater.decompress(data + DEFLATE_TAIL, self.max_size + 1)
        except zlib.error as exc:
            raise FrameError(PROTOCOL_ERROR, f'compressed message does not inflate: {exc}') from None
        if len(out) > self.max_size or inflater.unconsumed_tail:
            raise FrameError(TOO_BIG, f'message over {self.max_size} bytes once inflated')
        return out
