"""Spread benchmark: how evenly `serve --workers W` shares N websocket clients among its workers.

    python bench/spread.py                                   # W = 2 and 6, N = 3000, each worker its own socket
    python bench/spread.py --socket own --socket shared      # against server.reuse_port: false, alternating
    python bench/spread.py --workers 2 --clients 1000 --repeats 3 --out /tmp/spread.md

For each W and socket mode in turn, everything on 127.0.0.1: `gamelist-service serve --workers W` from a temp copy of
config/games.yaml (bench/run.py's start_server: websocket only, no per-address cap, the embedded Redis), then, once
every worker is listening, bench/node/loadgen.js opens N websocket clients (each joins / and /gameplay). Each
worker's share is counted in /proc: the established TCP sockets on the service's port that the worker's process holds
(a client's socket stays with the worker that accepted it: websocket clients are never handed over). Then SIGTERM: the
exit code, and whether any socket still listens on the port.

--socket own: server.reuse_port true (each worker listens on a socket of its own, SO_REUSEPORT); shared: false (one
socket, whichever worker accepts first); unset: the file does not say, for a serve that predates the setting (run it
with PYTHONPATH pointing at that checkout).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import shutil
import signal
import statistics
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

from run import NODE_DIR, LoadGen, ServerSpec, free_port, log, raise_fd_limit, start_server, stop_process, tree

SOCKET_MODES = {'own': {'reuse_port': True}, 'shared': {'reuse_port': False}, 'unset': {}}
ESTABLISHED, LISTEN = '01', '0A'  # /proc/net/tcp states
READY = re.compile(r'\[(\d+)\] sanic\.server: Worker ready')


def port_sockets(port: int) -> dict[int, str]:
    """inode -> TCP state of every socket whose local port is port (IPv4 and IPv6)."""
    found = {}
    for table in ('/proc/net/tcp', '/proc/net/tcp6'):
        with contextlib.suppress(OSError):
            for line in Path(table).read_text().splitlines()[1:]:
                fields = line.split()
                if int(fields[1].rsplit(':', 1)[1], 16) == port:
                    found[int(fields[9])] = fields[3]
    return found


def held(pid: int, sockets: dict[int, str]) -> dict[str, int]:
    """How many of sockets (by state) the process pid holds a descriptor of."""
    counts = {ESTABLISHED: 0, LISTEN: 0}
    inodes = set()
    with contextlib.suppress(OSError):
        for fd in os.listdir(f'/proc/{pid}/fd'):
            with contextlib.suppress(OSError):
                target = os.readlink(f'/proc/{pid}/fd/{fd}')
                if target.startswith('socket:['):
                    inodes.add(int(target[8:-1]))
    for inode in inodes:
        state = sockets.get(inode)
        if state in counts:
            counts[state] += 1
    return counts


def metric_total(port: int, name: str) -> float | None:
    with contextlib.suppress(OSError), urllib.request.urlopen(f'http://127.0.0.1:{port}/metrics', timeout=5) as r:
        found = re.search(rf'^{re.escape(name)} (\S+)$', r.read().decode(), re.MULTILINE)
        return float(found.group(1)) if found else None
    return None


def one_run(workers: int, mode: str, args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    figures: dict[str, Any] = {'workers': workers, 'socket': mode, 'n': args.clients}
    port = free_port()
    spec = ServerSpec(f'spread-w{workers}-{mode}', 'py', workers=workers, server=SOCKET_MODES[mode])
    proc = start_server(spec, port, 'embedded', workdir)
    logfile = workdir / f'{spec.name}-{port}.log'
    gen: LoadGen | None = None
    try:
        deadline = time.monotonic() + 60
        pids: list[int] = []
        while time.monotonic() < deadline and len(pids) < workers:  # a worker not listening yet would get no share
            pids = [int(p) for p in READY.findall(logfile.read_text(errors='replace'))]
            time.sleep(0.1)
        if len(pids) < workers:
            raise RuntimeError(f'{len(pids)} of {workers} workers ready within 60 s')
        gen = LoadGen(port, args.clients, args.rate, args.ramp_deadline)
        ready = gen.read('ready', args.ramp_deadline + 30)
        figures['joined'], figures['ramp_s'] = ready['joined'], ready['ramp_s']
        sockets = port_sockets(port)
        per = {pid: held(pid, sockets) for pid in tree(proc.pid)}
        figures['per_worker'] = sorted((per.get(pid, {}).get(ESTABLISHED, 0) for pid in pids), reverse=True)
        figures['listening'] = sum(1 for state in sockets.values() if state == LISTEN)
        figures['listening_per_worker'] = [per.get(pid, {}).get(LISTEN, 0) for pid in pids]
        figures['metrics_clients'] = metric_total(port, 'gamelist_connected_clients{namespace="/"}')
    finally:
        if gen is not None:
            gen.close()
        stop_process(proc)
    figures['exit'] = proc.returncode
    figures['left_listening'] = sum(1 for state in port_sockets(port).values() if state == LISTEN)
    counts = figures['per_worker']
    mean = sum(counts) / len(counts)
    figures['max_mean'] = max(counts) / mean if mean else 0.0
    figures['min_mean'] = min(counts) / mean if mean else 0.0
    log(
        f'W={workers} {mode}: {figures["joined"]} joined, per worker {counts} '
        f'(max/mean {figures["max_mean"]:.3f}), {figures["listening"]} listening, exit {figures["exit"]}'
    )
    return figures


def row(f: dict[str, Any]) -> str:
    counts = f['per_worker']
    total = sum(counts) or 1
    shares = ' / '.join(f'{c} ({100 * c / total:.1f} %)' for c in counts)
    return (
        f'| {f["workers"]} | {f["socket"]} | {f["joined"]:,} | {shares} | {f["max_mean"]:.3f} | {f["min_mean"]:.3f} '
        f'| {f["listening"]} | {f["exit"]}{"" if not f["left_listening"] else " (left listening!)"} |'
    )


def report(args: argparse.Namespace, runs: list[dict[str, Any]]) -> str:
    lines = [
        f'Made by `python bench/spread.py {" ".join(sys.argv[1:])}` on {time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}.',
        '',
        '| workers | socket | clients | per worker, busiest first | max/mean | min/mean | listening sockets | exit |',
        '|---:|---|---:|---|---:|---:|---:|---|',
        *(row(f) for f in runs),
        '',
        '| workers | socket | runs | max/mean, median (worst) |',
        '|---:|---|---:|---|',
    ]
    for workers in args.workers:
        for mode in args.socket:
            ratios = [f['max_mean'] for f in runs if f['workers'] == workers and f['socket'] == mode]
            if ratios:
                lines.append(
                    f'| {workers} | {mode} | {len(ratios)} | {statistics.median(ratios):.3f} ({max(ratios):.3f}) |'
                )
    return '\n'.join(lines) + '\n'


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--workers', type=int, action='append', help='W (repeatable); default 2 and 6')
    parser.add_argument('--socket', action='append', choices=sorted(SOCKET_MODES), help='default: own')
    parser.add_argument('--clients', type=int, default=3000)
    parser.add_argument('--repeats', type=int, default=1)
    parser.add_argument('--rate', type=int, default=1000, help='client connects per second')
    parser.add_argument('--ramp-deadline', type=float, default=60.0)
    parser.add_argument('--out', type=Path, default=None, help='also write the tables here')
    args = parser.parse_args()
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    args.workers = args.workers or [2, 6]
    args.socket = args.socket or ['own']
    if shutil.which('node') is None or not (NODE_DIR / 'node_modules' / 'ws').is_dir():
        parser.error('node and npm ci --prefix bench/node are needed')
    log(f'fd limit {raise_fd_limit(args.clients * 2 + 4096)}')
    runs: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix='gamelist-spread-') as tmp:
        for rep in range(args.repeats):
            for workers in args.workers:
                for mode in args.socket if rep % 2 == 0 else list(reversed(args.socket)):
                    runs.append(one_run(workers, mode, args, Path(tmp)))
    text = report(args, runs)
    print(text)
    if args.out is not None:
        args.out.write_text(text)
    ok = all(f['exit'] == 0 and not f['left_listening'] and f['joined'] == args.clients for f in runs)
    return 0 if ok else 1


if __name__ == '__main__':
    sys.exit(main())
