"""Faults, really caused: Redis stopped under load, the embedded Redis killed, an instance killed, broken reloads."""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import subprocess
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from redis.asyncio import Redis

from gamelist_service.errors import StoreError
from gamelist_service.producers.updater import GameListUpdater
from gamelist_service.storage.instances import running

from .conftest import RedisServer, cli_command, free_port
from .helpers import (
    Recorder,
    Serve,
    async_wait_until,
    http_get,
    metric,
    redis_servers_on,
    serve_in,
    shipped_data,
    wait_until,
    write_config,
)
from .helpers import (
    ready as ready_of,
)

TOKEN = 'fault-token'
OUTAGE_S = 30.0


def versions(client: Recorder, namespace: str = '/') -> list[int]:
    return [m['data']['version'] for m in client.received('game_list:updated', namespace)]


async def aget(url: str) -> tuple[int, Any]:
    return await asyncio.to_thread(http_get, url, 3.0)


async def aput(url: str, body: Any) -> tuple[int, Any]:
    def put() -> tuple[int, Any]:
        request = urllib.request.Request(
            url,
            data=json.dumps(body).encode(),
            method='PUT',
            headers={'Authorization': f'Bearer {TOKEN}', 'Content-Type': 'application/json'},
        )
        try:
            with urllib.request.urlopen(request, timeout=15) as response:
                return response.status, json.loads(response.read())
        except urllib.error.HTTPError as exc:
            return exc.code, json.loads(exc.read() or b'null')

    return await asyncio.to_thread(put)


async def acli(serve: Serve, *args: str) -> subprocess.CompletedProcess[str]:
    return await asyncio.to_thread(
        subprocess.run,
        cli_command(*args),
        cwd=serve.workdir,
        capture_output=True,
        text=True,
        timeout=30,
        env=serve.env,
        check=False,
    )


def assert_connected(clients: list[Recorder]) -> None:
    for client in clients:
        assert client.sio.connected and client.disconnects == [], (client.transport, client.disconnects)


# -- Redis stopped for 30 s ----------------------------------------------------------------------------------------


