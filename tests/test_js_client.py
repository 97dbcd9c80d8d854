"""The official socket.io JS client (socket.io-client from npm, bench/node) against `gamelist-service serve`."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
import redis

from gamelist_service.storage.instances import running

from .helpers import ROOT, Serve, hourly_data, metric, serving, wait_until

NODE_DIR = ROOT / 'bench' / 'node'
SCRIPT = NODE_DIR / 'js_client_check.js'
NAME = 'Покер ♠ café 🎲'


def node_ready() -> str | None:
    """Why the JS client cannot run here, or None. In CI (CI set) a missing Node is a failure, not a skip."""
    if shutil.which('node') is None or shutil.which('npm') is None:
        return 'node and npm are not installed'
    if not (NODE_DIR / 'node_modules' / 'socket.io-client').is_dir():
        return 'socket.io-client is not installed: run npm ci --prefix bench/node'
    return None


@pytest.fixture(scope='module', params=[1, 2], ids=['workers1', 'workers2'])
def served(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Any:
    """serve with one worker, and with two: the client's default transports need no sticky load balancer."""
    reason = node_ready()
    if reason is not None:
        if os.environ.get('CI'):
            pytest.fail(f'CI must run the JS client test: {reason}')
        pytest.skip(reason)
    workers = ('--workers', str(request.param)) if request.param > 1 else ()
    with serving(tmp_path_factory.mktemp('jsclient'), hourly_data(), *workers, timeout_s=40) as serve:
        if request.param > 1:
            assert wait_until(lambda: serve.log().count('Worker ready') == request.param, timeout_s=40)
        yield serve


@pytest.mark.parametrize('transport', ['websocket', 'polling', 'polling,websocket'])  # the last: the default
def test_official_js_client_gets_broadcasts_and_acks(served: Serve, transport: str) -> None:
    child = subprocess.Popen(
        ['node', str(SCRIPT), served.url, transport],
        cwd=NODE_DIR,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert child.stdout is not None
        lines: list[dict[str, Any]] = []
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            line = child.stdout.readline()
            if not line:
                break
            lines.append(json.loads(line))
            if lines[-1].get('ready'):
                break
        failed = child.stderr.read() if child.stderr is not None and child.poll() is not None else ''
        assert lines and lines[-1].get('ready'), (lines, failed)
        (instance,) = running(served.workdir / '.gamelist', served.config)
        client = redis.Redis.from_url(instance.redis_url)
        try:
            data = {'gamelist': [{'game_id': 'g', 'game_name': NAME}], 'total_games': 1, 'version': 10**6}
            client.publish('gamelist:updates', json.dumps({'list': 'current', 'data': data}))
        finally:
            client.close()
        rest, err = child.communicate(timeout=20)
        lines += [json.loads(line) for line in rest.splitlines() if line.strip()]
        assert child.returncode == 0, (lines, err)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait(5)
    screens = [line for line in lines if line.get('event') == 'main:screen']
    assert {line['ns'] for line in screens} == {'/', '/gameplay'}
    assert all(line['message'] == 'Current game list' and line['total_games'] in (1, 5) for line in screens)
    assert all(line['transport'] in transport.split(',') for line in screens)  # when the ack came: either, on upgrade
    updates = [line for line in lines if line.get('event') == 'game_list:updated' and line['version'] == 10**6]
    assert {line['ns'] for line in updates} == {'/', '/gameplay'}
    assert all(line['game_name'] == NAME for line in updates)
    assert all(line['transport'] == transport.split(',')[-1] for line in updates)  # after the upgrade, if any
    assert lines[-1] == {'done': True}
    if transport == 'websocket':  # ws offers permessage-deflate: the main:screen replies (over 1 KB) came compressed
        kinds = ('{kind="single"}', '{kind="broadcast"}')  # answered where they arrived, or by the handler
        assert sum(metric(served, 'gamelist_deflated_frames_total', kind) for kind in kinds) >= 2


def test_node_dir_is_locked() -> None:
    assert (NODE_DIR / 'package-lock.json').is_file()
    assert isinstance(Path(NODE_DIR / 'package.json').read_text(), str)
