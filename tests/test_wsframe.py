"""gamelist_service.transport.wsframe checked against websockets, the reference implementation: every server frame it writes
(data, control and close frames, at each length-encoding boundary) is byte for byte what websockets writes, and every
masked client frame websockets writes is parsed back to the same opcode and payload, whether the bytes arrive in one
feed, byte by byte or split anywhere, with fragmented messages reassembled around interleaved control frames. Each
frame RFC 6455 forbids a client to send is refused with its close code (1002 protocol error, 1007 invalid close reason,
1009 too big, the latter as soon as the frame header announces it), close payloads are parsed as websockets parses
them, nothing comes out of a reader after a CLOSE frame, and a hypothesis property checks random fragmented message
streams cut at random points. Last, the limits on what a client can make a reader hold and do: at most MAX_FRAGMENTS
frames in a message (1009 beyond, from the header of the frame over the cap), and a large frame arriving in small
reads appended to one buffer and parsed once it is whole (counted, not timed).
"""

from __future__ import annotations

import contextlib
import itertools
import os
import random
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from websockets.exceptions import ProtocolError
from websockets.frames import Close, Frame, Opcode
from websockets.utils import apply_mask as ws_apply_mask

from gamelist_service.transport import wsframe
from gamelist_service.transport.wsframe import (
    BINARY,
    CLOSE,
    CONTINUATION,
    PING,
    PONG,
    TEXT,
    FrameError,
    FrameReader,
    close_frame,
    frame,
    parse_close,
    text_frame,
)

from .clients import MASK, raw_frame

BIG = 1 << 20
SIZES = (0, 1, 125, 126, 127, 65535, 65536, 70000)
CONTROL_SIZES = (0, 1, 124, 125)


def server_frame(opcode: int, payload: bytes) -> bytes:
    """What websockets writes for one final frame from the server (unmasked)."""
    return Frame(Opcode(opcode), payload).serialize(mask=False, extensions=[])


def client_frame(opcode: int, payload: bytes, fin: bool = True) -> bytes:
    """What a websockets client writes for one frame (masked with a random key)."""
    return Frame(Opcode(opcode), payload, fin=fin).serialize(mask=True, extensions=[])


def feed_all(reader: FrameReader, chunks: list[bytes]) -> list[tuple[int, bytes]]:
    out: list[tuple[int, bytes]] = []
    for chunk in chunks:
        out.extend(reader.feed(chunk))
    return out


def refused(data: bytes, max_size: int = BIG) -> FrameError:
    reader = FrameReader(max_size)
    with pytest.raises(FrameError) as info:
        reader.feed(data)
    return info.value


# --- 1. what the server writes -----------------------------------------------------------------------------------


@pytest.mark.parametrize('size', SIZES)
@pytest.mark.parametrize('opcode', [TEXT, BINARY])
def test_data_frame_bytes_match_websockets(opcode: int, size: int) -> None:
    payload = os.urandom(size)
    assert frame(opcode, payload) == server_frame(opcode, payload)


@pytest.mark.parametrize('size', CONTROL_SIZES)
@pytest.mark.parametrize('opcode', [PING, PONG])
def test_control_frame_bytes_match_websockets(opcode: int, size: int) -> None:
    # websockets refuses to write a control frame over 125 bytes, so these are all the sizes there are to compare
    payload = os.urandom(size)
    assert frame(opcode, payload) == server_frame(opcode, payload)


@pytest.mark.parametrize(('size', 'header_size'), [(0, 2), (125, 2), (126, 4), (65535, 4), (65536, 10), (70000, 10)])
def test_frame_header_layout(size: int, header_size: int) -> None:
    data = frame(BINARY, b'\0' * size)
    assert len(data) == header_size + size
    assert data[0] == 0x82  # FIN + BINARY, no RSV bit
    assert not data[1] & 0x80  # a server never masks


@pytest.mark.parametrize('text', ['', 'hello', 'héllo wörld ✓ 🎮', 'x' * 200, '€' * 30000])
def test_text_frame_matches_websockets(text: str) -> None:
    assert text_frame(text) == Frame(Opcode.TEXT, text.encode()).serialize(mask=False, extensions=[])
    assert text_frame(text) == frame(TEXT, text.encode('utf-8'))


