"""Hostile Socket.IO clients against `serve`: random, binary and oversized payloads, unknown events, floods.

Every event that asks for an ack gets one (an error or a success) and the connection stays; a message over
server.max_http_buffer_size drops that connection; a bystander connected all along sees nothing but its own answers,
stays connected and is answered quickly; the server's memory stays bounded.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from gamelist_service.web.sockets import NOT_A_PRODUCER

from .helpers import (
    Recorder,
    Serve,
    async_wait_until,
    hourly_data,
    http_get,
    schedule_runs,
    serve_in,
    serving,
    wait_until,
)

MAX_SIZE = 65536  # server.max_http_buffer_size in the shipped file
ACK_TIMEOUT_S = 5.0
DEVICE_FIELDS = ['device_id', 'platform', 'os_version', 'app_version', 'model', 'user_agent', 'locale', 'screen']
ODD_NAMES = [
    '', ' ', 'main:screen ', 'MAIN:SCREEN', 'device:info:', 'game_list:updated', 'message', 'connect', 'disconnect',
    '__init__', '__class__', '_send_current', 'on_connect', 'trigger_event', 'main_screen_', 'x' * 2000, 'é🎲\u2028',
    '\x00', '../../etc/passwd', '%s%s%s', '${HOME}',
]  # fmt: skip


def serve_data(**limits: Any) -> dict[str, Any]:
    data = hourly_data()  # one tick at start, none while a test runs: a bystander must see nothing
    if limits:
        data['limits'] = limits
    return data


@pytest.fixture(scope='module')
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Serve]:
    """A serve whose rate limit is out of the way: these tests send hundreds of events from one connection."""
    data = serve_data(events_per_second=1_000_000, burst=1_000_000)
    with serving(tmp_path_factory.mktemp('hostile'), data) as serve:
        # the start-up tick written first: a main:screen before it would rebuild the list, and the tick rewrite it
        assert wait_until(lambda: schedule_runs(serve) >= 1)
        yield serve
    assert 'Traceback' not in serve.log(), serve.log()[-4000:]


async def connect_bystander(serve: Serve) -> tuple[Recorder, int]:
    """A well-behaved client, and the version of the list when it connected."""
    client = await Recorder(serve.url, 'websocket').connect()
    reply = await client.call('main:screen', timeout_s=ACK_TIMEOUT_S)
    return client, int(reply['data']['version'])


def assert_saw_nothing(client: Recorder, version: int) -> None:
    """Nothing reached the client but its own acks: at most the start-up tick's broadcast, racing its connect."""
    unexpected = [
        (event, ns)
        for event, ns, data in client.events
        if event != 'game_list:updated' or data['data']['version'] > version
    ]
    assert unexpected == [], unexpected[:3]
    assert client.disconnects == [] and client.sio.connected


@pytest.fixture
async def bystander(served: Serve) -> AsyncIterator[Recorder]:
    """A well-behaved client connected through each test; it must receive nothing and stay connected."""
    client, version = await connect_bystander(served)
    yield client
    reply = await client.call('main:screen', timeout_s=ACK_TIMEOUT_S)
    assert reply['status'] == 'success' and reply['data']['version'] == version  # nothing rewrote the list
    assert_saw_nothing(client, version)
    await client.close()


def rss_kb(serve: Serve) -> int:
    assert serve.process is not None
    for line in Path(f'/proc/{serve.process.pid}/status').read_text().splitlines():
        if line.startswith('VmRSS:'):
            return int(line.split()[1])
    raise AssertionError('no VmRSS')


def random_value(rng: random.Random, depth: int = 0) -> Any:
    """JSON-ish data of any shape, with unicode, huge and odd numbers, and binary parts now and then."""
    kinds = ['none', 'bool', 'int', 'big', 'float', 'odd_float', 'str', 'unicode', 'long_str', 'bytes']
    if depth < 4:
        kinds += ['list', 'dict', 'dict', 'device']
    kind = rng.choice(kinds)
    if kind == 'none':
        return None
    if kind == 'bool':
        return rng.random() < 0.5
    if kind == 'int':
        return rng.randint(-(2**31), 2**31)
    if kind == 'big':
        return rng.randint(-(10**40), 10**40)
    if kind == 'float':
        return rng.uniform(-1e9, 1e9)
    if kind == 'odd_float':
        return rng.choice([float('nan'), float('inf'), -float('inf'), -0.0, 1e308, 5e-324])
    if kind == 'str':
        return ''.join(rng.choice('abc:_-/ ') for _ in range(rng.randint(0, 20)))
    if kind == 'unicode':
        return ''.join(chr(rng.randint(1, 0xD7FF)) for _ in range(rng.randint(0, 20)))
    if kind == 'long_str':
        return 'x' * rng.choice([255, 256, 257, 4096, 20_000])
    if kind == 'bytes':
        return rng.randbytes(rng.randint(0, 64))
    if kind == 'list':
        return [random_value(rng, depth + 1) for _ in range(rng.randint(0, 5))]
    if kind == 'device':  # close to a real device:info, so that some are valid and many are nearly so
        fields = rng.sample(DEVICE_FIELDS + ['user_id', 'extra'], rng.randint(0, 5))
        return {name: rng.choice(['web', 'ios', 'x', 1, None, {'width': 1, 'height': 2}]) for name in fields}
    return {str(random_value(rng, 5)): random_value(rng, depth + 1) for _ in range(rng.randint(0, 4))}


