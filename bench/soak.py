"""Soak: hold N clients for a while, with the service's own schedule broadcasting every second and a reload
(SIGHUP) every minute; report disconnects, missed broadcasts (counted by version) and the server's RSS over time.

    .venv/bin/python bench/soak.py [--clients 5000] [--minutes 10] [--out bench/SOAK.md]

Needs `npm ci --prefix bench/node` (the load generator). Everything runs on 127.0.0.1 and stops by itself.
"""

from __future__ import annotations

import argparse
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
import itertools

from run import ROOT, LoadGen, cpu_s, free_port, raise_fd_limit, rss_kb, stop_process, wait_http


def write_config(path: Path, generation: int) -> None:
    config = yaml.safe_load((ROOT / 'config' / 'games.yaml').read_text())
    config['server'].update(transports=['websocket'], ping_interval='25s', ping_timeout='20s')
    config['schedules'] = [{'name': 'soak', 'list': 'current', 'every': '1s'}]
    config['limits'] = {'max_connections_per_ip': 0}  # every client comes from 127.0.0.1
    config['games'][0]['name'] = f'Poker (config {generation})'  # each reload really changes something
    path.write_text(yaml.safe_dump(config))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--clients', type=int, default=5000)
    parser.add_argument('--minutes', type=float, default=10.0)
    parser.add_argument('--reload-every', type=float, default=60.0, help='seconds between SIGHUPs')
    parser.add_argument('--sample-every', type=float, default=30.0, help='seconds between RSS samples')
    parser.add_argument('--rate', type=int, default=500, help='client connects per second')
    parser.add_argument('--out', type=Path, default=ROOT / 'bench' / 'SOAK.md')
    args = parser.parse_args()
    raise_fd_limit(args.clients * 2 + 1024)
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        config = workdir / 'games.yaml'
        write_config(config, 1)
        port = free_port()
        log = (workdir / 'serve.log').open('wb')
        server = subprocess.Popen(
            [sys.executable, '-m', 'gamelist_service', 'serve', '--config', str(config), '--port', str(port)],
            cwd=workdir, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
        )  # fmt: skip
        log.close()
        gen: LoadGen | None = None
        samples: list[dict[str, Any]] = []
        try:
            wait_http(f'http://127.0.0.1:{port}/ready', server)
            idle_kb = rss_kb(server.pid)
            gen = LoadGen(port, args.clients, args.rate, deadline_s=args.clients / args.rate + 120)
            ready = gen.read('ready', args.clients / args.rate + 150)
            print(f'joined {ready}', flush=True)
            ready_at_ms = time.time() * 1000  # broadcasts from here on must reach every client
            started = time.monotonic()
            end = started + args.minutes * 60
            next_reload, next_sample, generation, reloads = started + args.reload_every, started, 1, 0
            cpu0 = cpu_s(server.pid)
            while time.monotonic() < end and server.poll() is None:  # bounded by --minutes
                now = time.monotonic()
                if now >= next_sample:
                    samples.append({'t_s': round(now - started), 'rss_mb': rss_kb(server.pid) / 1024})
                    print(f'  t={samples[-1]["t_s"]:>4}s rss={samples[-1]["rss_mb"]:.1f} MB', flush=True)
                    next_sample += args.sample_every
                if now >= next_reload:
                    generation += 1
                    write_config(config, generation)
                    server.send_signal(signal.SIGHUP)
                    reloads += 1
                    next_reload += args.reload_every
                time.sleep(0.5)
            cpu_used = cpu_s(server.pid) - cpu0
            elapsed = time.monotonic() - started
            time.sleep(3)  # the last broadcast reaches everyone
            gen.command('stats')
            stats = gen.read('stats', 120)
            served_log = (workdir / 'serve.log').read_text(errors='replace')
        finally:
            if gen is not None:
                gen.close()
            stop_process(server)
    versions = sorted(int(v) for v in stats['versions'])
    joined = stats['joined']
    # from the first broadcast sent after every client had joined, to the one before the last (it may straddle the stop)
    window = [v for v in versions if stats['versions'][str(v)]['first_at'] > ready_at_ms][:-1]
    expected = joined * 2  # each client is on / and /gameplay
    missed = sum(expected - sum(stats['versions'][str(v)]['counts'].values()) for v in window)
    gaps = [b for a, b in itertools.pairwise(window) if b != a + 1]
    short = [(v, sum(stats['versions'][str(v)]['counts'].values())) for v in window]
    short = [(v, got) for v, got in short if got < expected]
    lines = [
        '# Soak results',
        '',
        (
            f'Command: `python bench/soak.py --clients {args.clients} --minutes {args.minutes:g}` '
            f'(schedule every 1 s, SIGHUP every {args.reload_every:g} s, websocket clients on / and /gameplay).'
        ),
        '',
        '| figure | value |',
        '|---|---|',
        f'| clients joined | {joined} of {args.clients} (failed {stats["failed"]}) |',
        f'| duration | {elapsed:.0f} s |',
        f'| broadcasts after all clients joined (the window) | {len(window)} (versions {window[0]}-{window[-1]}) |',
        f'| version gaps (a tick nobody received) | {len(gaps)} |',
        f'| missed deliveries (client x namespace x version) | {missed} of {expected * len(window)} |',
        f'| disconnects after joining | {stats["disconnected_after_join"]} |',
        (
            f'| reloads sent / applied / rejected | {reloads} / {served_log.count("reload applied")} / '
            f'{served_log.count("reload rejected")} |'
        ),
        f'| server CPU | {cpu_used / elapsed * 100:.1f} % of one core |',
        f'| server RSS idle -> end | {idle_kb / 1024:.1f} MB -> {samples[-1]["rss_mb"]:.1f} MB |',
        '',
        f'Versions not received by every client on both namespaces: {len(short)}'
        + (': ' + ', '.join(f'{v} ({got} of {expected})' for v, got in short[:40]) if short else ''),
        '',
        '| t (s) | RSS (MB) |',
        '|---|---|',
        *[f'| {s["t_s"]} | {s["rss_mb"]:.1f} |' for s in samples],
    ]
    args.out.write_text('\n'.join(lines) + '\n')
    print('\n'.join(lines))
    return 0 if missed == 0 and stats['disconnected_after_join'] == 0 else 1


if __name__ == '__main__':
    sys.exit(main())