@pytest.mark.parametrize(
    ('code', 'reason'),
    [
        (1000, ''),
        (1000, 'bye'),
        (1001, 'going away'),
        (1002, 'protocol error'),
        (1009, 'too big'),
        (1011, 'internal error: ✗'),
        (3000, 'x'),
        (4999, 'é' * 61),
        (1000, 'r' * 123),
    ],
)
def test_close_frame_matches_websockets(code: int, reason: str) -> None:
    expected = Frame(Opcode.CLOSE, Close(code, reason).serialize()).serialize(mask=False, extensions=[])
    assert close_frame(code, reason) == expected
    assert close_frame(code, reason) == server_frame(CLOSE, Close(code, reason).serialize())


def test_close_frame_default_reason_is_empty() -> None:
    assert close_frame(1000) == bytes((0x88, 2)) + struct.pack('!H', 1000)


@pytest.mark.parametrize('reason', ['r' * 124, 'r' * 500])
def test_close_frame_truncates_a_long_ascii_reason_to_fit_a_control_frame(reason: str) -> None:
    data = close_frame(1000, reason)
    assert data == server_frame(CLOSE, Close(1000, reason[:123]).serialize())
    assert len(data) == 2 + 125


@pytest.mark.parametrize(
    'reason',
    ['é' * 62, '€' * 42, '🎮' * 31, 'a' + 'é' * 70, 'ab' + '€' * 60],
    ids=['2-byte-cut', '3-byte-on-boundary', '4-byte-cut', '2-byte-on-boundary', '3-byte-cut'],
)
def test_close_frame_with_a_long_multibyte_reason_is_valid(reason: str) -> None:
    """The truncated reason must still be UTF-8 (cut on a character boundary), or the peer fails with 1007."""
    data = close_frame(1000, reason)
    assert data[0] == 0x88
    payload = data[2:]
    assert data[1] == len(payload) <= 125
    code, received = parse_close(payload)  # FrameError(1007) when the cut splits a character
    assert code == 1000
    assert reason.startswith(received)
    assert len(received.encode()) > 123 - 4  # only the partial character is dropped
    assert payload == Close(1000, received).serialize()


# --- 2. what the server reads ------------------------------------------------------------------------------------


@pytest.mark.parametrize('size', [*range(131), 65535, 65536, 200000])
def test_parse_masked_client_frames_of_every_size(size: int) -> None:
    reader = FrameReader(BIG)
    for opcode in (TEXT, BINARY):
        payload = os.urandom(size)
        assert reader.feed(client_frame(opcode, payload)) == [(opcode, payload)]
    assert reader._buffer == b''
    assert reader._fragments is None
    assert not reader.closed


@pytest.mark.parametrize('size', CONTROL_SIZES)
@pytest.mark.parametrize('opcode', [PING, PONG])
def test_parse_control_frames(opcode: int, size: int) -> None:
    payload = os.urandom(size)
    reader = FrameReader(16)  # max_size bounds messages, not control frames
    assert reader.feed(client_frame(opcode, payload)) == [(opcode, payload)]
    assert not reader.closed


def test_parse_frame_built_by_hand_like_websockets() -> None:
    # raw_frame (used for the forbidden frames below) writes what websockets writes for an allowed frame
    payload = os.urandom(300)
    assert raw_frame(0x82, payload, masked=False) == server_frame(BINARY, payload)
    assert FrameReader(BIG).feed(raw_frame(0x82, payload)) == [(BINARY, payload)]


def test_parse_several_frames_in_one_feed() -> None:
    frames = [(TEXT, b'one'), (PING, b'p'), (BINARY, os.urandom(70000)), (PONG, b''), (TEXT, b'')]
    data = b''.join(client_frame(op, payload) for op, payload in frames)
    assert FrameReader(BIG).feed(data) == frames


def test_parse_empty_feed() -> None:
    reader = FrameReader(BIG)
    assert reader.feed(b'') == []
    assert reader.feed(client_frame(TEXT, b'x')[:1]) == []
    assert reader.feed(b'') == []


def test_non_minimal_length_encoding_is_accepted() -> None:
    payload = b'short'
    sixteen = struct.pack('!BBH', 0x81, 0x80 | 126, len(payload)) + MASK + ws_apply_mask(payload, MASK)
    sixty_four = struct.pack('!BBQ', 0x82, 0x80 | 127, len(payload)) + MASK + ws_apply_mask(payload, MASK)
    assert FrameReader(BIG).feed(sixteen + sixty_four) == [(TEXT, payload), (BINARY, payload)]