def random_event(rng: random.Random) -> tuple[str, Any]:
    """An event name and its arguments: one value, several (a tuple), or none."""
    name = rng.choice(['main:screen', 'device:info', 'device:info', rng.choice(ODD_NAMES), f'ev{rng.random()}'])
    shape = rng.random()
    if shape < 0.1:
        return name, None
    if shape < 0.25:
        return name, tuple(random_value(rng) for _ in range(rng.randint(2, 4)))
    return name, random_value(rng)


def check_ack(name: str, reply: Any) -> None:
    """The ack the contract promises for each kind of event."""
    assert isinstance(reply, dict), (name, reply)
    if name == 'main:screen':
        assert reply['status'] == 'success' and reply['event'] == 'main:screen', reply
    elif name == 'device:info':
        assert reply['status'] in ('success', 'error'), reply
        assert reply['status'] == 'success' or reply['message'], reply
    elif name == 'game_list:updated':  # from a client that is not a producer
        assert reply == {'status': 'error', 'message': NOT_A_PRODUCER}, reply
    else:
        assert reply['status'] == 'error', (name, reply)
        assert 'unknown event' in reply['message'] or 'reserved event name' in reply['message'], reply


async def send_random_events(client: Recorder, rng: random.Random, count: int) -> dict[str, int]:
    """count random events, each through call(): every one must be acked within the timeout."""
    seen = {'success': 0, 'error': 0}
    for _ in range(count):
        name, data = random_event(rng)
        reply = await client.call(name, data, timeout_s=ACK_TIMEOUT_S)
        check_ack(name, reply)
        seen[reply['status']] += 1
    return seen


@pytest.mark.timeout(60)
async def test_random_payloads_each_get_an_ack_and_the_connection_stays(served: Serve, bystander: Recorder) -> None:
    rng = random.Random(20240101)
    for transport in ('websocket', 'polling'):
        client = await Recorder(served.url, transport).connect()
        try:
            seen = await send_random_events(client, rng, 150)
            assert seen['success'] > 10 and seen['error'] > 10, seen  # both kinds of answer were exercised
            assert client.sio.connected and client.disconnects == []
        finally:
            await client.close()


async def test_binary_attachments_get_an_error_ack(served: Serve, bystander: Recorder) -> None:
    client = await Recorder(served.url, 'websocket').connect()
    try:
        reply = await client.call('device:info', b'\x00\x01binary')
        assert reply == {'status': 'error', 'message': 'device:info must be an object, not binary data'}
        reply = await client.call('device:info', {'model': b'\xff' * 100, 'platform': 'web'})
        assert reply['status'] == 'error' and reply['message'].startswith('model:'), reply
        reply = await client.call('device:info', (b'a', b'b'))
        assert reply == {'status': 'error', 'message': 'device:info takes one object'}
        reply = await client.call('no:such:event', [b'\x00' * 1000, {'x': b'y'}], namespace='/gameplay')
        assert reply == {'status': 'error', 'message': "unknown event 'no:such:event'"}
        # main:screen takes no arguments: a binary one is ignored and the list comes back, as for any other
        reply = await client.call('main:screen', b'\x00')
        assert reply['status'] == 'success' and reply['event'] == 'main:screen'
        assert client.sio.connected
    finally:
        await client.close()


@pytest.mark.parametrize('transport', ['websocket', 'polling'])
@pytest.mark.parametrize('event', ['main:screen', 'device:info', 'no:such:event'])
async def test_a_message_over_the_buffer_size_drops_that_connection(
    served: Serve, bystander: Recorder, transport: str, event: str
) -> None:
    abuser = await Recorder(served.url, transport).connect()
    try:
        await abuser.sio.emit(event, {'model': 'x' * (MAX_SIZE + 1)})
        assert await async_wait_until(lambda: bool(abuser.disconnects), timeout_s=ACK_TIMEOUT_S)
        assert not abuser.sio.connected
    finally:
        await abuser.close()
    assert http_get(served.url + '/health')[0] == 200


