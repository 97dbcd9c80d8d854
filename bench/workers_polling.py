"""Polling clients with `serve --workers N`: what handing requests to the worker holding their session costs.

    python bench/workers_polling.py                       # --workers 1 and 2, 3 runs each; prints a table
    python bench/workers_polling.py --clients 50 --seconds 5 --repeats 1
    python bench/workers_polling.py --fresh               # a new TCP connection for every request

For each worker count in turn (alternating between repeats), on 127.0.0.1: serve with the shipped config (schedules
off, no per-address cap, a high event rate), then C python-socketio clients on polling only (each on its own
connections, as socket.io clients poll) ask main:screen in a closed loop for S seconds. Figures: acks per second, the
round trip (p50/p99), the server's CPU per ack (its whole process tree, from /proc), and how many connections were
handed to another worker (gamelist_worker_handoffs_total). One worker hands nothing over: the reference.
python-socketio's client keeps its HTTP connections alive, so a session's connection is handed over once and its
later requests arrive at the right worker; --fresh closes the connection after every request (the worst case: each
request lands on a random worker, and half of them are handed over with two workers).
"""

from __future__ import annotations

import argparse
import asyncio
import re
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

import aiohttp
import socketio
import yaml
from run import cpu_s, free_port, stop_process

ROOT = Path(__file__).resolve().parent.parent


def start(workdir: Path, workers: int) -> subprocess.Popen[bytes]:
    data: dict[str, Any] = yaml.safe_load((ROOT / 'config' / 'games.yaml').read_text())
    data['schedules'] = []
    data['limits'] = {'max_connections_per_ip': 0, 'events_per_second': 100000, 'burst': 100000}
    config = workdir / f'games-{workers}.yaml'
    config.write_text(yaml.safe_dump(data))
    port = free_port()
    log = (workdir / f'serve-{workers}-{port}.log').open('wb')
    proc = subprocess.Popen(
        [sys.executable, '-m', 'gamelist_service', 'serve', '--config', str(config), '--port', str(port),
         '--workers', str(workers)],
        cwd=workdir, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )  # fmt: skip
    proc.port = port  # type: ignore[attr-defined]
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        text = (workdir / f'serve-{workers}-{port}.log').read_text(errors='replace')
        if text.count('Worker ready') >= workers and ('listening on' in text):
            try:
                urllib.request.urlopen(f'http://127.0.0.1:{port}/health', timeout=1).read()
                time.sleep(1.0)  # past the worker manager's start-up acknowledgements
                return proc
            except OSError:
                pass
        time.sleep(0.1)
    raise RuntimeError('serve did not start')


def handed(port: int) -> float:
    text = urllib.request.urlopen(f'http://127.0.0.1:{port}/metrics', timeout=5).read().decode()
    found = re.search(r'^gamelist_worker_handoffs_total\{direction="handed"\} (\S+)$', text, re.MULTILINE)
    return float(found.group(1)) if found else 0.0


async def load(port: int, clients: int, seconds: float, fresh: bool) -> tuple[list[float], float]:
    url = f'http://127.0.0.1:{port}'
    sessions = [
        aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True)) if fresh else None
        for _ in range(clients)
    ]
    sios = [socketio.AsyncClient(reconnection=False, http_session=session) for session in sessions]
    for start_at in range(0, clients, 20):
        await asyncio.gather(
            *(s.connect(url, transports=['polling'], wait_timeout=20) for s in sios[start_at : start_at + 20])
        )
    rtts: list[float] = []
    stop = time.monotonic() + seconds

    async def ask(sio: socketio.AsyncClient) -> None:
        while time.monotonic() < stop:
            sent = time.perf_counter()
            await sio.call('main:screen', namespace='/', timeout=20)
            rtts.append((time.perf_counter() - sent) * 1000)

    started = time.monotonic()
    await asyncio.gather(*(ask(s) for s in sios))
    took = time.monotonic() - started
    await asyncio.gather(*(s.disconnect() for s in sios))
    for session in sessions:
        if session is not None:
            await session.close()
    return rtts, took


def one_run(workdir: Path, workers: int, args: argparse.Namespace) -> dict[str, float]:
    proc = start(workdir, workers)
    port: int = proc.port  # type: ignore[attr-defined]
    try:
        before, cpu0 = handed(port), cpu_s(proc.pid)
        rtts, took = asyncio.run(load(port, args.clients, args.seconds, args.fresh))
        cpu, moved = cpu_s(proc.pid) - cpu0, handed(port) - before
    finally:
        stop_process(proc)
    rtts.sort()
    return {
        'acks_s': len(rtts) / took,
        'p50_ms': rtts[len(rtts) // 2],
        'p99_ms': rtts[int(len(rtts) * 0.99)],
        'cpu_us_per_ack': cpu / len(rtts) * 1e6,
        'handed_per_ack': moved / len(rtts),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--clients', type=int, default=100)
    parser.add_argument('--seconds', type=float, default=8.0)
    parser.add_argument('--repeats', type=int, default=3)
    parser.add_argument('--fresh', action='store_true', help='a new TCP connection for every request')
    args = parser.parse_args()
    runs: dict[int, list[dict[str, float]]] = {1: [], 2: []}
    with tempfile.TemporaryDirectory(prefix='gamelist-workers-polling-') as tmp:
        for rep in range(args.repeats):
            for workers in (1, 2) if rep % 2 == 0 else (2, 1):
                figures = one_run(Path(tmp), workers, args)
                runs[workers].append(figures)
                print(
                    f'workers={workers} run {rep}: ' + ', '.join(f'{k} {v:.2f}' for k, v in figures.items()), flush=True
                )
    print(
        f'\n{args.clients} polling clients{", a new connection per request" if args.fresh else ""}, main:screen in a closed loop for {args.seconds:g} s; medians of {args.repeats} runs\n'
    )
    print('| figure | --workers 1 | --workers 2 |')
    print('|---|---:|---:|')
    for key, label in (
        ('acks_s', 'acks/s'),
        ('p50_ms', 'round trip p50, ms'),
        ('p99_ms', 'round trip p99, ms'),
        ('cpu_us_per_ack', 'server CPU per ack, µs'),
        ('handed_per_ack', 'connections handed over per ack'),
    ):
        cells = [statistics.median(r[key] for r in runs[w]) for w in (1, 2)]
        print(f'| {label} | {cells[0]:.2f} | {cells[1]:.2f} |')
    return 0


if __name__ == '__main__':
    sys.exit(main())