def test_a_message_of_exactly_max_size_is_accepted() -> None:
    payload = os.urandom(1000)
    assert FrameReader(1000).feed(client_frame(BINARY, payload)) == [(BINARY, payload)]
    parts = client_frame(BINARY, payload[:400], fin=False) + client_frame(CONTINUATION, payload[400:])
    assert FrameReader(1000).feed(parts) == [(BINARY, payload)]


MASK_LENGTHS = [*range(70), 127, 128, 1000, 4095, 4096, 4097, 65537]


@pytest.mark.parametrize('length', MASK_LENGTHS)
def test_apply_mask_implementations_agree_with_websockets(length: int) -> None:
    rng = random.Random(length)
    for _ in range(5):
        data = rng.randbytes(length)
        mask = rng.randbytes(4)
        expected = ws_apply_mask(data, mask)
        assert wsframe.apply_mask(data, mask) == expected
        assert wsframe._apply_mask_py(data, mask) == expected
        assert wsframe._apply_mask_py(expected, mask) == data  # masking is its own inverse
        assert type(wsframe._apply_mask_py(data, mask)) is bytes


def test_apply_mask_with_leading_zero_bytes_keeps_the_length() -> None:
    # int.from_bytes drops leading zeros; to_bytes(size) must restore them
    data = b'\0' * 9 + b'\x01'
    assert wsframe._apply_mask_py(data, b'\0\0\0\0') == data
    assert wsframe._apply_mask_py(b'\xff' * 6, b'\xff\xff\xff\xff') == b'\0' * 6
    assert wsframe.apply_mask(b'\xff' * 6, b'\xff\xff\xff\xff') == b'\0' * 6


def test_apply_mask_uses_the_compiled_helper_when_present() -> None:
    from websockets.speedups import apply_mask as compiled  # noqa: PLC0415

    assert vars(wsframe)['_apply_mask_c'] is compiled


# --- 3. incremental input -----------------------------------------------------------------------------------------


def stream() -> tuple[bytes, list[tuple[int, bytes]]]:
    """Several frames (each length encoding, a fragmented message with a ping inside) and what they parse to."""
    long_payload = bytes(range(256)) * 2  # 512 bytes: 16-bit length
    data = b''.join(
        [
            client_frame(TEXT, b'hello'),
            client_frame(BINARY, b''),
            client_frame(TEXT, b'frag-', fin=False),
            client_frame(PING, b'in between'),
            client_frame(CONTINUATION, b'ment', fin=False),
            client_frame(CONTINUATION, b'ed'),
            client_frame(BINARY, long_payload),
            client_frame(PONG, b'pong'),
            client_frame(TEXT, 'ünïcödé'.encode()),
        ]
    )
    expected = [
        (TEXT, b'hello'),
        (BINARY, b''),
        (PING, b'in between'),
        (TEXT, b'frag-mented'),
        (BINARY, long_payload),
        (PONG, b'pong'),
        (TEXT, 'ünïcödé'.encode()),
    ]
    return data, expected


def test_stream_in_one_feed() -> None:
    data, expected = stream()
    assert FrameReader(BIG).feed(data) == expected


def test_stream_byte_by_byte() -> None:
    data, expected = stream()
    reader = FrameReader(BIG)
    assert feed_all(reader, [data[i : i + 1] for i in range(len(data))]) == expected
    assert reader._buffer == b''


def test_stream_split_in_two_at_every_point() -> None:
    data, expected = stream()
    for cut in range(len(data) + 1):
        reader = FrameReader(BIG)
        assert feed_all(reader, [data[:cut], data[cut:]]) == expected, cut
        assert reader._buffer == b''


def test_stream_split_in_three_at_many_points() -> None:
    data, expected = stream()
    rng = random.Random(6455)
    for _ in range(300):
        a, b = sorted(rng.sample(range(len(data) + 1), 2))
        assert feed_all(FrameReader(BIG), [data[:a], data[a:b], data[b:]]) == expected, (a, b)


def test_stream_with_64_bit_length_split_inside_the_header() -> None:
    payload = os.urandom(70000)
    data = client_frame(BINARY, payload) + client_frame(TEXT, b'after')
    expected = [(BINARY, payload), (TEXT, b'after')]
    for cut in [*range(1, 16), 70000, len(data) - 12, len(data) - 1]:
        assert feed_all(FrameReader(BIG), [data[:cut], data[cut:]]) == expected, cut


