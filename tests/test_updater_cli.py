"""`gamelist-service updater`: the prototype's interactive menu, driven through its prompts in a subprocess."""

from __future__ import annotations

import json
import os
import queue
import signal
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

import pytest
import redis

from .conftest import cli_command, free_port
from .helpers import shipped_data, write_config

TIMEOUT_S = 30


def _env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith('GAMELIST_')}


def run_menu(redis_url: str, script: str, *args: str) -> subprocess.CompletedProcess[str]:
    """The whole session at once: the menu reads the script's lines as a user would type them."""
    return subprocess.run(  # noqa: PLW1510 - the exit code is asserted
        cli_command('updater', '--redis-url', redis_url, *args),
        input=script,
        capture_output=True,
        text=True,
        timeout=TIMEOUT_S,
        env=_env(),
    )


def stored(client: redis.Redis) -> dict[str, Any]:
    raw = client.get('gamelist:current')
    assert raw is not None
    loaded: dict[str, Any] = json.loads(raw)
    return loaded


def test_menu_test_single_custom_and_quit(redis_url: str, flushed: redis.Redis) -> None:
    result = run_menu(redis_url, '4\n1\n3\n0.2\n2\n5\n')
    assert result.returncode == 0, result.stderr
    out = result.stdout
    for option in (
        '1. Single update',
        '2. Continuous updates (every 30 seconds)',
        '3. Custom continuous updates',
        '4. Test Redis connection',
        '5. Exit',
    ):
        assert option in out
    assert out.count('Choose an option (1-5): ') == 4
    for step in ('ok   ping', 'ok   set/get', 'ok   ttl', 'ok   version'):
        assert step in out
    assert 'update 1: version 1, 5 games, 3 active' in out
    assert 'Interval in seconds: ' in out and 'Maximum number of updates (empty for no limit): ' in out
    assert 'Continuous updates every 0.2s, 2 update(s); press Ctrl-C to stop' in out
    assert 'update 1: version 2' in out and 'update 2: version 3' in out
    assert 'Continuous updates stopped after 2 update(s)' in out
    assert 'no running service is subscribed' in out  # no serve runs: said, not hidden
    assert out.rstrip().endswith('Goodbye')
    data = stored(flushed)
    assert data['version'] == 3 and data['total_games'] == 5
    assert 0 < flushed.ttl('gamelist:current') <= 300


def test_end_of_input_quits_cleanly(redis_url: str, flushed: redis.Redis) -> None:
    result = run_menu(redis_url, '1\n')
    assert result.returncode == 0, result.stderr
    assert 'update 1: version 1' in result.stdout
    assert stored(flushed)['version'] == 1


def test_bad_answers_are_explained_and_nothing_is_written(redis_url: str, flushed: redis.Redis) -> None:
    result = run_menu(redis_url, '9\n3\nabc\n3\n-1\n3\n1\n0\n5\n')
    assert result.returncode == 0, result.stderr
    assert "unknown option '9': choose 1 to 5" in result.stdout
    assert "invalid interval 'abc'" in result.stdout and "invalid interval '-1'" in result.stdout
    assert "invalid maximum '0'" in result.stdout
    assert flushed.exists('gamelist:current') == 0


@pytest.mark.timeout(30)
def test_redis_down_is_reported_and_the_menu_goes_on() -> None:
    dead = f'redis://127.0.0.1:{free_port()}/0'
    result = run_menu(dead, '1\n4\n5\n')
    assert result.returncode == 0, result.stderr
    assert f'error: Redis at {dead} failed to SET gamelist:current' in result.stdout
    assert 'FAIL redis' in result.stdout and 'Connection refused' in result.stdout
    assert 'Goodbye' in result.stdout


def test_ctrl_c_stops_continuous_updates_back_to_the_menu(redis_url: str, flushed: redis.Redis) -> None:
    lines: queue.Queue[str] = queue.Queue()

    def wait_for_line(text: str) -> None:
        deadline = time.monotonic() + TIMEOUT_S
        while time.monotonic() < deadline:
            try:
                if text in lines.get(timeout=0.5):
                    return
            except queue.Empty:
                continue
        raise AssertionError(f'{text!r} not printed within {TIMEOUT_S}s')

    with subprocess.Popen(
        cli_command('updater', '--redis-url', redis_url),
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        env=_env(),
    ) as process:
        assert process.stdin is not None and process.stdout is not None
        stdout = process.stdout

        def pump() -> None:
            for line in stdout:
                lines.put(line)

        reader = threading.Thread(target=pump, daemon=True)
        reader.start()
        try:
            process.stdin.write('2\n')
            process.stdin.flush()
            wait_for_line('update 1: version 1')  # the first update runs at once; the next would be 30 s later
            process.send_signal(signal.SIGINT)
            wait_for_line('Continuous updates stopped after 1 update(s)')
            process.stdin.write('5\n')
            process.stdin.flush()
            wait_for_line('Goodbye')
            assert process.wait(TIMEOUT_S) == 0
        finally:
            if process.poll() is None:
                process.kill()
                process.wait(TIMEOUT_S)
            reader.join(TIMEOUT_S)
    assert stored(flushed)['version'] == 1


def test_config_file_gives_the_list(tmp_path: Path, redis_url: str, flushed: redis.Redis) -> None:
    data = shipped_data()
    data['lists']['current'].update(key='gamelist:menu', ttl='20s', games=['game_2'])
    config = write_config(tmp_path / 'games.yaml', data)
    result = run_menu(redis_url, '1\n5\n', '--config', str(config))
    assert result.returncode == 0, result.stderr
    assert 'update 1: version 1, 1 games' in result.stdout and '-> gamelist:menu (ttl 20 seconds)' in result.stdout
    assert 0 < flushed.ttl('gamelist:menu') <= 20
