"""Idle baseline: the memory `serve --workers W` holds before the first client, per process (bench/BASELINE.md).

    python bench/baseline.py                          # W = 1, 2, 6 in turn, 3 runs each; prints the tables
    python bench/baseline.py --workers 6 --repeats 5 --idle 5
    python bench/baseline.py --workers 2 --repeats 1 --verbose --json /tmp/b.json
    python bench/baseline.py --env PYTHONPATH=/tmp/old  # another checkout's gamelist_service (git archive)
    python bench/baseline.py --imports                # instead: per package, the heap a worker imports

For each W (the order alternates between repeats), on 127.0.0.1: the shipped config/games.yaml copied into a temp
directory (its embedded Redis, its schedule), `gamelist-service serve --workers W --port <free>` started there, GET
/health answered and every worker logged it is listening, then --idle seconds of nothing. Then, per process of the
tree serve started (from /proc/PID/smaps_rollup, in MB of 10^6 bytes):
- RSS: resident pages, shared ones counted in every process that maps them (summing RSS overstates the total);
- PSS: each resident page divided by the number of processes mapping it (these add up: the tree's real share);
- USS: pages only this process maps (Private_Clean + Private_Dirty): what ending the process would free;
- anon: the anonymous part of RSS (heap, Python objects), pages shared copy-on-write with a parent included.
PSS and USS of library pages also depend on other processes of the machine that map the same files (another Python
of the same venv): with one process, anon is the steadier figure. Also the time from starting serve until every
worker listens, and the CPU time the tree has used by the time it is measured (threads still alive).
Roles: `main` (the serve process), `worker` (a Sanic worker: holds a socket listening on the port), `tracker`
(multiprocessing's resource tracker, started for spawned children), `manager` (any other Python child: Sanic's
multiprocessing Manager, which holds the workers' shared state), `redis` (the embedded redis-server, shown apart and
left out of the Python totals). With W = 1 serve runs Sanic in its own process: `main` is the worker.
Only the processes this script started are ended: serve by its PID (SIGTERM, then wait; serve stops the rest).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from run import ROOT, cpu_s, free_port, log, stop_process, tree, wait_http

MB = 1e6
FIELDS = ('rss', 'pss', 'uss', 'anon')
ROLES = ['main', 'worker', 'manager', 'tracker', 'redis']


@dataclass
class Proc:
    pid: int
    role: str  # main, worker, tracker, manager, redis
    what: str  # from the command line: serve, spawn (a multiprocessing child), resource_tracker, redis-server
    rss: float  # MB
    pss: float
    uss: float
    anon: float  # of which anonymous (heap, Python objects), MB RSS
    swap: float
    threads: int


def rollup(pid: int) -> dict[str, float]:
    """/proc/PID/smaps_rollup in MB (its kB figures)."""
    values: dict[str, float] = {}
    for line in Path(f'/proc/{pid}/smaps_rollup').read_text().splitlines()[1:]:
        key, _, rest = line.partition(':')
        parts = rest.split()
        if len(parts) == 2 and parts[1] == 'kB':
            values[key] = int(parts[0]) * 1024 / MB
    return values


def listening_inodes(port: int) -> set[str]:
    """Inodes of the TCP sockets listening on the port (state 0A), v4 and v6."""
    inodes: set[str] = set()
    for table in ('/proc/net/tcp', '/proc/net/tcp6'):
        with contextlib.suppress(OSError):
            for line in Path(table).read_text().splitlines()[1:]:
                cols = line.split()
                if cols[3] == '0A' and int(cols[1].rsplit(':', 1)[1], 16) == port:
                    inodes.add(cols[9])
    return inodes


def holds_any(pid: int, inodes: set[str]) -> bool:
    for fd in Path(f'/proc/{pid}/fd').glob('*'):
        with contextlib.suppress(OSError):
            link = fd.readlink().as_posix()
            if link.startswith('socket:[') and link[8:-1] in inodes:
                return True
    return False


def what(pid: int) -> str:
    try:
        argv = Path(f'/proc/{pid}/cmdline').read_bytes().decode(errors='replace').split('\0')
    except OSError:
        return '?'
    text = ' '.join(argv)
    for marker in ('resource_tracker', 'spawn_main', 'forkserver', 'redis-server', 'serve'):
        if marker in text:
            return {'spawn_main': 'spawn'}.get(marker, marker)
    return Path(argv[0]).name


def classify(root: int, port: int) -> dict[int, str]:
    inodes = listening_inodes(port)
    roles: dict[int, str] = {}
    for pid in tree(root):
        try:
            exe = Path(f'/proc/{pid}/exe').readlink().name
        except OSError:
            continue
        if pid == root:
            roles[pid] = 'main'
        elif exe.startswith('redis-server'):
            roles[pid] = 'redis'
        elif holds_any(pid, inodes):
            roles[pid] = 'worker'
        elif what(pid) == 'resource_tracker':
            roles[pid] = 'tracker'
        else:
            roles[pid] = 'manager'
    return roles


def snapshot(root: int, port: int) -> list[Proc]:
    procs = []
    for pid, role in classify(root, port).items():
        with contextlib.suppress(OSError):
            r = rollup(pid)
            threads = len(list(Path(f'/proc/{pid}/task').glob('*')))
            procs.append(
                Proc(
                    pid,
                    role,
                    what(pid),
                    rss=r.get('Rss', 0.0),
                    pss=r.get('Pss', 0.0),
                    uss=r.get('Private_Clean', 0.0) + r.get('Private_Dirty', 0.0) + r.get('Private_Hugetlb', 0.0),
                    anon=r.get('Anonymous', 0.0),
                    swap=r.get('Swap', 0.0),
                    threads=threads,
                )
            )
    order = {role: n for n, role in enumerate(ROLES)}
    return sorted(procs, key=lambda p: (order[p.role], p.pid))


def serve_command(config: Path, port: int, workers: int, entry: Path | None = None) -> list[str]:
    script = Path(sys.executable).parent / 'gamelist-service'  # how docs/operations.md runs it (systemd too)
    head = [str(script)] if script.exists() else [sys.executable, '-m', 'gamelist_service']
    if entry is not None:  # a script that adjusts something, then calls gamelist_service.cli.main()
        head = [sys.executable, str(entry)]
    return [*head, 'serve', '--config', str(config), '--port', str(port), '--workers', str(workers)]


def wait_workers(logfile: Path, workers: int, proc: subprocess.Popen[Any], timeout_s: float = 60.0) -> None:
    """Every worker logged 'listening on' (its before_server_start ran: Redis pinged, service started)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f'serve exited with {proc.returncode}; see {logfile}')
        if logfile.read_text(errors='replace').count('gamelist-service listening on') >= workers:
            return
        time.sleep(0.1)
    raise RuntimeError(f'not every worker started within {timeout_s}s; see {logfile}')