# --- 4. fragmented messages ---------------------------------------------------------------------------------------


def test_fragmented_text_with_control_frames_between_fragments() -> None:
    frames = [
        client_frame(TEXT, b'a', fin=False),
        client_frame(PING, b'1'),
        client_frame(CONTINUATION, b'b', fin=False),
        client_frame(PONG, b'2'),
        client_frame(PING, b'3'),
        client_frame(CONTINUATION, b'', fin=False),
        client_frame(CONTINUATION, b'c'),
        client_frame(PING, b'4'),
    ]
    expected = [(PING, b'1'), (PONG, b'2'), (PING, b'3'), (TEXT, b'abc'), (PING, b'4')]
    assert FrameReader(BIG).feed(b''.join(frames)) == expected
    # one frame per feed: each control frame comes out when it arrives, the message with its last fragment
    reader = FrameReader(BIG)
    assert [reader.feed(f) for f in frames] == [
        [],
        [(PING, b'1')],
        [],
        [(PONG, b'2')],
        [(PING, b'3')],
        [],
        [(TEXT, b'abc')],
        [(PING, b'4')],
    ]


def test_fragmented_binary_of_many_fragments() -> None:
    payload = os.urandom(5000)
    pieces = [payload[i : i + 100] for i in range(0, 5000, 100)]
    data = client_frame(BINARY, pieces[0], fin=False)
    data += b''.join(client_frame(CONTINUATION, p, fin=False) for p in pieces[1:-1])
    data += client_frame(CONTINUATION, pieces[-1])
    reader = FrameReader(5000)
    assert reader.feed(data) == [(BINARY, payload)]
    assert reader._fragments is None
    assert reader._size == 0
    # the next message starts afresh, with the whole max_size available again
    assert reader.feed(client_frame(TEXT, b'x' * 3000, fin=False) + client_frame(CONTINUATION, b'y' * 2000)) == [
        (TEXT, b'x' * 3000 + b'y' * 2000)
    ]


def test_fragmented_message_with_empty_first_fragment() -> None:
    data = client_frame(BINARY, b'', fin=False) + client_frame(CONTINUATION, b'rest')
    assert FrameReader(BIG).feed(data) == [(BINARY, b'rest')]


def test_close_between_fragments_comes_out() -> None:
    data = client_frame(TEXT, b'never', fin=False) + client_frame(CLOSE, Close(1001, 'bye').serialize())
    data += client_frame(CONTINUATION, b' finished')
    reader = FrameReader(BIG)
    assert reader.feed(data) == [(CLOSE, Close(1001, 'bye').serialize())]
    assert reader.closed


# --- 5. forbidden frames ------------------------------------------------------------------------------------------


def test_unmasked_client_frame() -> None:
    assert refused(frame(TEXT, b'hello')).code == 1002
    assert refused(frame(PING, b'')).code == 1002
    assert refused(raw_frame(0x82, b'x' * 70000, masked=False)).code == 1002


def test_unmasked_client_frame_is_refused_from_its_first_two_bytes() -> None:
    assert refused(frame(BINARY, b'x' * 70000)[:2]).code == 1002


@pytest.mark.parametrize('rsv', [0x40, 0x20, 0x10, 0x70])
def test_reserved_bits(rsv: int) -> None:
    assert refused(raw_frame(0x80 | rsv | TEXT, b'hello')).code == 1002
    assert refused(raw_frame(0x80 | rsv | PING, b'')[:2]).code == 1002


@pytest.mark.parametrize('opcode', [3, 4, 5, 6, 7, 11, 12, 13, 14, 15])
def test_unknown_opcode(opcode: int) -> None:
    error = refused(raw_frame(0x80 | opcode, b'data'))
    assert error.code == 1002
    assert str(opcode) in error.reason
    assert refused(raw_frame(opcode, b'data')).code == 1002  # without FIN too


@pytest.mark.parametrize('opcode', [CLOSE, PING, PONG])
def test_fragmented_control_frame(opcode: int) -> None:
    assert refused(raw_frame(opcode, b'')).code == 1002  # FIN not set
    data = client_frame(TEXT, b'a', fin=False) + raw_frame(opcode, b'x') + client_frame(CONTINUATION, b'b')
    assert refused(data).code == 1002


