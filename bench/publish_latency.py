"""Time from a publish to its receipt by a Socket.IO client, against a real `serve` on its embedded Redis.

    .venv/bin/python bench/publish_latency.py [--runs 30] [--transport websocket|polling]

Two paths are timed: the library call (GamelistService.refresh: build, Lua SET + INCR, PUBLISH) and the whole
`gamelist-service publish` command (including its Python start-up). Prints medians and p90 in milliseconds.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

import socketio
from gamelist_service.config.loader.loader import load_settings

from gamelist_service.core.service import GamelistService
from gamelist_service.storage.store import Store

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(('127.0.0.1', 0))
        return int(sock.getsockname()[1])


def wait_ready(url: str, timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url + '/ready', timeout=1) as response:
                if response.status == 200:
                    return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError('serve did not become ready')


async def measure(url: str, config: Path, workdir: Path, runs: int, transport: str) -> dict[str, list[float]]:
    client = socketio.AsyncClient(reconnection=False)
    arrivals: dict[int, float] = {}
    arrived = asyncio.Event()

    @client.on('game_list:updated')
    async def on_update(message: dict[str, Any]) -> None:
        arrivals[message['data']['version']] = time.perf_counter()
        arrived.set()

    await client.connect(url, transports=[transport], wait_timeout=10)
    instance = json.loads(next((workdir / '.gamelist').glob('*/instance.json')).read_text())
    settings = load_settings(config)
    store = Store(instance['redis_url'])

    async def no_emit(event: str, data: dict[str, Any], namespace: str) -> int:
        return 0

    service = GamelistService(settings, store, no_emit)
    results: dict[str, list[float]] = {'library refresh -> client': [], 'publish command -> client': []}
    try:
        for _ in range(runs):
            arrived.clear()
            started = time.perf_counter()
            data = await service.refresh('current')
            await asyncio.wait_for(_until(arrivals, data['version'], arrived), 10)
            results['library refresh -> client'].append((arrivals[data['version']] - started) * 1000)
        for _ in range(max(3, runs // 3)):
            arrived.clear()
            before = set(arrivals)
            started = time.perf_counter()
            proc = await asyncio.create_subprocess_exec(
                sys.executable,
                '-m',
                'gamelist_service',
                'publish',
                '--config',
                str(config),
                cwd=workdir,
                stdout=asyncio.subprocess.DEVNULL,
                stderr=asyncio.subprocess.DEVNULL,
            )
            await asyncio.wait_for(_until_new(arrivals, before, arrived), 20)
            new = min(set(arrivals) - before)
            results['publish command -> client'].append((arrivals[new] - started) * 1000)
            await proc.wait()
    finally:
        await store.close()
        await client.disconnect()
    return results


async def _until(arrivals: dict[int, float], version: int, arrived: asyncio.Event) -> None:
    while version not in arrivals:
        await arrived.wait()
        arrived.clear()


async def _until_new(arrivals: dict[int, float], before: set[int], arrived: asyncio.Event) -> None:
    while not set(arrivals) - before:
        await arrived.wait()
        arrived.clear()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--runs', type=int, default=30)
    parser.add_argument('--transport', choices=('websocket', 'polling'), default='websocket')
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        config = workdir / 'games.yaml'
        text = (ROOT / 'config' / 'games.yaml').read_text().replace('every: 30s', 'every: 1h')
        config.write_text(text)
        port = free_port()
        env = {k: v for k, v in os.environ.items() if not k.startswith('GAMELIST_')}
        proc = subprocess.Popen(
            [sys.executable, '-m', 'gamelist_service', 'serve', '--config', str(config), '--port', str(port)],
            cwd=workdir,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            url = f'http://127.0.0.1:{port}'
            wait_ready(url)
            results = asyncio.run(measure(url, config, workdir, args.runs, args.transport))
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(20)
    print(f'transport: {args.transport}')
    print('| path | runs | median ms | p90 ms | min ms |')
    print('|---|---|---|---|---|')
    for name, values in results.items():
        ordered = sorted(values)
        p90 = ordered[min(len(ordered) - 1, int(len(ordered) * 0.9))]
        print(f'| {name} | {len(values)} | {statistics.median(values):.2f} | {p90:.2f} | {ordered[0]:.2f} |')
    return 0


if __name__ == '__main__':
    sys.exit(main())
