#!/usr/bin/env python
"""Compare hosting python-socketio's AsyncServer in Sanic:

  A          : AsyncServer(async_mode='sanic') + sio.attach(app), Sanic's own server
               (single_process=True)
  B          : AsyncServer(async_mode='asgi'), socketio.ASGIApp(sio, other_asgi_app=sanic_app)
               under uvicorn (loop=uvloop, ws=auto -> websockets-sansio, permessage-deflate on)
  B-wsleg    : as B but uvicorn ws='websockets' (legacy impl, deprecated in uvicorn 0.54)
  B-nodefl   : as B but uvicorn ws_per_message_deflate=False

For each mode: correctness (ws + polling python-socketio clients, namespaces / and
/gameplay, broadcast + ack), disconnect-detection latency (clean, SIGKILL, SIGSTOP,
raw TCP abort without close frame), and fan-out to N raw websocket clients
(10 broadcasts, 1/s). Modes are run interleaved (A,B,...,A,B,...).

Usage:
  /work/venv/bin/python /work/main/bench/hosting/hosting.py [--reps 2] [--n 1000]
        [--modes A,B,B-wsleg,B-nodefl]

Everything binds/connects to 127.0.0.1 only; only child processes started here are
signalled, by PID.
"""

import argparse
import asyncio
import json
import os
import re
import signal
import socket
import statistics
import subprocess
import sys
import time

import aiohttp

HERE = os.path.dirname(os.path.abspath(__file__))
PY = sys.executable
CLK_TCK = os.sysconf('SC_CLK_TCK')

MODES = {
    'A': ['--mode', 'sanic'],
    'B': ['--mode', 'asgi', '--ws', 'auto'],
    'B-wsleg': ['--mode', 'asgi', '--ws', 'websockets'],
    'B-nodefl': ['--mode', 'asgi', '--ws', 'auto', '--no-deflate'],
}

LOG_BAD = re.compile(
    r'WARNING|WARN|ERROR|Error|Traceback|Exception|destroyed but it is pending|'
    r'never retrieved',
    re.IGNORECASE,
)


def free_port():
    s = socket.socket()
    s.bind(('127.0.0.1', 0))
    port = s.getsockname()[1]
    s.close()
    return port


def proc_cpu(pid):
    with open(f'/proc/{pid}/stat') as f:
        parts = f.read().rsplit(')', 1)[1].split()
    # after ')' : state=0, ..., utime=11, stime=12 (fields 14/15 of the full line)
    return (int(parts[11]) + int(parts[12])) / CLK_TCK


def stop_proc(p, timeout=10):
    if p is None or p.poll() is not None:
        return
    try:
        os.kill(p.pid, signal.SIGTERM)
        p.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.kill(p.pid, signal.SIGKILL)
        p.wait(timeout=5)
    except ProcessLookupError:
        pass