@pytest.mark.parametrize('size', [126, 127, 1000, 65536])
@pytest.mark.parametrize('opcode', [CLOSE, PING, PONG])
def test_control_frame_over_125_bytes(opcode: int, size: int) -> None:
    data = raw_frame(0x80 | opcode, b'x' * size)
    assert refused(data).code == 1002
    header = 4 if size < 65536 else 10
    assert refused(data[:header]).code == 1002  # refused from its header


def test_continuation_without_a_start() -> None:
    assert refused(client_frame(CONTINUATION, b'orphan')).code == 1002
    assert refused(client_frame(CONTINUATION, b'orphan', fin=False)).code == 1002
    # nor after a message that ended
    assert refused(client_frame(TEXT, b'done') + client_frame(CONTINUATION, b'more')).code == 1002


@pytest.mark.parametrize('opcode', [TEXT, BINARY])
def test_new_message_while_a_fragmented_one_is_open(opcode: int) -> None:
    start = client_frame(TEXT, b'start', fin=False) + client_frame(PING, b'')
    assert refused(start + client_frame(opcode, b'new')).code == 1002
    assert refused(start + client_frame(opcode, b'new', fin=False)).code == 1002
    reader = FrameReader(BIG)
    assert reader.feed(start) == [(PING, b'')]
    with pytest.raises(FrameError) as info:
        reader.feed(client_frame(opcode, b'new'))
    assert info.value.code == 1002


@pytest.mark.parametrize(('max_size', 'size'), [(0, 1), (10, 11), (125, 126), (1000, 65535), (65535, 65536)])
def test_single_frame_over_max_size(max_size: int, size: int) -> None:
    for opcode, fin in ((TEXT, True), (BINARY, True), (BINARY, False)):
        error = refused(client_frame(opcode, b'x' * size, fin=fin), max_size)
        assert error.code == 1009
        assert str(max_size) in error.reason


@pytest.mark.parametrize(('max_size', 'size', 'header'), [(10, 11, 2), (100, 300, 4), (65535, 65536, 10)])
def test_over_max_size_is_refused_as_soon_as_the_header_arrives(max_size: int, size: int, header: int) -> None:
    data = client_frame(BINARY, b'x' * size)
    reader = FrameReader(max_size)
    for i in range(header - 1):  # not enough to know the length yet
        assert reader.feed(data[i : i + 1]) == []
    with pytest.raises(FrameError) as info:
        reader.feed(data[header - 1 : header])  # the last header byte; neither mask nor payload was sent
    assert info.value.code == 1009


def test_huge_announced_length_is_refused_without_waiting() -> None:
    header = struct.pack('!BBQ', 0x82, 0x80 | 127, 1 << 62)
    assert refused(header).code == 1009


def test_fragmented_message_over_max_size() -> None:
    data = client_frame(TEXT, b'x' * 60, fin=False) + client_frame(PING, b'p') + client_frame(CONTINUATION, b'y' * 41)
    reader = FrameReader(100)
    with pytest.raises(FrameError) as info:
        reader.feed(data)
    assert info.value.code == 1009
    # many small fragments add up
    small = client_frame(BINARY, b'z' * 10, fin=False) + b''.join(
        client_frame(CONTINUATION, b'z' * 10, fin=False) for _ in range(9)
    )
    reader = FrameReader(100)
    assert reader.feed(small) == []  # exactly 100 bytes so far
    with pytest.raises(FrameError) as info:
        reader.feed(client_frame(CONTINUATION, b'z'))
    assert info.value.code == 1009


def test_fragmented_message_over_max_size_is_refused_from_the_continuation_header() -> None:
    reader = FrameReader(100)
    assert reader.feed(client_frame(BINARY, b'x' * 90, fin=False)) == []
    continuation = client_frame(CONTINUATION, b'y' * 20)
    with pytest.raises(FrameError) as info:
        reader.feed(continuation[:2])
    assert info.value.code == 1009


def test_frame_error_carries_code_and_reason() -> None:
    error = FrameError(1002, 'why')
    assert (error.code, error.reason, str(error)) == (1002, 'why', 'why')
    assert isinstance(error, Exception)


# --- 6. CLOSE -----------------------------------------------------------------------------------------------------


def test_parse_close_empty_payload() -> None:
    assert parse_close(b'') == (1005, '')


def test_parse_close_one_byte() -> None:
    with pytest.raises(FrameError) as info:
        parse_close(b'\x03')
    assert info.value.code == 1002


