"""docs/migrating.md, walked through: its config changes applied and its commands run, in order, against a real
Redis on a free port standing in for 127.0.0.1:6379 and a serve on a free port standing in for 3000."""

from __future__ import annotations

import asyncio
import re
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import redis
import yaml

from gamelist_service.storage.embedded import find_redis_server

from .conftest import RedisServer, free_port
from .helpers import ROOT, SHIPPED_CONFIG, Recorder, Serve, async_wait_until, http_get, wait_until, write_config

GUIDE = ROOT / 'docs' / 'migrating.md'
FENCE = re.compile(r'^```(\w+)\n(.*?)^```', re.MULTILINE | re.DOTALL)


def blocks(kind: str) -> list[str]:
    return [body for lang, body in FENCE.findall(GUIDE.read_text()) if lang == kind]


def merged(base: dict[str, Any], change: dict[str, Any], parent: str = '') -> dict[str, Any]:
    """The config after an edit the guide shows: sections' keys change one by one; a list's block is the new one."""
    out = dict(base)
    for key, value in change.items():
        deeper = isinstance(value, dict) and isinstance(out.get(key), dict) and parent != 'lists'
        out[key] = merged(out[key], value, key) if deeper else value
    return out


def localised(text: str, redis_port: int, serve_port: int) -> str:
    """The guide's text with the test's ports for 6379 and 3000 (and loopback for 0.0.0.0: traffic stays local)."""
    text = text.replace('127.0.0.1:6379', f'127.0.0.1:{redis_port}').replace('-p 6379', f'-p {redis_port}')
    text = text.replace('127.0.0.1:3000', f'127.0.0.1:{serve_port}').replace('0.0.0.0', '127.0.0.1')
    return text.replace('GameListUpdater()', f'GameListUpdater(redis_port={redis_port})')  # its default is 6379


def run_shell(command: str, cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """A guide command: gamelist-service is this checkout's, redis-cli the one beside the redis-server used."""
    cli = f'{shlex.quote(sys.executable)} -m gamelist_service'
    redis_cli = shlex.quote(str(Path(find_redis_server()).with_name('redis-cli')))
    line = command.split('#', 1)[0].strip().replace('gamelist-service', cli).replace('redis-cli', redis_cli)
    return subprocess.run(line, shell=True, cwd=cwd, env=env, capture_output=True, text=True, timeout=60, check=False)


def run_python(script: str, cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, '-c', script], cwd=cwd, env=env, capture_output=True, text=True, timeout=60, check=False
    )


@pytest.mark.timeout(60)
async def test_the_migration_guide_works_as_written(tmp_path: Path) -> None:
    stand_in = RedisServer(tmp_path)  # the prototype's Redis, on a free port instead of 6379
    stand_in.start()
    serve_port = free_port()
    serve: Serve | None = None
    store = redis.Redis(port=stand_in.port)
    try:
        sh, configs, python = blocks('sh'), blocks('yaml'), blocks('python')
        assert sh[0].strip().startswith('python3 -m venv .venv && .venv/bin/pip install -e .')  # step 1: installed

        config = yaml.safe_load(SHIPPED_CONFIG.read_text())
        for change in configs:  # steps 2, 4 and 5: the config as the guide leaves it
            config = merged(config, yaml.safe_load(localised(change, stand_in.port, serve_port)))
        assert config['redis']['url'] == f'redis://127.0.0.1:{stand_in.port}/0'
        assert config['lists']['current']['fed_by'] == 'producers' and config['schedules'] == []
        (tmp_path / 'config').mkdir()
        path = write_config(tmp_path / 'config' / 'games.yaml', config)  # where the commands look, in a checkout
        env = {**Serve(tmp_path, path, serve_port).env}
        env.pop('GAMELIST_REDIS_URL', None)

        check = run_shell(localised(sh[1], stand_in.port, serve_port), tmp_path, env)  # step 2: redis_test.py
        assert check.returncode == 0, check.stdout + check.stderr
        assert 'ok   ping' in check.stdout and 'ok   ttl' in check.stdout

        assert sh[2].split('#')[0].strip() == 'gamelist-service serve'  # step 3, on the test's port
        serve = Serve(tmp_path, path, serve_port).start()
        assert http_get(serve.url + '/health')[0] == 200
        viewer = await Recorder(serve.url, 'websocket', headers={'Origin': 'null'}).connect()  # step 4: from disk
        try:
            menu = run_shell(localised(sh[3], stand_in.port, serve_port), tmp_path, env)  # step 6: the menu
            assert menu.returncode == 0, menu.stdout + menu.stderr
            assert store.get('gamelist:current:version') == b'1'
            assert await async_wait_until(lambda: len(viewer.received('game_list:updated', '/')) >= 1)

            script = localised(python[0], stand_in.port, serve_port)  # step 6: their Python code
            done = await asyncio.to_thread(run_python, script, tmp_path, env)
            assert done.returncode == 0, done.stderr
            assert done.stdout.split() == ['2', '1']  # version 2, one game
            got = await viewer.wait_for('game_list:updated', '/gameplay', count=2)
            assert got[-1]['data']['gamelist'][0]['game_name'] == 'Poker'

            stored = run_shell(localised(sh[4], stand_in.port, serve_port), tmp_path, env)  # redis-cli
            assert stored.returncode == 0 and '"game_name":"Poker"' in stored.stdout.replace(' ', '')
            reply = await viewer.call('main:screen')  # served from the Redis the updater wrote
            assert reply['status'] == 'success' and reply['data']['version'] == 2
        finally:
            await viewer.close()
        status, _ = http_get(serve.url + '/health')
        assert status == 200 and wait_until(lambda: 'Traceback' not in serve.log())
    finally:
        store.close()
        if serve is not None:
            assert serve.stop() == 0
        stand_in.stop()
