"""permessage-deflate (RFC 7692) on the lean websockets: negotiated with clients that offer it, with no context
takeover either way; a broadcast compressed once, the same bytes to every such client; client messages inflated
within max_http_buffer_size; clients that offer nothing get today's plain frames."""

from __future__ import annotations

import json
import zlib
from collections.abc import Iterator

import pytest

from gamelist_service.transport import wsframe
from gamelist_service.transport.wsframe import FrameError, FrameReader, deflated_frame, negotiate_deflate

from .clients import RawClient, masked
from .helpers import Serve, fixed_list, hourly_data, metric, redis_of, serving

OFFER = 'permessage-deflate; client_max_window_bits'  # what ws and browsers send
ANSWER = b'Sec-WebSocket-Extensions: permessage-deflate; server_no_context_takeover; client_no_context_takeover\r\n'


def inflate(body: bytes) -> bytes:
    return zlib.decompressobj(-15).decompress(body + wsframe.DEFLATE_TAIL)


def compressed(payload: bytes) -> bytes:
    deflater = zlib.compressobj(6, zlib.DEFLATED, -15)
    return (deflater.compress(payload) + deflater.flush(zlib.Z_SYNC_FLUSH))[:-4]


# -- negotiation and frames ----------------------------------------------------------------------------------------


def test_offers_are_answered_without_context_takeover_and_within_the_window_asked() -> None:
    plain = 'permessage-deflate; server_no_context_takeover; client_no_context_takeover'
    assert negotiate_deflate(OFFER) == (plain, 15)
    assert negotiate_deflate('permessage-deflate') == (plain, 15)
    assert negotiate_deflate('permessage-deflate; server_max_window_bits=10') == (
        plain + '; server_max_window_bits=10',
        10,
    )
    # zlib cannot make raw deflate with an 8-bit window: that offer is declined, the next one taken
    assert negotiate_deflate('permessage-deflate; server_max_window_bits=8, permessage-deflate') == (plain, 15)
    assert negotiate_deflate('permessage-deflate; mystery=1') is None
    assert negotiate_deflate('permessage-deflate; client_max_window_bits=99') is None
    assert negotiate_deflate('x-webkit-deflate-frame') is None
    assert negotiate_deflate('') is None


def test_a_deflated_frame_carries_rsv1_and_inflates_to_the_message() -> None:
    payload = ('42["game_list:updated",' + json.dumps(fixed_list(7)) + ']').encode()
    frame = deflated_frame(wsframe.TEXT, payload)
    assert frame[0] == 0x80 | 0x40 | wsframe.TEXT
    body = RawClient.payload(frame)
    assert inflate(body) == payload
    assert len(frame) < len(payload) / 4
    assert deflated_frame(wsframe.TEXT, payload, window_bits=10) != frame  # another window, other bytes


def test_compressed_client_messages_are_inflated_when_negotiated_and_refused_otherwise() -> None:
    reader = FrameReader(65536)
    message = b'42["main:screen"]' * 10
    rsv1 = wsframe.RSV1
    frame = masked(wsframe.TEXT, compressed(message))
    with pytest.raises(FrameError) as refused:
        reader.feed(bytes((frame[0] | rsv1,)) + frame[1:])
    assert refused.value.code == wsframe.PROTOCOL_ERROR
    reader = FrameReader(65536)
    reader.inflate = True
    assert reader.feed(bytes((frame[0] | rsv1,)) + frame[1:]) == [(wsframe.TEXT, message)]
    assert reader.feed(masked(wsframe.TEXT, b'plain')) == [(wsframe.TEXT, b'plain')]  # RSV1 clear: as it is
    # a fragmented compressed message: RSV1 on its first frame only
    body = compressed(message)
    first = masked(wsframe.TEXT, body[:10], fin=False)
    rest = masked(wsframe.CONTINUATION, body[10:])
    assert reader.feed(bytes((first[0] | rsv1,)) + first[1:] + rest) == [(wsframe.TEXT, message)]
    for bad in (bytes((rest[0] | rsv1,)) + rest[1:], bytes((frame[0] | 0x20,)) + frame[1:]):
        fresh = FrameReader(65536)
        fresh.inflate = True
        with pytest.raises(FrameError) as wrong:
            fresh.feed(first + bad if bad[0] & 0x0F == 0 else bad)
        assert wrong.value.code == wsframe.PROTOCOL_ERROR


