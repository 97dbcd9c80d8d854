"""Reload on SIGHUP, several workers, several instances on one Redis (lease, failover, fencing), and /metrics."""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import subprocess
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from redis.asyncio import Redis

from gamelist_service.config.reload import Launch
from gamelist_service.errors import FencedError
from gamelist_service.storage.instances import running
from gamelist_service.storage.store import LEADER_KEY, Store

from .conftest import cli_command, free_port
from .helpers import (
    ADMIN_ENV,
    ADMIN_TOKEN,
    Recorder,
    Serve,
    async_wait_until,
    hourly_data,
    http_get,
    serve_in,
    serving,
    shipped_data,
    wait_until,
    write_config,
)
from .helpers import ready as ready_of


def versions(client: Recorder, namespace: str = '/') -> list[int]:
    return [m['data']['version'] for m in client.received('game_list:updated', namespace)]


def metrics_text(serve: Serve) -> str:
    import urllib.request  # noqa: PLC0415

    with urllib.request.urlopen(serve.url + '/metrics', timeout=5) as response:
        return str(response.read().decode())


def metric(text: str, name: str, labels: str = '') -> float | None:
    match = re.search(rf'^{re.escape(name)}{re.escape(labels)} ([0-9.e+-]+)$', text, flags=re.MULTILINE)
    return float(match.group(1)) if match else None


def generation(serve: Serve) -> float | None:
    """The configuration generation /metrics shows: 1 at start, +1 per applied reload."""
    return metric(metrics_text(serve), 'gamelist_config_generation')


def reload_ok(serve: Serve) -> float | None:
    """Whether the last reload attempt succeeded (1) or not (0), as /metrics shows it."""
    return metric(metrics_text(serve), 'gamelist_config_last_reload_successful')


def ready(serve: Serve) -> dict[str, Any]:
    status, body = ready_of(serve)
    assert status == 200, body
    return dict(body)


