"""Storm benchmark: gamelist-service against Node's socket.io 4 in the moments between steady states.

    python bench/storm.py                         # N = 10000, 2 runs per server; writes bench/STORMS.md
    python bench/storm.py --clients 2000 --repeats 1 --server gamelist-service --server node-socket.io
    python bench/storm.py --smoke                 # N = 200, 1 run: the scenario still works; exit 1 if not

For each server in turn (the order alternates between repeats), everything on 127.0.0.1:
1. connect storm: N websocket clients (bench/node/stormgen.js) connect at once, at most --rate starts per second
   and --inflight handshakes in flight, each joining / and /gameplay;
2. mass disconnect: every socket destroyed at once (no close handshake, as a network blip does); the server's CPU
   (its whole process tree, from /proc) and the wall time until it is idle again;
3. reconnect storm: all N connect again with auth {"since": <the version they saw>} while a newer list is out;
   the same figures as (1), and the Redis GETs the server made meanwhile (INFO commandstats);
4. SIGTERM with all N connected: the time until the server's process tree is gone, its exit code, and how each
   client saw its connection end (close code; 1006 is a bare TCP close).
See bench/README.md for the figures and what they showed.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import redis
from run import (
    NODE_DIR,
    ROOT,
    SPECS,
    LoadGen,
    cpu_s,
    free_port,
    log,
    private_redis,
    raise_fd_limit,
    start_server,
    stop_process,
    tree,
    write_and_publish,
)

SERVERS = ('gamelist-service', 'gamelist-service-w2', 'node-socket.io')
IDLE_CPU = 0.05  # a server is idle again when it uses less than this share of one core ...
IDLE_WINDOW_S = 0.3  # ... for this long


class StormGen(LoadGen):
    """bench/node/stormgen.js, driven over stdin/stdout as run.py drives loadgen.js."""

    def __init__(self, port: int, n: int, rate: int, inflight: int, deadline_s: float) -> None:
        self.proc = subprocess.Popen(
            ['node', str(NODE_DIR / 'stormgen.js'), '--port', str(port), '--n', str(n), '--rate', str(rate),
             '--inflight', str(inflight), '--deadline', str(int(deadline_s))],
            cwd=NODE_DIR, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, bufsize=1,
        )  # fmt: skip


def gets(r: redis.Redis) -> int:
    stats: dict[str, Any] = r.info('commandstats')
    return int(stats.get('cmdstat_get', {}).get('calls', 0))


def until_idle(pid: int, deadline_s: float) -> tuple[float, float]:
    """(CPU seconds, wall seconds) from now until the process tree is idle again (IDLE_WINDOW_S under IDLE_CPU)."""
    started, cpu0 = time.monotonic(), cpu_s(pid)
    last_busy, last_cpu = started, cpu0
    while time.monotonic() - started < deadline_s:
        time.sleep(0.05)
        now, cpu = time.monotonic(), cpu_s(pid)
        if cpu - last_cpu > IDLE_CPU * (now - last_busy):
            last_busy, last_cpu = now, cpu
        elif now - last_busy >= IDLE_WINDOW_S:
            break
    return last_cpu - cpu0, last_busy - started


def running(pid: int) -> bool:
    """The process exists and has not exited (a zombie, exited but not yet reaped by whoever adopted it, has)."""
    try:
        state = Path(f'/proc/{pid}/stat').read_text().rsplit(')', 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state not in ('Z', 'X')


def gone(pid: int, proc: subprocess.Popen[Any], deadline_s: float) -> float | None:
    """Seconds until the process and all its children have exited, or None past the deadline."""
    started = time.monotonic()
    pids = tree(pid)
    while time.monotonic() - started < deadline_s:
        if proc.poll() is not None and not any(running(p) for p in pids if p != pid):
            return time.monotonic() - started
        time.sleep(0.01)
    return None


class Profile:
    """py-spy recording a Python server (every process of it) during one step, with --profile DIR."""

    def __init__(self, args: argparse.Namespace, spec: Any, pid: int, label: str) -> None:
        self.proc: subprocess.Popen[bytes] | None = None
        if args.profile and spec.kind == 'py':
            args.profile.mkdir(parents=True, exist_ok=True)
            out = args.profile / f'{label}.txt'
            command = [
                str(Path(sys.executable).parent / 'py-spy'),
                'record',
                '--pid',
                str(pid),
                '--subprocesses',
                '--rate',
                '250',
                '--format',
                'raw',
            ]
            self.proc = subprocess.Popen(
                [*command, '--output', str(out)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
            )
            time.sleep(0.5)  # attached before the step starts

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.send_signal(signal.SIGINT)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(30)


def one_run(name: str, n: int, args: argparse.Namespace, r: redis.Redis, workdir: Path, rep: int = 0) -> dict[str, Any]:
    spec = SPECS[name]
    figures: dict[str, Any] = {'server': name, 'n': n}
    version = write_and_publish(r)
    port = free_port()
    proc = start_server(spec, port, args.redis_url, workdir)
    gen = StormGen(port, n, args.rate, args.inflight, args.deadline)
    try:
        time.sleep(1.0)
        prof = Profile(args, spec, proc.pid, f'{name}-{n}-{rep}-connect')
        cpu0 = cpu_s(proc.pid)
        gen.command('connect')
        joined = gen.read('joined', args.deadline + 30)
        joined['cpu_s'] = cpu_s(proc.pid) - cpu0
        prof.stop()
        figures['connect'] = joined
        log(
            f'{name} N={n}: connect storm: {joined["joined"]} joined in {joined["seconds"]:.2f}s, server CPU {joined["cpu_s"]:.2f}s'
        )
        time.sleep(args.settle)

        prof = Profile(args, spec, proc.pid, f'{name}-{n}-{rep}-disconnect')
        gen.command('drop')
        gen.read('dropped', 30)
        cpu, wall = until_idle(proc.pid, 120)
        prof.stop()
        figures['disconnect'] = {'cpu_s': cpu, 'wall_s': wall}
        log(f'{name} N={n}: mass disconnect: {cpu:.2f}s of CPU, idle after {wall:.2f}s')

        write_and_publish(r)  # the list moved on while they were away
        prof = Profile(args, spec, proc.pid, f'{name}-{n}-{rep}-reconnect')
        before, cpu0 = gets(r), cpu_s(proc.pid)
        gen.command(f'connect {version}')
        again = gen.read('joined', args.deadline + 30)
        again['cpu_s'] = cpu_s(proc.pid) - cpu0
        prof.stop()
        again['redis_gets'] = gets(r) - before
        figures['reconnect'] = again
        log(f'{name} N={n}: reconnect storm: {again["joined"]} joined in {again["seconds"]:.2f}s, '
            f'{again["caught_up"]} lists sent, {again["redis_gets"]} Redis GETs')  # fmt: skip
        time.sleep(args.settle)

        started = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        took = gone(proc.pid, proc, 60)
        figures['sigterm'] = {'gone_s': took, 'exit': proc.poll(), 'after_s': time.monotonic() - started}
        time.sleep(0.5)  # the generator reads what the server wrote last
        gen.command('closes')
        figures['sigterm']['closes'] = gen.read('closes', 30)
        log(f'{name} N={n}: SIGTERM: gone after {took}s, exit {proc.poll()}, {figures["sigterm"]["closes"]}')
    except Exception as exc:  # a failed run is recorded, and the next server still runs
        figures['error'] = f'{type(exc).__name__}: {exc}'
        log(f'{name} N={n}: failed: {figures["error"]}')
    finally:
        gen.close()
        stop_process(proc)
    return figures


def median(values: list[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return statistics.median(present) if present else None


def fmt(value: float | None, digits: int = 2) -> str:
    return '-' if value is None else f'{value:.{digits}f}'


def row(runs: list[dict[str, Any]]) -> dict[str, Any]:
    ok = [run for run in runs if 'error' not in run]

    def pick(*path: str) -> list[Any]:
        values = []
        for run in ok:
            value: Any = run
            for key in path:
                value = value.get(key) if isinstance(value, dict) else None
            values.append(value)
        return values

    return {
        'runs': len(runs),
        'failed_runs': len(runs) - len(ok),
        'connect_s': median(pick('connect', 'seconds')),
        'connect_never': max(pick('connect', 'never'), default=None),
        'connect_cpu_s': median(pick('connect', 'cpu_s')),
        'reconnect_cpu_s': median(pick('reconnect', 'cpu_s')),
        'disconnect_cpu_s': median(pick('disconnect', 'cpu_s')),
        'disconnect_wall_s': median(pick('disconnect', 'wall_s')),
        'reconnect_s': median(pick('reconnect', 'seconds')),
        'reconnect_never': max(pick('reconnect', 'never'), default=None),
        'reconnect_gets': max(pick('reconnect', 'redis_gets'), default=None),
        'sigterm_gone_s': median(pick('sigterm', 'gone_s')),
        'sigterm_exit': sorted({str(x) for x in pick('sigterm', 'exit')}),
        'closes': pick('sigterm', 'closes'),
        'each': {
            'connect_s': pick('connect', 'seconds'),
            'disconnect_cpu_s': pick('disconnect', 'cpu_s'),
            'reconnect_s': pick('reconnect', 'seconds'),
            'sigterm_gone_s': pick('sigterm', 'gone_s'),
        },
    }


def report(path: Path, args: argparse.Namespace, results: dict[int, dict[str, dict[str, Any]]]) -> None:
    lines = [
        '# Storms: gamelist-service against Node socket.io 4',
        '',
        (
            f'`{" ".join(sys.argv)}`, {time.strftime("%Y-%m-%d %H:%M")}; offered {args.rate} connects/s, at most '
            f"{args.inflight} handshakes in flight. Medians over the runs; every run's figure in brackets."
        ),
        '',
    ]
    for n, per in results.items():
        node = per.get('node-socket.io', {})
        lines += [
            f'## N = {n:,}',
            '',
            '| figure | ' + ' | '.join(per) + ' |',
            '|---|' + '---|' * len(per),
        ]
        for key, label in (
            ('connect_s', 'connect storm: all joined after, s'),
            ('connect_never', 'connect storm: never joined (max)'),
            ('connect_cpu_s', 'connect storm: server CPU, s'),
            ('reconnect_s', 'reconnect storm: all joined after, s'),
            ('reconnect_never', 'reconnect storm: never joined (max)'),
            ('reconnect_cpu_s', 'reconnect storm: server CPU, s'),
            ('reconnect_gets', 'reconnect storm: Redis GETs (max)'),
            ('disconnect_cpu_s', 'mass disconnect: server CPU, s'),
            ('disconnect_wall_s', 'mass disconnect: wall time until idle, s'),
            ('sigterm_gone_s', 'SIGTERM: process tree gone after, s'),
        ):
            cells = []
            for s in per.values():
                value = s.get(key)
                text = fmt(value) if isinstance(value, float) else str(value)
                each = s.get('each', {}).get(key)
                if each:
                    text += ' (' + ', '.join(fmt(v) for v in each) + ')'
                ratio = node.get(key)
                if isinstance(value, float) and isinstance(ratio, float) and ratio > 0 and s is not node:
                    text += f' = {value / ratio:.2f}x'
                cells.append(text)
            lines.append(f'| {label} | ' + ' | '.join(cells) + ' |')
        lines.append(
            '| SIGTERM: exit code | ' + ' | '.join(', '.join(s.get('sigterm_exit', [])) for s in per.values()) + ' |'
        )
        lines.append('| SIGTERM: how clients saw it | ' + ' | '.join(
            '; '.join(json.dumps(c['codes'], sort_keys=True) + (f' ({c["engine_close_first"]} Engine.IO close first)' if c.get('engine_close_first') else '') for c in s.get('closes', []) if c) for s in per.values()
        ) + ' |')  # fmt: skip
        lines.append('')
    path.write_text('\n'.join(lines) + '\n')


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--clients', default='10000', help='comma-separated N')
    parser.add_argument('--server', action='append', choices=SERVERS, help='default: all three')
    parser.add_argument('--repeats', type=int, default=2)
    parser.add_argument('--rate', type=int, default=20000, help='offered connects per second')
    parser.add_argument('--inflight', type=int, default=1000, help='handshakes in flight at most')
    parser.add_argument('--deadline', type=float, default=30.0, help='seconds a storm may take')
    parser.add_argument('--settle', type=float, default=2.0)
    parser.add_argument('--out', type=Path, default=None, help='default bench/STORMS.md (smoke: a temp file)')
    parser.add_argument(
        '--profile', type=Path, default=None, help='py-spy each step of the Python servers; raw stacks here'
    )
    parser.add_argument('--smoke', action='store_true', help='N=200, 1 run, two servers: the scenario works')
    args = parser.parse_args()
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    args.server = args.server or list(SERVERS)
    if args.smoke:
        args.clients, args.repeats, args.settle = '200', 1, 0.5
        args.server = ['gamelist-service', 'node-socket.io']
    if shutil.which('node') is None or not (NODE_DIR / 'node_modules' / 'ws').is_dir():
        parser.error('node and npm ci --prefix bench/node are needed')
    sizes = [int(x) for x in args.clients.split(',')]
    log(f'fd limit {raise_fd_limit(max(sizes) * 2 + 4096)}')
    results: dict[int, dict[str, dict[str, Any]]] = {}
    raw: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix='gamelist-storm-') as tmp:
        workdir = Path(tmp)
        with private_redis(tmp) as (r, args.redis_url, _):
            for n in sizes:
                runs: dict[str, list[dict[str, Any]]] = {name: [] for name in args.server}
                for rep in range(args.repeats):
                    for name in args.server if rep % 2 == 0 else list(reversed(args.server)):
                        figures = one_run(name, n, args, r, workdir, rep)
                        runs[name].append(figures)
                        raw.append(figures)
                results[n] = {name: row(rs) for name, rs in runs.items()}
    out = args.out or (
        Path(tempfile.gettempdir()) / 'gamelist-storm-smoke.md' if args.smoke else ROOT / 'bench' / 'STORMS.md'
    )
    out.with_suffix('.json').write_text(json.dumps({'results': results, 'runs': raw}, indent=1, default=str))
    report(out, args, results)
    print(out.read_text())
    log(f'wrote {out} and {out.with_suffix(".json")}')
    ok = all(
        s['failed_runs'] == 0 and not s['connect_never'] and not s['reconnect_never']
        for per in results.values()
        for s in per.values()
    )
    return 0 if ok else 1


if __name__ == '__main__':
    sys.exit(main())