@dataclass
class Run:
    procs: list[Proc]
    ready_s: float  # from starting serve until every worker said it listens
    cpu_s: float  # CPU time of the whole tree (every thread) by the time it was measured


def one_run(workers: int, args: argparse.Namespace, workdir: Path) -> Run:
    config = workdir / f'games-{workers}.yaml'
    shutil.copy(ROOT / 'config' / 'games.yaml', config)
    port = free_port()
    logfile = workdir / f'serve-{workers}-{port}.log'
    started = time.monotonic()
    with logfile.open('wb') as out:
        proc = subprocess.Popen(
            serve_command(config, port, workers, args.entry), cwd=workdir, stdout=out, stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL, env={**os.environ, **dict(kv.split('=', 1) for kv in args.env)},
        )  # fmt: skip
    try:
        wait_http(f'http://127.0.0.1:{port}/health', proc, timeout_s=60.0)
        wait_workers(logfile, workers, proc)
        ready_s = time.monotonic() - started
        time.sleep(args.idle)
        with urllib.request.urlopen(f'http://127.0.0.1:{port}/health', timeout=5) as response:
            assert response.status == 200
        procs = snapshot(proc.pid, port)
        cpu = cpu_s(proc.pid)
    finally:
        stop_process(proc, timeout_s=30.0)
    if args.verbose:
        log(logfile.read_text(errors='replace')[-2000:])
    if sum(p.role == 'worker' for p in procs) != (workers if workers > 1 else 0):
        log(f'W={workers}: found {[p.role for p in procs]}; expected {workers} workers')
    return Run(procs, ready_s, cpu)


def totals(procs: list[Proc]) -> dict[str, dict[str, float]]:
    """Per role the sum (and the median of one process), and the Python total (every role but redis)."""
    out: dict[str, dict[str, float]] = {}
    roles = sorted({p.role for p in procs}, key=ROLES.index)
    for role in roles:
        mine = [p for p in procs if p.role == role]
        for f in FIELDS:
            out.setdefault(role, {})[f] = sum(getattr(p, f) for p in mine)
            out[role][f'{f}_each'] = statistics.median(getattr(p, f) for p in mine)
        out[role]['n'] = len(mine)
    py = [p for p in procs if p.role != 'redis']
    out['python'] = {f: sum(getattr(p, f) for p in py) for f in FIELDS} | {'n': len(py)}
    out['all'] = {f: sum(getattr(p, f) for p in procs) for f in FIELDS} | {'n': len(procs)}
    return out