@pytest.mark.parametrize('reason', ['', 'bye', 'héllo ✓ 🎮', 'r' * 123])
def test_parse_close_code_and_reason(reason: str) -> None:
    assert parse_close(struct.pack('!H', 1000) + reason.encode()) == (1000, reason)


@pytest.mark.parametrize('code', [0, 999, 1004, 1005, 1006, 1015, 1016, 2000, 2999, 5000, 65535])
def test_parse_close_disallowed_codes(code: int) -> None:
    with pytest.raises(FrameError) as info:
        parse_close(struct.pack('!H', code) + b'reason')
    assert info.value.code == 1002


@pytest.mark.parametrize('code', [1000, 1001, 1002, 1003, 1007, 1008, 1009, 1010, 1011, 1012, 1013, 1014, 3000, 4999])
def test_parse_close_allowed_codes(code: int) -> None:
    assert parse_close(struct.pack('!H', code)) == (code, '')


def outcome_websockets(payload: bytes) -> tuple[int, str] | str:
    try:
        close = Close.parse(payload)
    except ProtocolError:
        return 'protocol error'
    return close.code, close.reason


def outcome_wsframe(payload: bytes) -> tuple[int, str] | str:
    try:
        return parse_close(payload)
    except FrameError as error:
        return 'protocol error' if error.code == 1002 else f'close code {error.code}'


def test_parse_close_agrees_with_websockets_on_the_codes() -> None:
    codes = [*range(5100), 6000, 9999, 32768, 65535]  # every code up to past the last allowed one, a few above
    payloads = [struct.pack('!H', code) + b'ok' for code in codes]
    assert [outcome_wsframe(p) for p in payloads] == [outcome_websockets(p) for p in payloads]
    allowed = [code for code in codes if isinstance(outcome_wsframe(struct.pack('!H', code)), tuple)]
    assert allowed == [1000, 1001, 1002, 1003, 1007, 1008, 1009, 1010, 1011, 1012, 1013, 1014, *range(3000, 5000)]


@pytest.mark.parametrize('reason', [b'\xff', b'\xc3', b'ok\xc3\x28', b'\xed\xa0\x80', b'\xf4\x90\x80\x80'])
def test_parse_close_invalid_utf8_reason(reason: bytes) -> None:
    with pytest.raises(FrameError) as info:
        parse_close(struct.pack('!H', 1000) + reason)
    assert info.value.code == 1007


def test_parse_close_checks_the_code_before_the_reason() -> None:
    with pytest.raises(FrameError) as info:
        parse_close(struct.pack('!H', 1006) + b'\xff')
    assert info.value.code == 1002


def test_close_frame_round_trip() -> None:
    for code, reason in [(1000, ''), (1001, 'bye'), (4000, 'ünïcödé'), (3000, 'r' * 123)]:
        data = close_frame(code, reason)
        assert data[1] == len(data) - 2
        assert parse_close(data[2:]) == (code, reason)


def test_nothing_after_close_in_the_same_feed() -> None:
    close = Close(1000, 'done').serialize()
    data = client_frame(TEXT, b'before') + client_frame(CLOSE, close) + client_frame(TEXT, b'after')
    data += client_frame(PING, b'') + frame(TEXT, b'unmasked, would be an error') + b'\xff' * 20
    reader = FrameReader(BIG)
    assert reader.feed(data) == [(TEXT, b'before'), (CLOSE, close)]
    assert reader.closed
    assert reader.feed(client_frame(TEXT, b'later')) == []
    assert reader.feed(b'\x8f\x00garbage') == []  # no FrameError either
    assert reader.closed


def test_nothing_after_close_in_later_feeds() -> None:
    reader = FrameReader(BIG)
    close = client_frame(CLOSE, b'')
    assert reader.feed(close[:3]) == []
    assert not reader.closed
    assert reader.feed(close[3:]) == [(CLOSE, b'')]
    assert reader.closed
    for data in (client_frame(TEXT, b'x'), client_frame(CLOSE, b''), frame(BINARY, b'unmasked'), b''):
        assert reader.feed(data) == []


def test_close_frame_payload_is_returned_unparsed() -> None:
    # the caller decides: parse_close gives the code and reason, or the FrameError to close with
    reader = FrameReader(BIG)
    assert reader.feed(client_frame(CLOSE, struct.pack('!H', 1000) + b'\xff')) == [
        (CLOSE, struct.pack('!H', 1000) + b'\xff')
    ]
    assert reader.closed