def kill_proc(p):
    if p is not None and p.poll() is None:
        try:
            os.kill(p.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        try:
            p.wait(timeout=5)
        except subprocess.TimeoutExpired:
            pass


async def http_get(session, port, path, timeout=10):
    async with session.get(f'http://127.0.0.1:{port}{path}', timeout=aiohttp.ClientTimeout(total=timeout)) as r:
        body = await r.text()
        try:
            return r.status, json.loads(body)
        except ValueError:
            return r.status, body


async def read_line(stream, prefix, timeout):
    """Read lines from an asyncio subprocess stdout until one starts with prefix."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        line = await asyncio.wait_for(stream.readline(), max(0.1, deadline - time.time()))
        if not line:
            raise RuntimeError(f'EOF waiting for {prefix}')
        line = line.decode().strip()
        if line.startswith(prefix):
            return line[len(prefix) :].strip()
    raise TimeoutError(prefix)


async def wait_tag(session, port, tag, namespaces=('/', '/gameplay'), timeout=30):
    """Poll server until disconnect recorded for all namespaces of tag. Returns dict."""
    deadline = time.time() + timeout
    info = {}
    while time.time() < deadline:
        _, info = await http_get(session, port, f'/ctl/tag?tag={tag}')
        if isinstance(info, dict) and all(info.get(ns, {}).get('disconnected_at') for ns in namespaces):
            return info
        await asyncio.sleep(0.05)
    return info


# ---------------------------------------------------------------- correctness
async def correctness(session, port):
    import socketio

    res = {}
    clients = {}
    got = {}
    for transport in ('websocket', 'polling'):
        c = socketio.AsyncClient(reconnection=False)
        got[transport] = {}
        for ns in ('/', '/gameplay'):

            def mk(ns=ns, transport=transport):
                async def h(data):
                    got[transport][ns] = data

                return h

            c.on('game_list:updated', mk(), namespace=ns)
        try:
            await asyncio.wait_for(
                c.connect(
                    f'http://127.0.0.1:{port}',
                    namespaces=['/', '/gameplay'],
                    transports=[transport],
                    auth={'tag': f'clean-{transport}'},
                    wait_timeout=10,
                ),
                20,
            )
            clients[transport] = c
            res[f'{transport}_connect'] = f'ok ({c.transport()})'
        except Exception as e:
            res[f'{transport}_connect'] = f'FAIL {e!r}'
    await asyncio.sleep(0.3)
    _st, _b = await http_get(session, port, '/ctl/broadcast?seq=999&ns=all')
    deadline = time.time() + 5
    while time.time() < deadline and sum(len(v) for v in got.values()) < 2 * len(clients):
        await asyncio.sleep(0.05)
    for transport in clients:
        for ns in ('/', '/gameplay'):
            d = got[transport].get(ns)
            ok = isinstance(d, dict) and d.get('seq') == 999 and len(d.get('games', [])) == 20
            res[f'{transport}_bcast{ns}'] = 'ok' if ok else 'FAIL'
            try:
                ack = await clients[transport].call('main:screen', {'x': 1}, namespace=ns, timeout=5)
                ok = isinstance(ack, dict) and ack.get('ok') and ack.get('ns') == ns and ack.get('echo') == {'x': 1}
                res[f'{transport}_ack{ns}'] = 'ok' if ok else f'FAIL {ack!r:.80}'
            except Exception as e:
                res[f'{transport}_ack{ns}'] = f'FAIL {e!r}'
    # clean disconnect latency
    for transport, c in clients.items():
        t = time.time()
        try:
            await asyncio.wait_for(c.disconnect(), 10)
        except Exception as e:
            res[f'{transport}_disconnect_err'] = repr(e)
        res[f'{transport}_client_disconnect_call_s'] = round(time.time() - t, 3)
        info = await wait_tag(session, port, f'clean-{transport}', timeout=20)
        res[f'disc_clean_{transport}_s'] = _lat(info, t)
    return res


def _lat(info, t):
    vals = []
    for ns in ('/', '/gameplay'):
        d = (info or {}).get(ns, {}) if isinstance(info, dict) else {}
        if d.get('disconnected_at'):
            vals.append(d['disconnected_at'] - t)
    if len(vals) < 2:
        return None  # not detected within timeout
    return round(max(vals), 3)


# ---------------------------------------------------------------- disconnects
async def abrupt_disconnects(session, port):
    from websockets.asyncio.client import connect

    res = {}
    victims = {}
    specs = {'sigkill_ws': 'websocket', 'sigkill_polling': 'polling', 'sigstop_ws': 'websocket'}
    for name, transport in specs.items():
        p = await asyncio.create_subprocess_exec(
            PY,
            os.path.join(HERE, 'clients.py'),
            'victim',
            '--port',
            str(port),
            '--tag',
            name,
            '--transport',
            transport,
            '--deadline',
            '90',
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
        )
        victims[name] = p
    for name, p in victims.items():
        try:
            await read_line(p.stdout, 'CONNECTED', 30)
        except Exception as e:
            res[f'{name}_err'] = f'victim did not connect: {e!r}'
    # raw websocket (no socket.io client) that will be aborted without close frame
    raw = None
    try:
        raw = await connect(
            f'ws://127.0.0.1:{port}/socket.io/?EIO=4&transport=websocket', ping_interval=None, open_timeout=10
        )
        await asyncio.wait_for(raw.recv(), 5)
        await raw.send('40{"tag":"raw_abort"}')
        await raw.send('40/gameplay,{"tag":"raw_abort"}')
        for _ in range(2):
            await asyncio.wait_for(raw.recv(), 5)
    except Exception as e:
        res['raw_abort_err'] = repr(e)
    await asyncio.sleep(1.0)
    t = {}
    for name, p in victims.items():
        t[name] = time.time()
        os.kill(p.pid, signal.SIGSTOP if name == 'sigstop_ws' else signal.SIGKILL)
    t['raw_abort'] = time.time()
    if raw is not None:
        raw.transport.abort()
    names = list(victims) + ['raw_abort']
    infos = await asyncio.gather(*[wait_tag(session, port, n, timeout=30) for n in names])
    for n, info in zip(names, infos, strict=False):
        res[f'disc_{n}_s'] = _lat(info, t[n])
        reasons = {ns: (info.get(ns) or {}).get('reason') for ns in ('/',)} if isinstance(info, dict) else {}
        res[f'disc_{n}_reason'] = reasons.get('/')
    for p in victims.values():
        kill_proc_async(p)
    return res


def kill_proc_async(p):
    if p.returncode is None:
        try:
            os.kill(p.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


# ---------------------------------------------------------------- fan-out
async def fanout(session, port, server_pid, n, n_bcast=10, no_deflate=False):
    res = {}
    cmd = [PY, os.path.join(HERE, 'clients.py'), 'fanout', '--port', str(port), '--n', str(n), '--deadline', '120']
    if no_deflate:
        cmd.append('--no-deflate')
    p = await asyncio.create_subprocess_exec(
        *cmd, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, limit=2**26
    )
    try:
        ready = json.loads(await read_line(p.stdout, 'READY', 120))
        res['connected'] = ready['connected']
        res['connect_s'] = ready['connect_s']
        res['ws_ext'] = ready['ext']
        if ready['errors']:
            res['connect_errors'] = ready['errors']
        _, cnt = await http_get(session, port, '/ctl/count')
        res['server_count'] = cnt.get('/') if isinstance(cnt, dict) else cnt
        await asyncio.sleep(1.0)
        # idle baseline (pings of N clients etc.)
        c0, w0 = proc_cpu(server_pid), time.time()
        await asyncio.sleep(3.0)
        idle_rate = (proc_cpu(server_pid) - c0) / (time.time() - w0)
        res['idle_cpu_pct'] = round(100 * idle_rate, 1)
        per = []
        for k in range(n_bcast):
            c0, w0 = proc_cpu(server_pid), time.time()
            _, b = await http_get(session, port, f'/ctl/broadcast?seq={k}&ns=/', timeout=30)
            await asyncio.sleep(max(0.0, w0 + 1.0 - time.time()))
            c1, w1 = proc_cpu(server_pid), time.time()
            per.append(
                {
                    'seq': k,
                    'ts': b['ts'],
                    'emit_cpu_s': b['emit_cpu_s'],
                    'emit_wall_s': b['emit_wall_s'],
                    'cpu_s': c1 - c0,
                    'cpu_net_s': (c1 - c0) - idle_rate * (w1 - w0),
                    'window_s': w1 - w0,
                }
            )
        await asyncio.sleep(1.0)
        p.stdin.write(b'dump\n')
        await p.stdin.drain()
        result = json.loads(await read_line(p.stdout, 'RESULT', 60))
    finally:
        kill_proc_async(p)
        try:
            await asyncio.wait_for(p.wait(), 10)
        except TimeoutError:
            pass
    recv = result['recv']
    rows = []
    for x in per:
        ts = sorted(recv.get(str(x['seq']), []))
        row = dict(x)
        row['received'] = len(ts)
        if ts:
            row['spread_ms'] = 1000 * (ts[-1] - ts[0])
            row['first_ms'] = 1000 * (ts[0] - x['ts'])
            row['last_ms'] = 1000 * (ts[-1] - x['ts'])
        rows.append(row)
    res['per_broadcast'] = rows

    def med(k):
        v = [r[k] for r in rows if k in r]
        return round(statistics.median(v), 3) if v else None

    res['med_received'] = med('received')
    res['min_received'] = min(r['received'] for r in rows) if rows else None
    res['med_spread_ms'] = med('spread_ms')
    res['med_first_ms'] = med('first_ms')
    res['med_last_ms'] = med('last_ms')
    res['med_cpu_ms'] = round(1000 * statistics.median(r['cpu_s'] for r in rows), 1)
    res['med_cpu_net_ms'] = round(1000 * statistics.median(r['cpu_net_s'] for r in rows), 1)
    res['med_emit_call_ms'] = round(1000 * statistics.median(r['emit_wall_s'] for r in rows), 1)
    res['client_closed_early'] = result['closed_early']
    res['client_errors'] = result['errors']
    # after the fan-out client process is gone (its sockets aborted), how fast does the
    # server notice 1000 dead connections?
    t_dead = time.time()
    drained = None
    while time.time() - t_dead < 25:
        _, cnt = await http_get(session, port, '/ctl/count')
        if isinstance(cnt, dict) and cnt.get('/') == 0:
            drained = round(time.time() - t_dead, 2)
            break
        await asyncio.sleep(0.2)
    res['drain_after_client_kill_s'] = drained
    return res


# ---------------------------------------------------------------- per mode
async def run_mode(mode, rep, n, logdir):
    port = free_port()
    logpath = os.path.join(logdir, f'{mode}_rep{rep}.log')
    logf = open(logpath, 'wb')
    cmd = [PY, os.path.join(HERE, 'server.py'), '--port', str(port)] + MODES[mode]
    srv = subprocess.Popen(cmd, stdout=logf, stderr=subprocess.STDOUT, cwd=HERE)
    out = {'mode': mode, 'rep': rep, 'port': port, 'pid': srv.pid}
    size_before_stop = None
    try:
        async with aiohttp.ClientSession() as session:
            deadline = time.time() + 20
            while True:
                try:
                    st, _h = await http_get(session, port, '/health', timeout=2)
                    if st == 200:
                        break
                except Exception:
                    pass
                if time.time() > deadline or srv.poll() is not None:
                    raise RuntimeError('server did not come up')
                await asyncio.sleep(0.2)
            st, _ = await http_get(session, port, '/health')
            st404, _ = await http_get(session, port, '/nope')
            out['http_health'] = f'{st}/{st404}'
            print(f'[{mode} r{rep}] up on {port} pid {srv.pid}; correctness...', flush=True)
            out['correctness'] = await correctness(session, port)
            print(f'[{mode} r{rep}] disconnect tests...', flush=True)
            out['disconnect'] = await abrupt_disconnects(session, port)
            print(f'[{mode} r{rep}] fan-out n={n}...', flush=True)
            try:
                out['fanout'] = await fanout(session, port, srv.pid, n, no_deflate=False)
            except Exception as e:
                out['fanout'] = {'error': repr(e)}
            st, _ = await http_get(session, port, '/health')
            out['http_health_after'] = st
        logf.flush()
        size_before_stop = os.path.getsize(logpath)
    finally:
        stop_proc(srv)
        logf.close()
    with open(logpath, 'rb') as f:
        data = f.read().decode(errors='replace')
    if size_before_stop is None:
        size_before_stop = len(data)
    run_part, stop_part = data[:size_before_stop], data[size_before_stop:]
    out['log_bad_during_run'] = summarize_log(run_part)
    out['log_bad_at_shutdown'] = summarize_log(stop_part)
    out['log'] = logpath
    return out


def summarize_log(text):
    counts = {}
    for line in text.splitlines():
        if LOG_BAD.search(line):
            key = re.sub(r'\[\d+\]|\d{4}-\d\d-\d\d \d\d:\d\d:\d\d|0x[0-9a-f]+|[A-Za-z0-9_-]{20}', '#', line.strip())[
                :160
            ]
            counts[key] = counts.get(key, 0) + 1
    return dict(sorted(counts.items(), key=lambda kv: -kv[1])[:8])


def table(results):
    hdr = [
        'mode',
        'rep',
        'corr',
        'http',
        'clean ws',
        'clean poll',
        'SIGKILL ws',
        'SIGKILL poll',
        'SIGSTOP ws',
        'raw abort',
        'conn',
        'recv med/min',
        'spread ms',
        'last ms',
        'cpu/bcast ms',
        'net cpu ms',
        'idle cpu %',
        'drain s',
        'ws ext',
        'log lines run/stop',
    ]
    lines = ['| ' + ' | '.join(hdr) + ' |', '|' + '---|' * len(hdr)]
    for r in results:
        c = r.get('correctness', {})
        bad = [k for k, v in c.items() if isinstance(v, str) and 'FAIL' in v]
        d = r.get('disconnect', {})
        f = r.get('fanout', {})
        ext = ','.join(x.split(';')[0] for x in f.get('ws_ext', []))
        row = [
            r['mode'],
            r['rep'],
            'ok' if not bad and c else 'FAIL:' + ','.join(bad),
            f'{r.get("http_health")}/{r.get("http_health_after")}',
            c.get('disc_clean_websocket_s'),
            c.get('disc_clean_polling_s'),
            d.get('disc_sigkill_ws_s'),
            d.get('disc_sigkill_polling_s'),
            d.get('disc_sigstop_ws_s'),
            d.get('disc_raw_abort_s'),
            f.get('connected', f.get('error')),
            f'{f.get("med_received")}/{f.get("min_received")}',
            f.get('med_spread_ms'),
            f.get('med_last_ms'),
            f.get('med_cpu_ms'),
            f.get('med_cpu_net_ms'),
            f.get('idle_cpu_pct'),
            f.get('drain_after_client_kill_s'),
            ext or None,
            (f'{sum(r.get("log_bad_during_run", {}).values())}/{sum(r.get("log_bad_at_shutdown", {}).values())}'),
        ]
        lines.append('| ' + ' | '.join('—' if v is None else str(v) for v in row) + ' |')
    return '\n'.join(lines)


async def main():
    ap = argparse.ArgumentParser()
    ap.add_argument('--reps', type=int, default=2)
    ap.add_argument('--n', type=int, default=1000)
    ap.add_argument('--modes', default='A,B,B-wsleg,B-nodefl')
    ap.add_argument('--out', default=os.path.join(HERE, 'results'))
    a = ap.parse_args()
    os.makedirs(a.out, exist_ok=True)
    stamp = time.strftime('%Y%m%d-%H%M%S')
    logdir = os.path.join(a.out, stamp)
    os.makedirs(logdir, exist_ok=True)
    results = []
    for rep in range(1, a.reps + 1):
        for mode in a.modes.split(','):
            t0 = time.time()
            try:
                r = await asyncio.wait_for(run_mode(mode, rep, a.n, logdir), 400)
            except Exception as e:
                r = {'mode': mode, 'rep': rep, 'error': repr(e)}
            r['wall_s'] = round(time.time() - t0, 1)
            results.append(r)
            print(json.dumps({k: v for k, v in r.items() if k != 'fanout'}, default=str), flush=True)
            f = r.get('fanout', {})
            print('  fanout: ' + json.dumps({k: v for k, v in f.items() if k != 'per_broadcast'}), flush=True)
            with open(os.path.join(logdir, 'results.json'), 'w') as fh:
                json.dump(results, fh, indent=1, default=str)
    md = table(results)
    print('\n' + md)
    with open(os.path.join(logdir, 'table.md'), 'w') as fh:
        fh.write(md + '\n')
    print(f'\nresults: {logdir}/results.json, logs in {logdir}/')


if __name__ == '__main__':
    asyncio.run(main())