def print_run(workers: int, rep: int, run: Run) -> None:
    procs = run.procs
    print(f'\nW={workers} run {rep + 1}: every worker listening {run.ready_s:.1f} s after start; CPU {run.cpu_s:.1f} s')
    print(f'{"pid":>8} {"role":<12} {"RSS":>7} {"PSS":>7} {"USS":>7} {"anon":>7} {"thr":>4}  command')
    for p in procs:
        print(f'{p.pid:>8} {p.role:<12} {p.rss:7.1f} {p.pss:7.1f} {p.uss:7.1f} {p.anon:7.1f} {p.threads:>4}  {p.what}')
    t = totals(procs)
    for key in ('python', 'all'):
        label = 'python total' if key == 'python' else 'with redis'
        print(f'{"":>8} {label:<12} {t[key]["rss"]:7.1f} {t[key]["pss"]:7.1f} {t[key]["uss"]:7.1f}')


def print_summary(results: dict[int, list[Run]]) -> None:
    print('\nMedians over runs, MB; "each" is one process, "sum" all of that role')
    print(f'{"W":>3} {"role":<20} {"RSS":>7} {"PSS":>7} {"USS":>7} {"anon":>7}')
    for workers, runs in results.items():
        per_run = [totals(run.procs) for run in runs]
        keys = [k for k in per_run[0] if k not in ('python', 'all')] + ['python', 'all']
        for key in keys:
            rows = [t[key] for t in per_run if key in t]
            variants = [('', '')] if key in ('python', 'all') else [('_each', ' each'), ('', ' sum')]
            for suffix, label in variants:
                if suffix == '' and key not in ('python', 'all') and rows[0]['n'] == 1:
                    continue
                name = {'python': 'python total', 'all': 'total with redis'}.get(key, key + label)
                cells = [statistics.median(r[f + suffix] for r in rows) for f in FIELDS]
                print(f'{workers:>3} {name:<20} ' + ' '.join(f'{cell:7.1f}' for cell in cells))
        ready = statistics.median(run.ready_s for run in runs)
        cpu = statistics.median(run.cpu_s for run in runs)
        print(f'{workers:>3} {"start":<20} every worker listening after {ready:.1f} s, {cpu:.1f} s of CPU')


# --imports: run in a fresh interpreter (python -c); prints JSON. What a worker imports and builds, each module's
# own growth of anonymous memory (smaps_rollup) while it executes, less what the modules it imports added.
IMPORTS_CHILD = """
import importlib.abc, json, sys, tracemalloc
def anon():
    with open('/proc/self/smaps_rollup') as f:
        return next(int(l.split()[1]) * 1024 for l in f if l.startswith('Anonymous:'))
own, traced, stack, start = {}, {}, [], anon()
if sys.argv[3] == '1':  # a second run: live Python allocations (what a module keeps, not heap it grew and freed)
    tracemalloc.start()
class Measured(importlib.abc.Loader):
    def __init__(self, inner, name): self.inner, self.name = inner, name
    def create_module(self, spec): return self.inner.create_module(spec)
    def __getattr__(self, name): return getattr(self.inner, name)  # get_resource_reader, is_package, ...
    def exec_module(self, module):
        stack.append([anon(), 0, tracemalloc.get_traced_memory()[0], 0])
        try:
            self.inner.exec_module(module)
        finally:
            begun, children, kept, kept_children = stack.pop()
            grown, now = anon() - begun, tracemalloc.get_traced_memory()[0] - kept
            own[self.name] = own.get(self.name, 0) + grown - children
            traced[self.name] = traced.get(self.name, 0) + now - kept_children
            if stack:
                stack[-1][1] += grown
                stack[-1][3] += now
class Finder(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        for finder in sys.meta_path:
            if finder is self or not hasattr(finder, 'find_spec'):
                continue
            spec = finder.find_spec(name, path, target)
            if spec is not None:
                if spec.loader is not None and hasattr(spec.loader, 'exec_module'):
                    spec.loader = Measured(spec.loader, name)
                return spec
        return None
sys.meta_path.insert(0, Finder())
defer, config = sys.argv[1] == '1', sys.argv[2]
import gamelist_service.cli
if defer:
    from gamelist_service import deferred
    deferred.defer(deferred.CLIENT_LIBRARIES)
import gamelist_service.web.server, gamelist_service.web.app, gamelist_service.metrics
imported = anon()
from pathlib import Path
from gamelist_service.config.reload import Launch
launch = Launch(Path(config), {}, None, 2, False, 'text')
app = gamelist_service.web.app.create_app(launch.load(), 'redis://127.0.0.1:1/0', launch=launch)
rollup = {l.split(':')[0]: int(l.split()[1]) * 1024 for l in open('/proc/self/smaps_rollup') if l.endswith('kB\\n')}
print(json.dumps({'own': own, 'traced': traced, 'start': start, 'imported': imported, 'built': anon(), 'rollup': rollup,
                  'modules': len(sys.modules)}))
"""