# --- 7. property: random fragmented streams, split anywhere -------------------------------------------------------


Message = tuple[int, bytes, list[int], bool]  # opcode, payload, fragment cut points, a ping after the first fragment


@st.composite
def messages(draw: st.DrawFn) -> Message:
    opcode = draw(st.sampled_from([TEXT, BINARY]))
    payload = draw(st.binary(max_size=300))
    count = draw(st.integers(min_value=1, max_value=3))
    cuts = sorted(draw(st.lists(st.integers(0, len(payload)), min_size=count - 1, max_size=count - 1)))
    return opcode, payload, cuts, draw(st.booleans())


def serialize(message: Message, index: int) -> tuple[bytes, list[tuple[int, bytes]]]:
    opcode, payload, cuts, ping = message
    bounds = [0, *cuts, len(payload)]
    pieces = [payload[a:b] for a, b in itertools.pairwise(bounds)]
    out: list[bytes] = []
    expected: list[tuple[int, bytes]] = []
    for i, piece in enumerate(pieces):
        last = i == len(pieces) - 1
        out.append(client_frame(opcode if i == 0 else CONTINUATION, piece, fin=last))
        if i == 0 and ping and not last:
            out.append(client_frame(PING, b'%d' % index))
            expected.append((PING, b'%d' % index))
    expected.append((opcode, payload))
    return b''.join(out), expected


@settings(max_examples=200, deadline=None)
@given(st.lists(messages(), max_size=8), st.data())
def test_random_streams_split_at_random_points(batch: list[Message], data: st.DataObject) -> None:
    stream_bytes = b''
    expected: list[tuple[int, bytes]] = []
    for index, message in enumerate(batch):
        chunk, parsed = serialize(message, index)
        stream_bytes += chunk
        expected += parsed
    cuts = sorted(data.draw(st.lists(st.integers(0, len(stream_bytes)), max_size=10)))
    bounds = [0, *cuts, len(stream_bytes)]
    chunks = [stream_bytes[a:b] for a, b in itertools.pairwise(bounds)]
    reader = FrameReader(1000)
    assert feed_all(reader, chunks) == expected
    assert reader._buffer == b''
    assert reader._fragments is None
    assert not reader.closed


# -- limits on what a client can make the reader hold and do ----------------------------------------------------


def fragmented(count: int) -> bytes:
    """One text message in count frames: a first frame, continuations, the last with FIN."""
    frames = [raw_frame(0x01, b'a')]  # TEXT, no FIN
    frames += [raw_frame(0x00, b'') for _ in range(count - 2)]  # continuations, no FIN
    frames.append(raw_frame(0x80, b'z'))  # the last continuation, FIN
    return b''.join(frames)


def test_a_message_in_at_most_max_fragments_frames_is_accepted() -> None:
    assert FrameReader(BIG).feed(fragmented(wsframe.MAX_FRAGMENTS)) == [(TEXT, b'az')]


def test_a_message_in_more_fragments_is_refused_before_all_of_it_is_held() -> None:
    """L1: 1,000,000 empty continuations would all be held; the frame over the cap is refused, the rest never read."""
    reader = FrameReader(BIG)
    with pytest.raises(FrameError) as info:
        reader.feed(fragmented(wsframe.MAX_FRAGMENTS + 1))
    assert info.value.code == wsframe.TOO_BIG == 1009
    assert info.value.reason == f'message in more than {wsframe.MAX_FRAGMENTS} fragments'
    assert reader._fragments is not None
    assert len(reader._fragments) == wsframe.MAX_FRAGMENTS


def test_the_fragment_over_the_cap_is_refused_from_its_header() -> None:
    reader = FrameReader(BIG)
    data = fragmented(wsframe.MAX_FRAGMENTS + 1)
    last = raw_frame(0x80, b'z')
    assert reader.feed(data[: -len(last)]) == []  # MAX_FRAGMENTS frames held, none of them the last
    assert reader.feed(last[:1]) == []
    with pytest.raises(FrameError) as info:
        reader.feed(last[1:2])  # its mask and payload were not sent
    assert info.value.code == 1009
    # a continuation too long for max_size as well is refused for its size, as before
    with pytest.raises(FrameError) as info:
        FrameReader(100).feed(fragmented(wsframe.MAX_FRAGMENTS)[: -len(last)] + raw_frame(0x80, b'z' * 200)[:4])
    assert info.value.reason == 'message over 100 bytes'