@pytest.mark.timeout(120)
async def test_redis_outage_of_30s_keeps_clients_fails_loudly_and_recovers_without_restart(tmp_path: Path) -> None:
    (tmp_path / 'redis').mkdir()
    redis_server = RedisServer(tmp_path / 'redis')
    redis_server.start()
    data = shipped_data(admin=True)
    data['schedules'][0]['every'] = '500ms'
    serve = Serve(
        tmp_path,
        write_config(tmp_path / 'games.yaml', data),
        free_port(),
        '--redis-url',
        redis_server.url,
        env={'GAMELIST_API_TOKEN': TOKEN},
    )
    clients: list[Recorder] = []
    try:
        serve.start()
        clients = [await Recorder(serve.url, transport).connect() for transport in ('websocket', 'polling')]
        assert await async_wait_until(lambda: all(len(versions(c)) >= 3 for c in clients))

        redis_server.stop()  # SIGTERM: the server goes away, its port refuses connections
        down_at = time.monotonic()
        # a list published just before the stop may still be on its way to the clients: count from once the
        # service has seen Redis go (its subscription lost, then /ready answers 503)
        assert await async_wait_until(lambda: 'Redis subscription to gamelist:updates lost' in serve.log())
        assert (await asyncio.to_thread(ready_of, serve, 3.0))[0] == 503
        before = {id(c): len(versions(c)) for c in clients}
        checked: set[str] = set()
        rounds = 0
        while time.monotonic() - down_at < OUTAGE_S:  # the one deliberate wait, checking all along
            rounds += 1
            assert_connected(clients)
            status, body = await asyncio.to_thread(ready_of, serve, 3.0)
            assert status == 503 and 'Redis' in body['reason'], body
            assert body['redis']['status'] == 'error'
            if 'health' not in checked:
                assert (await aget(serve.url + '/health')) == (200, {'status': 'ok'})
                checked.add('health')
            if 'main:screen' not in checked:
                for client in clients:
                    started = time.monotonic()
                    reply = await client.call('main:screen', timeout_s=10)
                    assert reply == {'status': 'error', 'message': 'the game list is unavailable right now'}
                    assert time.monotonic() - started < 5, 'main:screen answers, it does not hang'
                checked.add('main:screen')
            if 'publish' not in checked:
                result = await acli(serve, 'publish', '--config', str(serve.config), '--redis-url', redis_server.url)
                assert result.returncode == 1, result
                assert result.stderr.startswith(f'error: Redis at {redis_server.url} failed to'), result.stderr
                assert 'Error 111 connecting' in result.stderr
                checked.add('publish')
            if 'put' not in checked:
                status, reply = await aput(serve.url + '/api/v1/gamelist', {'gamelist': [{'game_name': 'Go'}]})
                assert status == 503 and reply['status'] == 'error', reply
                checked.add('put')
            if 'updater' not in checked:
                updater = GameListUpdater(redis_url=redis_server.url)
                try:
                    with pytest.raises(StoreError, match='failed to SET gamelist:current'):
                        await asyncio.to_thread(updater.update_game_list_in_redis)
                    with pytest.raises(StoreError, match='failed to PUBLISH gamelist:updates'):
                        await asyncio.to_thread(updater.send_game_list_update_notification, {'gamelist': []})
                    with pytest.raises(StoreError):
                        await asyncio.to_thread(updater.update_and_notify)
                finally:
                    updater.close()
                checked.add('updater')
            await asyncio.sleep(0.5)
        assert checked == {'health', 'main:screen', 'publish', 'put', 'updater'}
        log = serve.log()
        failed = re.findall(r'schedule refresh-current run \d+ failed: (.*)', log)
        assert failed, 'ticks during the outage fail with a logged cause'
        assert all(f'Redis at {redis_server.url} failed to' in cause for cause in failed), failed
        assert 'Redis subscription to gamelist:updates lost' in log
        assert 'Traceback' not in log
        for client in clients:
            assert len(versions(client)) == before[id(client)], 'nothing was broadcast while Redis was down'
        assert_connected(clients)
        print(f'\noutage: {time.monotonic() - down_at:.1f}s, {rounds} rounds of checks, {len(failed)} failed ticks')

        redis_server.start()  # the same port, empty: it kept nothing
        back_at = time.monotonic()
        assert await async_wait_until(lambda: all(len(versions(c)) > before[id(c)] for c in clients), timeout_s=15)
        broadcast_s = time.monotonic() - back_at
        assert await async_wait_until(lambda: 'Redis is back' in serve.log(), timeout_s=10)
        status, body = await asyncio.to_thread(ready_of, serve, 3.0)
        assert status == 200 and body['status'] == 'ready' and body['leader'] is True, body
        ready_s = time.monotonic() - back_at
        for client in clients:
            # the first tick after Redis came back (empty: versions start again at 1) reached every client, and
            # every later one too, once
            fresh = versions(client)[before[id(client)] :]
            assert fresh == list(range(1, len(fresh) + 1)), fresh
            reply = await client.call('main:screen')
            assert reply['status'] == 'success' and reply['data']['version'] >= max(fresh)
        assert_connected(clients)
        print(f'back: first broadcast {broadcast_s:.2f}s and ready {ready_s:.2f}s after Redis restarted')
    finally:
        for client in clients:
            await client.close()
        assert serve.stop() == 0
        redis_server.stop()


# -- the embedded Redis dies under serve ---------------------------------------------------------------------------


def embedded_socket(serve: Serve) -> Path:
    (instance,) = running(serve.workdir / '.gamelist', serve.config)
    return Path(instance.redis_url.removeprefix('unix://'))


async def new_redis_pid(socket_path: Path, old: set[int], timeout_s: float = 15.0) -> int:
    found: list[int] = []

    def fresh() -> bool:
        found[:] = [pid for pid in redis_servers_on(socket_path) if pid not in old]
        return len(found) == 1

    assert await async_wait_until(fresh, timeout_s), f'no new redis-server on {socket_path}'
    return found[0]