def package(module: str) -> str:
    parts = module.split('.')
    return '.'.join(parts[:2]) if parts[0] == 'gamelist_service' and len(parts) > 1 else parts[0]


def imports_table(args: argparse.Namespace) -> None:
    """Where an idle worker's heap comes from, per top-level package (gamelist_service per subpackage)."""

    def child(trace: bool) -> dict[str, Any]:
        out = subprocess.run(
            [sys.executable, '-c', IMPORTS_CHILD, '0' if args.no_defer else '1', str(ROOT / 'config' / 'games.yaml'),
             '1' if trace else '0'],
            cwd=tempfile.gettempdir(), check=True, capture_output=True, text=True,
            env={**os.environ, **dict(kv.split('=', 1) for kv in args.env)},
        ).stdout  # fmt: skip
        found: dict[str, Any] = json.loads(out.splitlines()[-1])
        return found

    data = child(trace=False)  # tracemalloc's own bookkeeping would inflate the anonymous memory
    data['traced'] = child(trace=True)['traced']
    per: dict[str, list[float]] = {}
    for module, grown in data['own'].items():
        row = per.setdefault(package(module), [0.0, 0.0, 0])
        row[0] += grown / MB
        row[1] += data['traced'].get(module, 0) / MB
        row[2] += 1
    ranked = sorted(per.items(), key=lambda item: -item[1][1])
    print(f'{"package":<34} {"anon MB":>8} {"live MB":>8} {"modules":>8}')
    for name, (mb, live, n) in ranked[: args.top]:
        print(f'{name:<34} {mb:8.1f} {live:8.1f} {int(n):>8}')
    rest = [row for _, row in ranked[args.top :]]
    label = f'({len(rest)} more packages)'
    print(
        f'{label:<34} {sum(r[0] for r in rest):8.1f} {sum(r[1] for r in rest):8.1f} {int(sum(r[2] for r in rest)):>8}'
    )
    print(f'{"all":<34} {sum(r[0] for r in per.values()):8.1f} {sum(r[1] for r in per.values()):8.1f}')
    r = data['rollup']
    print(f'interpreter at start: {data["start"] / MB:.1f} MB anon; after the imports {data["imported"] / MB:.1f} '
          f'({data["modules"]} modules); after launch.load() + create_app {data["built"] / MB:.1f}; '
          f'RSS {r["Rss"] / MB:.1f} MB, of which file-backed (libraries, shared between processes) '
          f'{(r["Rss"] - r["Anonymous"]) / MB:.1f}')  # fmt: skip


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--workers', default='1,2,6', help='comma-separated W (default 1,2,6)')
    parser.add_argument('--repeats', type=int, default=3)
    parser.add_argument('--idle', type=float, default=3.0, help='seconds idle after start before measuring')
    parser.add_argument('--json', type=Path, default=None, help='write every process of every run here')
    parser.add_argument('--verbose', action='store_true', help='show the tail of each serve log')
    parser.add_argument(
        '--env', action='append', default=[], metavar='NAME=VALUE', help='set for serve (e.g. MALLOC_ARENA_MAX=2)'
    )
    parser.add_argument(
        '--entry', type=Path, default=None, help='run serve as: python ENTRY serve ... (see BASELINE.md)'
    )
    parser.add_argument('--imports', action='store_true', help='instead: per package, the heap a worker imports')
    parser.add_argument('--no-defer', action='store_true', help='--imports without deferring the client libraries')
    parser.add_argument('--top', type=int, default=25, help='--imports: rows to show')
    args = parser.parse_args()
    if args.imports:
        imports_table(args)
        return 0
    # SIGTERM unwinds like an exception, so the finally in one_run stops the serve it started
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    sizes = [int(x) for x in args.workers.split(',')]
    results: dict[int, list[Run]] = {w: [] for w in sizes}
    with tempfile.TemporaryDirectory(prefix='gamelist-baseline-') as tmp:
        for rep in range(args.repeats):
            for workers in sizes if rep % 2 == 0 else list(reversed(sizes)):
                run = one_run(workers, args, Path(tmp))
                results[workers].append(run)
                print_run(workers, rep, run)
    print_summary(results)
    if args.json:
        args.json.write_text(
            json.dumps({str(w): [asdict(run) for run in runs] for w, runs in results.items()}, indent=1)
        )
    return 0


if __name__ == '__main__':
    sys.exit(main())