def test_max_fragments_is_a_reader_argument_and_control_frames_between_do_not_count() -> None:
    three = raw_frame(0x01, b'a') + client_frame(PING, b'') + raw_frame(0x00, b'') + raw_frame(0x80, b'z')
    assert FrameReader(BIG, 3).feed(three) == [(PING, b''), (TEXT, b'az')]
    assert FrameReader(BIG, max_fragments=3).feed(three) == [(PING, b''), (TEXT, b'az')]
    four = raw_frame(0x01, b'a') + raw_frame(0x00, b'') + raw_frame(0x00, b'b') + client_frame(PING, b'')
    four += raw_frame(0x80, b'z')
    reader = FrameReader(BIG, max_fragments=3)
    with pytest.raises(FrameError) as info:
        reader.feed(four)
    assert (info.value.code, info.value.reason) == (1009, 'message in more than 3 fragments')
    # the cap is per message: the next one starts counting afresh
    reader = FrameReader(BIG, max_fragments=3)
    assert reader.feed(three + three) == [(PING, b''), (TEXT, b'az')] * 2
    assert reader.max_fragments == 3
    assert FrameReader(BIG).max_fragments == wsframe.MAX_FRAGMENTS == 1024


def test_a_kept_frame_error_does_not_lock_the_buffer() -> None:
    """The caller may keep a FrameError (its traceback holds feed's frame): the view on the buffer was released, so
    a later feed appends to the buffer instead of failing with BufferError."""
    reader = FrameReader(BIG)
    data = client_frame(BINARY, b'x' * 100)
    assert reader.feed(data[:50]) == []
    with pytest.raises(FrameError) as kept:
        reader.feed(data[50:] + frame(TEXT, b'unmasked'))
    assert kept.value.code == 1002
    assert kept.value.__traceback__ is not None
    # what a reader does after a FrameError is not specified (the connection closes), but it is not BufferError
    # ('Existing exports of data: object cannot be re-sized')
    with contextlib.suppress(FrameError):
        reader.feed(b'more')


class CountingReader(FrameReader):
    """Counts the frame headers it parses: a reader that re-parses a frame on each partial read makes one per read."""

    __slots__ = ('parses',)

    def __init__(self, max_size: int) -> None:
        super().__init__(max_size)
        self.parses = 0

    def _header(self, buffer: bytes | bytearray, pos: int, total: int) -> tuple[int, bool, int, int, bool] | None:
        self.parses += 1
        return super()._header(buffer, pos, total)


def parses_for(size: int, read: int) -> int:
    """Feeds one frame of size bytes in reads of read bytes; the headers parsed. Between the first read and the last,
    each read must be appended to one buffer, in place (a bytearray grows in amortised O(read)): no copy of what
    arrived before, which is what made the old reader O(size^2)."""
    payload = bytes(range(256)) * (size // 256)
    data = raw_frame(0x82, payload)  # BINARY, FIN
    chunks = [data[i : i + read] for i in range(0, len(data), read)]
    reader = CountingReader(size)
    assert reader.feed(chunks[0]) == []
    buffer = reader._buffer
    received = len(chunks[0])
    for chunk in chunks[1:-1]:
        assert reader.feed(chunk) == []
        received += len(chunk)
        assert reader._buffer is buffer
        assert len(buffer) == received
    assert reader.feed(chunks[-1]) == [(BINARY, payload)]
    assert reader._buffer == b''
    return reader.parses


def test_a_large_frame_in_small_reads_is_parsed_once_it_is_whole() -> None:
    """L2: linear in its size. The work per read is an append; the frame's header is parsed when it arrives and when
    the frame is whole, however many reads it takes (4x the size, the same count)."""
    assert parses_for(1 << 18, 1000) == parses_for(1 << 20, 1000) == 2


def test_a_frame_header_in_one_byte_reads_is_parsed_once_per_read_until_it_is_whole() -> None:
    # until the header is whole the reader cannot know how much it needs: each read parses at most 10 bytes again,
    # then nothing until the frame is whole (a 64-bit length: a parse for each of the 2nd to the 10th byte, then one)
    assert parses_for(1 << 16, 1) == 9 + 1