def test_a_decompression_bomb_is_refused_once_it_inflates_past_max_size() -> None:
    reader = FrameReader(65536)
    reader.inflate = True
    bomb = compressed(b'\0' * 10_000_000)  # 10 MB of zeros in about 10 KB
    assert len(bomb) < 65536
    with pytest.raises(FrameError) as refused:
        reader.feed(bytes((0x80 | 0x40 | wsframe.TEXT,)) + masked(wsframe.TEXT, bomb)[1:])
    assert refused.value.code == wsframe.TOO_BIG and 'inflated' in refused.value.reason
    with pytest.raises(FrameError) as garbage:
        fresh = FrameReader(65536)
        fresh.inflate = True
        fresh.feed(bytes((0x80 | 0x40 | wsframe.TEXT,)) + masked(wsframe.TEXT, b'\xff\xfe not deflate')[1:])
    assert garbage.value.code == wsframe.PROTOCOL_ERROR


# -- against serve -------------------------------------------------------------------------------------------------


@pytest.fixture(scope='module')
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Serve]:
    with serving(tmp_path_factory.mktemp('deflate'), hourly_data()) as serve:
        yield serve


@pytest.fixture(scope='module')
def uncompressed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Serve]:
    data = hourly_data()
    data['server']['compression'] = False
    with serving(tmp_path_factory.mktemp('plain'), data) as serve:
        yield serve


def publish(serve: Serve, version: int) -> None:
    client = redis_of(serve)
    try:
        client.publish('gamelist:updates', json.dumps({'list': 'current', 'data': fixed_list(version)}))
    finally:
        client.close()


def deflated_count(serve: Serve, kind: str) -> float:
    return metric(serve, 'gamelist_deflated_frames_total', f'{{kind="{kind}"}}')


def list_frames(client: RawClient, version: int) -> list[bytes]:
    return [f for f in client.frames if f'"version":{version}'.encode() in RawClient.message(f)]


async def test_a_broadcast_is_compressed_once_and_each_client_gets_what_it_negotiated(served: Serve) -> None:
    before = deflated_count(served, 'broadcast')
    deflating = [await RawClient(served.port, OFFER).connect() for _ in range(2)]
    plain = await RawClient(served.port).connect()
    try:
        assert all(ANSWER in client.head for client in deflating)
        publish(served, 900)
        for client in (*deflating, plain):
            await client._wait(lambda c=client: len(list_frames(c, 900)) == 2)  # on / and /gameplay
        first, second = (list_frames(client, 900) for client in deflating)
        plain_frames = list_frames(plain, 900)
        assert all(frame[0] == 0xC1 for frame in first) and first == second  # RSV1, and the same bytes
        assert all(frame[0] == 0x81 for frame in plain_frames)
        assert [RawClient.message(f) for f in first] == [RawClient.payload(f) for f in plain_frames]
        assert sum(map(len, first)) * 4 < sum(map(len, plain_frames))
        # once per namespace frame, not once per client
        assert deflated_count(served, 'broadcast') - before == 2
    finally:
        for client in (*deflating, plain):
            await client.close()


async def test_main_screen_replies_follow_the_rule_and_compressed_requests_are_read(served: Serve) -> None:
    client = await RawClient(served.port, OFFER).connect()
    try:
        # the request itself compressed, as a browser may send it
        request = compressed(b'421["main:screen"]')
        client._writer.write(bytes((0x80 | 0x40 | 0x1,)) + masked(wsframe.TEXT, request)[1:])  # type: ignore[union-attr]
        await client._wait(lambda: any(RawClient.message(f).startswith(b'431[') for f in client.frames))
        (reply,) = [f for f in client.frames if RawClient.message(f).startswith(b'431[')]
        assert reply[0] == 0xC1  # a 4 KB reply: over the threshold, compressed
        ack = json.loads(RawClient.message(reply)[3:])[0]
        assert ack['status'] == 'success' and ack['data']['gamelist']
        # small packets stay plain: the CONNECT replies and pings
        assert all(f[0] == 0x81 for f in client.frames if len(RawClient.message(f)) < 1024)
    finally:
        await client.close()


async def test_a_client_bomb_closes_its_connection_with_1009(served: Serve) -> None:
    client = await RawClient(served.port, OFFER).connect()
    try:
        bomb = compressed(b'4' + b'2' * 5_000_000)
        client._writer.write(bytes((0x80 | 0x40 | 0x1,)) + masked(wsframe.TEXT, bomb)[1:])  # type: ignore[union-attr]
        await client._wait(lambda: any(f[0] & 0x0F == wsframe.CLOSE for f in client.frames))
        (close,) = [f for f in client.frames if f[0] & 0x0F == wsframe.CLOSE]
        assert wsframe.parse_close(RawClient.payload(close))[0] == wsframe.TOO_BIG
    finally:
        await client.close()


async def test_compression_off_negotiates_nothing(uncompressed: Serve) -> None:
    client = await RawClient(uncompressed.port, OFFER).connect()
    try:
        assert b'sec-websocket-extensions' not in client.head.lower()
        publish(uncompressed, 901)
        await client._wait(lambda: len(list_frames(client, 901)) == 2)
        assert all(frame[0] == 0x81 for frame in list_frames(client, 901))
    finally:
        await client.close()