def cli(serve: Serve, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(  # noqa: PLW1510 - the exit code is asserted
        cli_command(*args), cwd=serve.workdir, capture_output=True, text=True, timeout=30, env=serve.env
    )


# -- reload --------------------------------------------------------------------------------------------------------


@pytest.fixture
def reloadable(tmp_path: Path) -> Iterator[tuple[Serve, dict[str, Any]]]:
    data = hourly_data(admin=True)
    with serving(tmp_path, data) as serve:
        yield serve, data


@pytest.fixture
async def connected(reloadable: tuple[Serve, dict[str, Any]]) -> AsyncIterator[Recorder]:
    client = await Recorder(reloadable[0].url).connect()
    yield client
    await client.close()


async def test_reload_applies_a_valid_change_without_dropping_clients(
    reloadable: tuple[Serve, dict[str, Any]], connected: Recorder
) -> None:
    serve, data = reloadable
    before = ready(serve)['config']
    data['games'][0]['name'] = 'Texas Holdem'
    data['lists']['current']['ttl'] = '120s'
    data['schedules'].append({'name': 'fast', 'list': 'current', 'every': '300ms'})
    write_config(serve.config, data)
    result = cli(serve, 'reload', '--config', str(serve.config))
    assert result.returncode == 0, result.stderr
    assert f'sent SIGHUP to serve pid {serve.process.pid if serve.process else 0}' in result.stdout
    assert wait_until(lambda: generation(serve) == 2)
    after = ready(serve)['config']
    assert after['generation'] == 2 and after['last_attempt_successful'] is True
    assert after['sha256'] != before['sha256'] and after['last_success'] > before['last_success']
    # which schedules a reload kept, started or stopped is said only in its log line (written just after the metric)
    assert wait_until(lambda: "kept ['refresh-current']" in serve.log() and "started ['fast']" in serve.log())
    # the new schedule runs, with the new template and TTL, to the client that was connected all along
    assert await async_wait_until(
        lambda: any(
            m['data']['gamelist'][0]['game_name'] == 'Texas Holdem'
            for m in connected.received('game_list:updated', '/')
        )
    )
    renamed = [m for m in connected.received('game_list:updated', '/') if m['data']['cache_duration'] == '120 seconds']
    assert renamed
    assert connected.sio.connected and connected.disconnects == []
    text = metrics_text(serve)
    assert metric(text, 'gamelist_config_generation') == 2
    assert metric(text, 'gamelist_config_last_reload_successful') == 1
    assert metric(text, 'gamelist_config_info', f'{{sha256="{after["sha256"]}"}}') == 1


async def test_reload_rejects_an_invalid_file_and_keeps_running(
    reloadable: tuple[Serve, dict[str, Any]], connected: Recorder
) -> None:
    serve, _ = reloadable
    before = ready(serve)['config']
    good = serve.config.read_text()
    serve.config.write_text(good.replace('max_players: 8', 'max_players: 1').replace('ttl: 300s', 'ttl: 0s'))
    serve.signal(signal.SIGHUP)
    assert wait_until(lambda: reload_ok(serve) == 0)  # set after the problems are logged
    assert re.search(rf'{re.escape(str(serve.config))}:\d+:\d+: lists\.current\.ttl: ', serve.log())
    assert re.search(rf'{re.escape(str(serve.config))}:\d+:\d+: games\[0\]\.min_players: ', serve.log())
    after = ready(serve)['config']
    assert after['generation'] == before['generation'] and after['sha256'] == before['sha256']
    assert after['last_attempt_successful'] is False and after['last_errors']
    assert metric(metrics_text(serve), 'gamelist_config_last_reload_successful') == 0
    reply = await connected.call('main:screen')
    assert reply['data']['cache_duration'] == '300 seconds'  # the old configuration still serves
    serve.config.write_text(good)
    serve.signal(signal.SIGHUP)
    assert wait_until(lambda: generation(serve) == 2)
    assert ready(serve)['config']['last_attempt_successful'] is True
    assert metric(metrics_text(serve), 'gamelist_config_last_reload_successful') == 1
    assert connected.disconnects == []


def test_reload_of_a_restart_only_setting_is_logged_and_the_rest_applied(
    reloadable: tuple[Serve, dict[str, Any]],
) -> None:
    serve, data = reloadable
    data['server']['host'] = '0.0.0.0'
    data['redis']['url'] = 'redis://127.0.0.1:1/0'
    data['games'][1]['name'] = 'Blackjack Live'
    write_config(serve.config, data)
    serve.signal(signal.SIGHUP)
    assert wait_until(lambda: generation(serve) == 2)  # applied; what needs a restart is logged before
    log = serve.log()
    assert "server.host: '127.0.0.1' -> '0.0.0.0' needs a restart" in log
    assert "redis.url: 'embedded' -> 'redis://127.0.0.1:1/0' needs a restart" in log
    body = ready(serve)  # still on the same port and the same (embedded) Redis
    assert body['redis']['status'] == 'ok'
    assert len(body['config']['restart_needed']) == 2
    # the rest applies: the next refresh uses the new template
    result = cli(serve, 'publish', '--config', str(serve.config), '--redis-url', running_redis(serve))
    assert result.returncode == 0, result.stderr
    status, current = http_get(serve.url + '/api/v1/gamelist')
    assert status == 200 and current['gamelist'][1]['game_name'] == 'Blackjack Live'


def running_redis(serve: Serve) -> str:
    (instance,) = running(serve.workdir / '.gamelist', port=serve.port)
    return instance.redis_url


@pytest.mark.timeout(120)
async def test_reload_under_load_loses_no_connection_and_no_broadcast(tmp_path: Path) -> None:
    data = shipped_data(admin=True)
    data['schedules'][0]['every'] = '200ms'
    serve = serve_in(tmp_path, data)
    clients: list[Recorder] = []
    try:
        clients.extend(
            await asyncio.gather(
                *(Recorder(serve.url, 'polling' if i < 5 else 'websocket').connect() for i in range(60))
            )
        )
        # a tick after every client joined (the start-up tick may be the only one so far, and they missed it)
        assert await async_wait_until(lambda: all(versions(c) for c in clients), timeout_s=15)
        good = serve.config.read_text()
        for attempt in range(6):  # valid and invalid reloads, alternately, while the schedule broadcasts
            serve.config.write_text(good if attempt % 2 else good.replace('ttl: 300s', 'ttl: nope'))
            serve.signal(signal.SIGHUP)
            if attempt % 2:  # applied: generation 2, 3, 4
                assert await async_wait_until(
                    lambda n=attempt // 2 + 2: generation(serve) == n and reload_ok(serve) == 1  # type: ignore[misc]
                )
            else:  # rejected: the last attempt failed (each one follows an applied reload, or the start)
                assert await async_wait_until(lambda: reload_ok(serve) == 0)
        last = (await clients[0].call('main:screen'))['data']['version']
        reached = await async_wait_until(lambda: all(last in versions(c) for c in clients), timeout_s=15)
        missing = [(c.transport, versions(c)[-3:], c.disconnects) for c in clients if last not in versions(c)]
        assert reached, (last, missing)
        for client in clients:
            assert client.sio.connected and client.disconnects == []
            seen = versions(client)
            upto = [v for v in seen if v <= last]
            # every tick between the first one a client saw and `last` reached it, once, in order
            assert upto == list(range(upto[0], last + 1)), (client.transport, upto)
    finally:
        await asyncio.gather(*(client.close() for client in clients))
        assert serve.stop() == 0


@pytest.mark.timeout(30)
async def test_reload_while_a_tick_is_running(tmp_path: Path) -> None:
    data = shipped_data(admin=True)
    data['schedules'][0]['every'] = '500ms'
    serve = serve_in(tmp_path, data, global_args=('-v',))
    client = await Recorder(serve.url).connect()
    pauser = redis.Redis.from_url(running_redis(serve))
    try:
        starts = serve.log().count('run starting')
        pauser.client_pause(1500, all=False)  # the next tick blocks in Redis, mid-run
        assert await async_wait_until(lambda: serve.log().count('run starting') > starts)
        data['schedules'][0]['every'] = '700ms'  # changed: the schedule restarts, after its run in progress
        write_config(serve.config, data)
        serve.signal(signal.SIGHUP)
        assert await async_wait_until(lambda: generation(serve) == 2)
        assert await async_wait_until(lambda: "restarted ['refresh-current']" in serve.log())
        last = max(versions(client) or [0])
        assert await async_wait_until(lambda: len([v for v in versions(client) if v > last]) >= 3, timeout_s=15)
        assert 'failed' not in serve.log()
        seen = versions(client)
        assert seen == sorted(set(seen))
    finally:
        pauser.close()
        await client.close()
        assert serve.stop() == 0


# -- workers -------------------------------------------------------------------------------------------------------


@pytest.mark.timeout(60)
async def test_two_workers_deliver_each_broadcast_once_and_tick_once(tmp_path: Path) -> None:
    data = shipped_data(admin=True)
    data['schedules'][0].update(every='400ms', max_runs=6)
    # -v: per-client lines (which worker a client joined) are DEBUG
    serve = serve_in(tmp_path, data, '--workers', '2', global_args=('-v',), timeout_s=40)
    clients: list[Recorder] = []
    try:
        assert 'starting 2 worker processes' in serve.log()
        assert wait_until(lambda: serve.log().count('Worker ready') == 2, timeout_s=40)
        for _ in range(16):
            clients.append(await Recorder(serve.url).connect())
        pids = set(re.findall(r'\[(\d+)\] gamelist_service\.web\.sockets: client \S+ connected to / ', serve.log()))
        assert len(pids) == 2, 'clients landed on both workers'
        assert await async_wait_until(lambda: 'finished after 6 runs' in serve.log(), timeout_s=20)
        result = cli(serve, 'publish', '--config', str(serve.config), '--port', str(serve.port))
        assert result.returncode == 0 and '2 service process(es) subscribed' in result.stdout
        published = int(re.findall(r'version (\d+)', result.stdout)[0])
        assert await async_wait_until(lambda: all(published in versions(c) for c in clients))
        for client in clients:
            for namespace in ('/', '/gameplay'):
                seen = versions(client, namespace)
                assert len(seen) == len(set(seen)), 'each broadcast arrives once'
        (instance,) = running(tmp_path / '.gamelist')
        ledger = redis.Redis.from_url(instance.redis_url)
        assert ledger.hget('gamelist:schedule:refresh-current', 'runs') == b'6'
        ledger.close()
        text = metrics_text(serve)
        assert metric(text, 'gamelist_connected_clients', '{namespace="/"}') == 16
        assert metric(text, 'gamelist_scheduler_leader') == 1
        # 6 ticks in all, not per worker (the counter is summed over the workers)
        assert metric(text, 'gamelist_schedule_runs_total', '{result="success",schedule="refresh-current"}') == 6
        # polling works with several workers too (transport/handoff.py; tests/test_workers_polling.py)
        polling = await Recorder(serve.url, 'polling').connect()
        clients.append(polling)
        assert (await polling.call('main:screen'))['data'] == (await clients[0].call('main:screen'))['data']
    finally:
        for client in clients:
            await client.close()
        assert serve.stop() == 0


def test_polling_asked_for_with_several_workers_is_kept_without_sticky_sessions(tmp_path: Path) -> None:
    """Polling with several workers no longer needs sticky sessions (transport/handoff.py): the file's transports are
    kept, and not giving them means both."""
    data = shipped_data(admin=True)
    data['server']['transports'] = ['polling', 'websocket']
    config = write_config(tmp_path / 'games.yaml', data)
    assert Launch(config, {ADMIN_ENV: ADMIN_TOKEN}, workers=2).load().server.transports == ('polling', 'websocket')
    del data['server']['transports']
    config = write_config(tmp_path / 'games.yaml', data)
    assert Launch(config, {ADMIN_ENV: ADMIN_TOKEN}, workers=2).load().server.transports == ('polling', 'websocket')


# -- instances -----------------------------------------------------------------------------------------------------


def leaders(serves: list[Serve]) -> list[Serve]:
    found = []
    for serve in serves:
        if serve.process is not None and serve.process.poll() is None:
            try:
                if ready_of(serve, 1.0)[1].get('leader'):
                    found.append(serve)
            except OSError:
                pass
    return found


@pytest.fixture
def trio(tmp_path: Path, redis_url: str, redis_client: Redis) -> Iterator[list[Serve]]:
    """Three instances on the session Redis, each in its own directory, one schedule every 500 ms, lease 1 s."""
    serves = []
    for i in range(3):
        workdir = tmp_path / f'instance{i}'
        workdir.mkdir()
        data = shipped_data(admin=True)
        data['schedules'][0]['every'] = '500ms'
        data['leader'] = {'lease': '1s'}
        config = write_config(workdir / 'games.yaml', data)
        serves.append(Serve(workdir, config, free_port(), '--redis-url', redis_url).start())
    yield serves
    for serve in serves:
        if serve.process is not None and serve.process.poll() is None:
            os.kill(serve.process.pid, signal.SIGCONT)
            serve.stop()


def tick_times(client: Recorder) -> list[float]:
    from datetime import datetime  # noqa: PLC0415

    stamps = sorted({m['data']['updated_at'] for m in client.received('game_list:updated', '/')})
    return [datetime.fromisoformat(s).timestamp() for s in stamps]


@pytest.mark.timeout(30)
async def test_three_instances_elect_one_leader_and_fail_over_without_a_double_tick(trio: list[Serve]) -> None:
    assert wait_until(lambda: len(leaders(trio)) == 1)
    clients = [await Recorder(serve.url).connect() for serve in trio]
    try:
        assert await async_wait_until(lambda: all(len(versions(c)) >= 3 for c in clients))
        for client in clients:  # every instance's clients get every broadcast, once
            seen = versions(client)
            assert seen == list(range(seen[0], seen[0] + len(seen)))
        (leader,) = leaders(trio)
        assert leader.process is not None
        killed_at = time.monotonic()
        leader.process.kill()  # kill -9 while it leads
        leader.process.wait(10)
        survivors = [s for s in trio if s is not leader]
        assert wait_until(lambda: len(leaders(survivors)) == 1, timeout_s=10)
        takeover_s = time.monotonic() - killed_at
        print(f'\nfailover: a new leader {takeover_s:.2f}s after kill -9 (lease 1s)')
        assert takeover_s < 2 * 1.0 + 0.5  # two lease periods, plus the /ready polling
        alive = [c for c, s in zip(clients, trio, strict=True) if s is not leader]
        mark = max(versions(alive[0]))
        assert await async_wait_until(lambda: all(len([v for v in versions(c) if v > mark]) >= 3 for c in alive))
        for client in alive:
            seen = versions(client)
            assert seen == sorted(set(seen)), 'each version once'
            gaps = [b - a for a, b in zip(tick_times(client), tick_times(client)[1:], strict=False)]
            assert min(gaps) > 0.35, f'two ticks {min(gaps):.3f}s apart: a slot ran twice'
    finally:
        for client in clients:
            await client.close()


@pytest.mark.timeout(30)
async def test_a_paused_leader_cannot_write_after_losing_its_lease(trio: list[Serve], redis_client: Redis) -> None:
    assert wait_until(lambda: len(leaders(trio)) == 1)
    (leader,) = leaders(trio)
    assert leader.process is not None
    os.kill(leader.process.pid, signal.SIGSTOP)  # a long GC pause, a frozen VM
    survivors = [s for s in trio if s is not leader]
    try:
        assert wait_until(lambda: len(leaders(survivors)) == 1, timeout_s=10)
    finally:
        os.kill(leader.process.pid, signal.SIGCONT)
    # it led (gauge 1) until the pause; once resumed it sees the lease is gone
    assert wait_until(lambda: metric(metrics_text(leader), 'gamelist_scheduler_leader') == 0, timeout_s=10)
    holder = str(await redis_client.get(LEADER_KEY) or b'')
    assert f':{leader.port}:' not in holder
    assert len(leaders(trio)) == 1


async def test_a_stale_fence_is_refused_by_redis(redis_url: str, redis_client: Redis) -> None:
    first, second = Store(redis_url), Store(redis_url)
    try:
        lease = await first.acquire_lease('a', 0.2)
        assert lease is not None and await second.acquire_lease('b', 1.0) is None
        assert (await first.write_list('gamelist:current', {'gamelist': []}, 60, fence=lease))['version'] == 1
        watcher = redis.Redis.from_url(redis_url)
        assert await async_wait_until(lambda: not watcher.exists(LEADER_KEY))  # the 200 ms lease lapses
        watcher.close()
        newer = await second.acquire_lease('b', 1.0)
        assert newer is not None and newer.endswith('|2')  # a new epoch
        with pytest.raises(FencedError):
            await first.write_list('gamelist:current', {'gamelist': [1]}, 60, fence=lease)
        assert not await first.renew_lease(lease, 1.0)
        stored = json.loads(await redis_client.get('gamelist:current') or b'{}')
        assert stored == {'gamelist': [], 'version': 1}
    finally:
        await first.close()
        await second.close()


def test_metrics_endpoint_speaks_prometheus(reloadable: tuple[Serve, dict[str, Any]]) -> None:
    serve, _ = reloadable
    assert wait_until(lambda: '\ngamelist_broadcasts_total{' in metrics_text(serve))  # a sample, not only its HELP
    text = metrics_text(serve)
    for name in (
        'gamelist_broadcasts_total',
        'gamelist_broadcast_duration_seconds_bucket',
        'gamelist_schedule_runs_total',
        'gamelist_config_last_reload_successful',
        'gamelist_config_last_reload_success_timestamp_seconds',
        'gamelist_config_generation',
        'gamelist_scheduler_leader',
    ):
        assert f'\n{name}' in text, name
