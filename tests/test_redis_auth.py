"""Redis with a password or an ACL user (a real redis-server with requirepass), TLS and Sentinel URLs."""

from __future__ import annotations

import asyncio
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from redis.asyncio.connection import SSLConnection
from redis.asyncio.sentinel import SentinelConnectionPool

from gamelist_service.logs import redact
from gamelist_service.storage.embedded import find_redis_server
from gamelist_service.storage.store import Store, redact_url
from gamelist_service.storage.urls import SentinelUrl, connect, parse_sentinel_url

from .conftest import RedisServer, cli_command, free_port, wait_for_ping
from .helpers import Recorder, Serve, answers, schedule_runs, shipped_data, wait_until, write_config
from .helpers import ready as ready_of

PASSWORD = 'sekrit'
ACL_USER, ACL_PASSWORD = 'gamelist', 'acl-pass-9f3e'


@pytest.fixture(scope='module')
def protected(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """A redis-server that wants a password, with an ACL user besides the default one."""
    server = RedisServer(tmp_path_factory.mktemp('redis-auth'), '--requirepass', PASSWORD)
    server.start()
    admin = redis.Redis(port=server.port, password=PASSWORD)
    admin.acl_setuser(
        ACL_USER, enabled=True, passwords=[f'+{ACL_PASSWORD}'], keys=['*'], channels=['*'], commands=['+@all']
    )
    admin.close()
    yield server
    server.stop()


@pytest.fixture
def flushed(protected: RedisServer) -> RedisServer:
    """The protected server, empty: each serve starts its schedule afresh (runs are kept in Redis otherwise)."""
    admin = redis.Redis(port=protected.port, password=PASSWORD)
    admin.flushall()
    admin.close()
    return protected


def serve_on(tmp_path: Path, url: str) -> Serve:
    data = shipped_data(admin=True)
    data['schedules'][0]['every'] = '1h'
    return Serve(tmp_path, write_config(tmp_path / 'games.yaml', data), free_port(), env={'GAMELIST_REDIS_URL': url})


@pytest.mark.parametrize(
    'credentials',
    [f':{PASSWORD}', f'default:{PASSWORD}', f'{ACL_USER}:{ACL_PASSWORD}'],
    ids=['password', 'default', 'acl'],
)
async def test_serve_with_a_password_or_an_acl_user(tmp_path: Path, flushed: RedisServer, credentials: str) -> None:
    url = f'redis://{credentials}@127.0.0.1:{flushed.port}/0'
    secret = credentials.split(':', 1)[1]
    serve = serve_on(tmp_path, url).start()
    try:
        client = await Recorder(serve.url).connect()
        try:
            reply = await client.call('main:screen')
            assert reply['status'] == 'success' and reply['data']['total_games'] == 5
        finally:
            await client.close()
        status, body = ready_of(serve)
        assert status == 200 and body['redis']['status'] == 'ok'
        # the file that tells publish and check where this Redis is holds the URL: readable by its owner only
        info = tmp_path / '.gamelist' / str(serve.port) / 'instance.json'
        assert secret in info.read_text() and info.stat().st_mode & 0o077 == 0
        # the CLI takes the same URL, and prints it masked
        result = await asyncio.to_thread(
            subprocess.run,
            cli_command('check', '--config', str(serve.config), '--redis-url', url),
            check=False,
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=30,
            env=serve.env,
        )
        assert result.returncode == 0, result.stdout + result.stderr
        assert secret not in result.stdout + result.stderr and ':***@' in result.stdout
        assert wait_until(lambda: schedule_runs(serve) >= 1)  # the schedule wrote gamelist:current through it
    finally:
        assert serve.stop() == 0
    assert secret not in serve.log()


@pytest.mark.timeout(30)
@pytest.mark.parametrize('credentials', [':wrong-pass-4711', f'{ACL_USER}:wrong-pass-4711', ''])
def test_a_wrong_or_missing_password_is_reported_without_the_password(
    tmp_path: Path, flushed: RedisServer, credentials: str
) -> None:
    at = f'{credentials}@' if credentials else ''
    serve = serve_on(tmp_path, f'redis://{at}127.0.0.1:{flushed.port}/0').start(wait_ready=False)
    try:
        assert wait_until(lambda: answers(serve))
        status, body = ready_of(serve)
        assert status == 503
        assert 'Redis is not answering' in body['reason']
        reason = body['reason'].lower()
        assert 'password' in reason or 'auth' in reason or 'noperm' in reason, body['reason']
        assert 'wrong-pass-4711' not in body['reason'] and PASSWORD not in body['reason']
        assert wait_until(lambda: 'retrying in' in serve.log())
    finally:
        assert serve.stop() == 0
    assert 'wrong-pass-4711' not in serve.log()


# --- TLS and Sentinel URLs ---------------------------------------------------------------------------------------


async def test_rediss_url_speaks_tls_with_the_url_options() -> None:
    client = connect('rediss://:pw@cache.internal:6380/2?ssl_cert_reqs=none&ssl_ca_certs=/etc/ca.pem')
    try:
        pool = client.connection_pool
        assert pool.connection_class is SSLConnection
        kwargs = pool.connection_kwargs
        assert (kwargs['host'], kwargs['port'], kwargs['db'], kwargs['password']) == ('cache.internal', 6380, 2, 'pw')
        assert (kwargs['ssl_cert_reqs'], kwargs['ssl_ca_certs']) == ('none', '/etc/ca.pem')
    finally:
        await client.aclose()


def test_sentinel_urls_are_parsed() -> None:
    assert parse_sentinel_url('redis+sentinel://:pw@s1:26379,s2:26380,s3/mymaster/3') == SentinelUrl(
        sentinels=(('s1', 26379), ('s2', 26380), ('s3', 26379)), service_name='mymaster', db=3, password='pw'
    )
    parsed = parse_sentinel_url(
        'rediss+sentinel://app:p%40ss@[::1]:5000/main?sentinel_password=sp&ssl_cert_reqs=none&socket_timeout=2'
    )
    assert parsed.sentinels == (('::1', 5000),)
    assert (parsed.username, parsed.password, parsed.ssl, parsed.db) == ('app', 'p@ss', True, 0)
    assert parsed.sentinel_auth == {'password': 'sp'}
    assert parsed.options == {'ssl_cert_reqs': 'none', 'socket_timeout': 2.0}
    assert 'p@ss' not in repr(parsed) and "'sp'" not in repr(parsed)
    for bad in ('redis+sentinel://:pw@s1:26379', 'redis+sentinel://s1:port/m', 'redis+sentinel:///m', 'redis://h/0'):
        with pytest.raises(ValueError) as caught:
            parse_sentinel_url(bad)
        assert 'pw' not in str(caught.value).replace('redis+sentinel', '')


async def test_a_sentinel_url_makes_a_master_client_through_the_sentinels() -> None:
    store = Store('redis+sentinel://:pw@s1:26379,s2:26380/mymaster/1?sentinel_password=sp')
    try:
        pool = store.redis.connection_pool
        assert isinstance(pool, SentinelConnectionPool)
        assert pool.service_name == 'mymaster' and pool.is_master
        assert (pool.connection_kwargs['db'], pool.connection_kwargs['password']) == (1, 'pw')
        sentinels = pool.sentinel_manager.sentinels
        assert [
            (s.connection_pool.connection_kwargs['host'], s.connection_pool.connection_kwargs['port'])
            for s in sentinels
        ] == [
            ('s1', 26379),
            ('s2', 26380),
        ]
        assert sentinels[0].connection_pool.connection_kwargs['password'] == 'sp'
    finally:
        await store.close()


@pytest.mark.parametrize(
    ('url', 'shown'),
    [
        ('redis+sentinel://:pw@s1:26379,s2/mymaster/0', 'redis+sentinel://:***@s1:26379,s2/mymaster/0'),
        ('redis+sentinel://s1/m?sentinel_password=sp&db=1', 'redis+sentinel://s1/m?sentinel_password=***&db=1'),
        ('rediss://user:pw@h:6380/0?password=x', 'rediss://user:***@h:6380/0?password=***'),
    ],
)
def test_urls_are_masked_in_logs(url: str, shown: str) -> None:
    assert redact_url(url) == shown
    assert redact(f'connecting to {url} failed') == f'connecting to {shown} failed'


@pytest.fixture
def sentinel(tmp_path: Path, protected: RedisServer) -> Iterator[int]:
    """A real redis-sentinel (the same binary, --sentinel) watching the protected server as 'mymaster'."""
    port = free_port()
    conf = tmp_path / 'sentinel.conf'
    conf.write_text(
        f'port {port}\nbind 127.0.0.1\ndir {tmp_path}\n'
        f'sentinel monitor mymaster 127.0.0.1 {protected.port} 1\n'
        f'sentinel auth-pass mymaster {PASSWORD}\n'
    )
    process = subprocess.Popen(
        [find_redis_server(), str(conf), '--sentinel'], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        client = redis.Redis(port=port, socket_connect_timeout=0.5)
        try:
            wait_for_ping(client)
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline and not client.sentinel_masters():
                time.sleep(0.05)
        finally:
            client.close()
        yield port
    finally:
        process.terminate()
        process.wait(10)


async def test_store_through_a_real_sentinel(sentinel: int, protected: RedisServer) -> None:
    store = Store(f'redis+sentinel://:{PASSWORD}@127.0.0.1:{sentinel}/mymaster/0')
    try:
        assert await store.ping() >= 0
        written = await store.write_list('gamelist:sentinel-test', {'gamelist': []}, 30)
        assert (await store.read_list('gamelist:sentinel-test')) == written
        await store.redis.delete('gamelist:sentinel-test', 'gamelist:sentinel-test:version')
    finally:
        await store.close()