@pytest.mark.timeout(30)
async def test_embedded_redis_killed_is_restarted_and_the_service_works_on(tmp_path: Path) -> None:
    data = shipped_data(admin=True)
    data['schedules'][0]['every'] = '500ms'
    serve = serve_in(tmp_path, data)
    clients: list[Recorder] = []
    try:
        socket_path = embedded_socket(serve)
        (pid,) = redis_servers_on(socket_path)
        clients = [await Recorder(serve.url, transport).connect() for transport in ('websocket', 'polling')]
        assert await async_wait_until(lambda: all(versions(c) for c in clients))
        os.kill(pid, signal.SIGKILL)
        killed_at = time.monotonic()
        new_pid = await new_redis_pid(socket_path, {pid})
        restarted_s = time.monotonic() - killed_at
        assert await async_wait_until(lambda: metric(serve, 'gamelist_embedded_redis_restarts_total') >= 1)
        log = serve.log()
        assert f'embedded Redis (pid {pid}) killed by SIGKILL; restarting it on {socket_path}' in log
        assert await async_wait_until(lambda: ready_of(serve, 1.0)[0] == 200, timeout_s=15)
        ready_s = time.monotonic() - killed_at
        # the restarted Redis is empty: the schedule takes the lease again and versions start again at 1
        mark = {id(c): len(versions(c)) for c in clients}
        result = await acli(serve, 'publish', '--config', str(serve.config))
        assert result.returncode == 0, result.stderr
        published = int(re.findall(r'version (\d+)', result.stdout)[0])
        for client in clients:
            await client.wait_for('game_list:updated', '/', mark[id(client)] + 1)
            assert await async_wait_until(lambda c=client: published in versions(c))  # type: ignore[misc]
            reply = await client.call('main:screen')
            assert reply['status'] == 'success'
        assert_connected(clients)
        assert serve.process is not None and serve.process.poll() is None
        assert redis_servers_on(socket_path) == [new_pid]
        print(f'\nembedded Redis: new process {restarted_s:.2f}s and /ready 200 {ready_s:.2f}s after kill -9')
    finally:
        for client in clients:
            await client.close()
        assert serve.stop() == 0
    assert redis_servers_on(socket_path) == []


@pytest.mark.timeout(60)
async def test_embedded_redis_that_keeps_dying_stops_serve_with_a_clear_message(tmp_path: Path) -> None:
    serve = serve_in(tmp_path, shipped_data(admin=True))
    client = await Recorder(serve.url).connect()
    try:
        socket_path = embedded_socket(serve)
        killed: set[int] = set()
        for deaths in range(6):  # restarted 5 times (with backoff), and the sixth death within 60 s ends serve
            assert await async_wait_until(
                lambda n=deaths: metric(serve, 'gamelist_embedded_redis_restarts_total') >= n  # type: ignore[misc]
            )
            pid = await new_redis_pid(socket_path, killed)
            os.kill(pid, signal.SIGKILL)
            killed.add(pid)
        assert serve.process is not None
        assert await asyncio.to_thread(serve.process.wait, 30) == 1
        log = serve.log()
        assert log.count('embedded Redis restarted') == 5
        assert re.search(
            rf'error: the embedded Redis \(socket {re.escape(str(socket_path))}\) died 6 times within 60s, '
            r'last killed by SIGKILL; not restarting it again, serve stops\. See .*redis\.log',
            log,
        ), log[-2000:]
        assert await async_wait_until(lambda: bool(client.disconnects))  # serve stopped: its clients are told
        assert redis_servers_on(socket_path) == []
        assert running(tmp_path / '.gamelist') == []
    finally:
        await client.close()
        serve.stop()


# -- an instance killed with -9 while it leads ----------------------------------------------------------------------


def leading(serve: Serve) -> bool:
    try:
        return bool(ready_of(serve, 1.0)[1].get('leader'))
    except OSError:
        return False


@pytest.mark.timeout(30)
async def test_clients_of_a_killed_leader_catch_up_on_another_instance(
    tmp_path: Path, redis_url: str, redis_client: Redis
) -> None:
    serves = []
    for name in ('a', 'b'):
        workdir = tmp_path / name
        workdir.mkdir()
        data = shipped_data(admin=True)
        data['schedules'][0]['every'] = '1h'  # one tick at the start, then only what is published
        data['leader'] = {'lease': '1s'}
        serves.append(Serve(workdir, write_config(workdir / 'games.yaml', data), free_port(), '--redis-url', redis_url))
    first, second = serves
    client: Recorder | None = None
    again: Recorder | None = None
    try:
        first.start()
        assert wait_until(lambda: leading(first))
        second.start()
        client = await Recorder(first.url).connect()
        last = (await client.call('main:screen'))['data']['version']
        assert first.process is not None
        first.process.kill()  # kill -9 while it leads the schedule
        first.process.wait(10)
        assert await async_wait_until(lambda: bool(client.disconnects))
        result = await acli(first, 'publish', '--config', str(first.config), '--redis-url', redis_url)
        assert result.returncode == 0, result.stderr
        assert '1 service process(es) subscribed' in result.stdout
        published = int(re.findall(r'version (\d+)', result.stdout)[0])
        assert published > last
        # the client reconnects, to the other instance, with the last version it saw
        again = await Recorder(second.url, auth={'since': last}).connect()
        for namespace in ('/', '/gameplay'):
            (message,) = await again.wait_for('game_list:updated', namespace)
            assert message['data']['version'] == published
            assert message['event'] == 'game_list:updated' and message['data']['total_games'] == 5
        assert await async_wait_until(lambda: leading(second), timeout_s=5)
    finally:
        for recorder in (client, again):
            if recorder is not None:
                await recorder.close()
        for serve in serves:
            serve.stop()