async def test_a_message_just_under_the_buffer_size_is_answered(served: Serve, bystander: Recorder) -> None:
    client = await Recorder(served.url, 'websocket').connect()
    try:
        reply = await client.call('device:info', {'model': 'x' * (MAX_SIZE - 100)})
        assert reply['status'] == 'error' and 'at most 4096' in reply['message']
        assert client.sio.connected
    finally:
        await client.close()


async def flood(client: Recorder, count: int) -> tuple[list[Any], float]:
    """count events emitted at once, each with an ack callback; the acks that came back and how long they took."""
    acks: list[Any] = []
    started = time.monotonic()
    for i in range(count):
        event = ('main:screen', 'device:info', 'flood:event')[i % 3]
        await client.sio.emit(event, {'platform': 'web', 'n': i}, callback=lambda *args: acks.append(args))
    await async_wait_until(lambda: len(acks) == count or bool(client.disconnects), timeout_s=30)
    return acks, time.monotonic() - started


async def bystander_latency(client: Recorder, rounds: int = 5) -> float:
    worst = 0.0
    for _ in range(rounds):
        started = time.monotonic()
        reply = await client.call('main:screen', timeout_s=ACK_TIMEOUT_S)
        worst = max(worst, time.monotonic() - started)
        assert reply['status'] == 'success'
    return worst


async def flood_beside(serve: Serve, bystander: Recorder, version: int) -> tuple[Recorder, list[Any]]:
    """2,000 events at once from a new connection while the bystander asks for the list; the flooder and its acks."""
    flooder = await Recorder(serve.url, 'websocket').connect()
    flooding = asyncio.create_task(flood(flooder, 2000))
    during = await bystander_latency(bystander)
    acks, took = await flooding
    after = await bystander_latency(bystander)
    print(f'flood: {len(acks)} acks in {took:.2f}s, flooder disconnected: {bool(flooder.disconnects)}; '
          f'bystander main:screen worst {during:.3f}s during, {after:.3f}s after')  # fmt: skip
    assert during < 2.0 and after < 2.0
    assert_saw_nothing(bystander, version)
    return flooder, acks


async def test_a_flood_without_a_rate_limit_is_answered_and_the_server_stays_responsive(
    served: Serve, bystander: Recorder
) -> None:
    version = int((await bystander.call('main:screen'))['data']['version'])
    flooder, acks = await flood_beside(served, bystander, version)
    try:
        assert len(acks) == 2000 and flooder.sio.connected  # limits are out of the way on this serve
        assert all(isinstance(ack[0], dict) and ack[0]['status'] in ('success', 'error') for ack in acks)
    finally:
        await flooder.close()


async def test_a_flood_under_the_default_limits_leaves_the_server_responsive(tmp_path: Path) -> None:
    """The same flood on a serve with the default limits (what operators run)."""
    serve = serve_in(tmp_path, serve_data())
    # the start-up tick written first: a main:screen before it would rebuild the list, and the tick rewrite it
    assert wait_until(lambda: schedule_runs(serve) >= 1)
    try:
        bystander, version = await connect_bystander(serve)
        try:
            flooder, acks = await flood_beside(serve, bystander, version)
            await flooder.close()
            # the per-connection rate limit (config `limits`, over_limit: disconnect by default): the events over
            # the burst get the error ack 'rate limit exceeded', then the connection is closed
            assert flooder.disconnects
            assert len(acks) < 2000
            assert any(ack and ack[0].get('message') == 'rate limit exceeded' for ack in acks), acks[-3:]
        finally:
            await bystander.close()
    finally:
        assert serve.stop() == 0
    assert 'Traceback' not in serve.log()


@pytest.mark.timeout(60)
async def test_memory_stays_bounded_through_a_hostile_phase(served: Serve, bystander: Recorder) -> None:
    """The server's RSS before and after rounds of every kind of abuse, each measured after 200 round trips."""
    for _ in range(200):  # warm up: the allocator, caches and the list in Redis
        await bystander.call('main:screen')
    before = rss_kb(served)
    rng = random.Random(7)
    for _ in range(3):
        client = await Recorder(served.url, 'websocket').connect()
        await send_random_events(client, rng, 100)
        await flood(client, 500)
        await client.close()
        for transport in ('websocket', 'polling'):
            abuser = await Recorder(served.url, transport).connect()
            await abuser.sio.emit('device:info', 'x' * (MAX_SIZE + 1))
            assert await async_wait_until(lambda a=abuser: bool(a.disconnects), timeout_s=ACK_TIMEOUT_S)  # type: ignore[misc]
            await abuser.close()
    for _ in range(200):  # settle
        await bystander.call('main:screen')
    after = rss_kb(served)
    print(
        f'serve RSS before {before / 1024:.1f} MB, after {after / 1024:.1f} MB, growth {(after - before) / 1024:.1f} MB'
    )
    assert after - before < 50 * 1024