# -- Redis emptied under a running service ---------------------------------------------------------------------------


@pytest.mark.timeout(30)
async def test_main_screen_follows_redis_when_versions_start_again(
    tmp_path: Path, redis_url: str, redis_client: Redis
) -> None:
    data = shipped_data(admin=True)
    data['schedules'][0]['every'] = '1h'
    serve = Serve(tmp_path, write_config(tmp_path / 'games.yaml', data), free_port(), '--redis-url', redis_url)
    client: Recorder | None = None
    try:
        serve.start()
        client = await Recorder(serve.url).connect()
        for _ in range(3):
            assert (
                await acli(serve, 'publish', '--config', str(serve.config), '--redis-url', redis_url)
            ).returncode == 0
        assert await async_wait_until(lambda: max(versions(client) or [0]) >= 4)
        held = (await client.call('main:screen'))['data']['version']
        assert held >= 4
        await redis_client.flushdb()  # as a restarted Redis without persistence: versions start again
        result = await acli(serve, 'publish', '--config', str(serve.config), '--redis-url', redis_url)
        assert result.returncode == 0, result.stderr
        assert await async_wait_until(lambda: versions(client)[-1] < held)  # the list written after the flush
        reply = await client.call('main:screen')
        stored = json.loads(await redis_client.get('gamelist:current') or b'{}')
        assert reply['data']['version'] == stored['version'] < held, 'main:screen follows Redis, not the old list'
        assert reply['data']['gamelist'] == stored['gamelist']
    finally:
        if client is not None:
            await client.close()
        assert serve.stop() == 0


# -- SIGHUP with a broken file, many times, under load ---------------------------------------------------------------


@pytest.mark.timeout(120)
async def test_repeated_broken_sighup_under_load_applies_nothing_and_drops_nobody(tmp_path: Path) -> None:
    data = shipped_data(admin=True)
    data['schedules'][0]['every'] = '300ms'
    serve = serve_in(tmp_path, data)
    clients: list[Recorder] = []
    try:
        clients.extend(
            await asyncio.gather(
                *(Recorder(serve.url, 'polling' if i < 5 else 'websocket').connect() for i in range(50))
            )
        )
        before = (await asyncio.to_thread(ready_of, serve, 3.0))[1]['config']
        serve.config.write_text(serve.config.read_text().replace('ttl: 300s', 'ttl: nope'))
        started = time.monotonic()
        for attempt in range(1, 21):
            serve.signal(signal.SIGHUP)
            assert await async_wait_until(lambda n=attempt: serve.log().count('reload rejected') >= n, timeout_s=5)  # type: ignore[misc]
        burst_s = time.monotonic() - started
        status, body = await asyncio.to_thread(ready_of, serve, 3.0)
        assert status == 200, body
        after = body['config']
        assert after['generation'] == before['generation'] and after['sha256'] == before['sha256']
        assert after['last_attempt_successful'] is False
        assert metric(serve, 'gamelist_config_generation') == 1  # no reload applied
        last = (await clients[0].call('main:screen'))['data']['version']
        assert await async_wait_until(lambda: all(last in versions(c) for c in clients), timeout_s=15)
        for client in clients:
            seen = versions(client)
            upto = [v for v in seen if v <= last]
            assert upto == list(range(upto[0], last + 1)), (client.transport, upto)  # every tick, once, in order
            assert all(m['data']['cache_duration'] == '300 seconds' for m in client.received('game_list:updated', '/'))
        assert_connected(clients)
        print(f'\n20 broken reloads rejected in {burst_s:.2f}s; 50 clients kept, versions up to {last} contiguous')
    finally:
        await asyncio.gather(*(client.close() for client in clients))
        assert serve.stop() == 0
