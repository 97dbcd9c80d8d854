"""Client subprocesses used by hosting.py (benchmark only).

python clients.py fanout --port P --n 1000
    N raw websocket Engine.IO/Socket.IO clients (hand-rolled handshake).
    Prints 'READY {...}' when connected, then waits for a line on stdin:
    'dump' -> prints 'RESULT {json}' and exits.  Hard deadline --deadline s.

python clients.py victim --port P --tag T [--transport websocket|polling]
    A python-socketio AsyncClient connected to / and /gameplay with
    auth={'tag': T}. Prints 'CONNECTED' and idles (bounded) until killed
    or until stdin says 'disconnect' (clean disconnect).
"""

import argparse
import asyncio
import json
import re
import sys
import time

SEQ_RE = re.compile(r'"seq":\s*(\d+)')


async def stdin_line():
    loop = asyncio.get_running_loop()
    return await loop.run_in_executor(None, sys.stdin.readline)


async def fanout(args):
    import websockets
    from websockets.asyncio.client import connect

    uri = f'ws://127.0.0.1:{args.port}/socket.io/?EIO=4&transport=websocket'
    recv = {}  # seq -> list of receive times
    state = {'connected': 0, 'failed': 0, 'closed': 0, 'pings': 0, 'ext': set(), 'errors': []}
    sem = asyncio.Semaphore(args.concurrency)
    stop = asyncio.Event()
    conns = []

    async def one(i):
        try:
            async with sem:
                ws = await connect(
                    uri,
                    ping_interval=None,
                    max_size=None,
                    open_timeout=30,
                    compression=None if args.no_deflate else 'deflate',
                )
                exts = ws.response.headers.get('Sec-WebSocket-Extensions', '')
                state['ext'].add(exts or 'none')
                op = await asyncio.wait_for(ws.recv(), 15)
                assert op.startswith('0{'), op[:40]
                await ws.send('40')
                while True:
                    m = await asyncio.wait_for(ws.recv(), 15)
                    if m.startswith('40'):
                        break
                    if m == '2':
                        await ws.send('3')
            state['connected'] += 1
            conns.append(ws)
        except Exception as e:
            state['failed'] += 1
            if len(state['errors']) < 5:
                state['errors'].append(repr(e)[:200])
            return
        try:
            while not stop.is_set():
                m = await ws.recv()
                if m == '2':
                    state['pings'] += 1
                    await ws.send('3')
                elif m.startswith('42["game_list:updated"'):
                    t = time.time()
                    mm = SEQ_RE.search(m, 0, 80)
                    seq = int(mm.group(1)) if mm else -1
                    recv.setdefault(seq, []).append(t)
        except (websockets.ConnectionClosed, asyncio.CancelledError):
            state['closed'] += 1
        except Exception as e:
            state['closed'] += 1
            if len(state['errors']) < 5:
                state['errors'].append(repr(e)[:200])

    t0 = time.time()
    tasks = [asyncio.create_task(one(i)) for i in range(args.n)]
    # wait for all connection attempts (bounded)
    while state['connected'] + state['failed'] < args.n and time.time() - t0 < args.connect_timeout:
        await asyncio.sleep(0.1)
    print(
        'READY '
        + json.dumps(
            {
                'connected': state['connected'],
                'failed': state['failed'],
                'connect_s': round(time.time() - t0, 2),
                'ext': sorted(state['ext']),
                'errors': state['errors'],
            }
        ),
        flush=True,
    )
    try:
        await asyncio.wait_for(stdin_line(), args.deadline)
    except TimeoutError:
        pass
    stop.set()
    out = {
        'recv': recv,
        'connected': state['connected'],
        'failed': state['failed'],
        'closed_early': state['closed'],
        'pings': state['pings'],
        'errors': state['errors'],
    }
    print('RESULT ' + json.dumps(out), flush=True)
    for t in tasks:
        t.cancel()
    for ws in conns:
        ws.transport.abort()
    await asyncio.sleep(0.2)


async def victim(args):
    import socketio

    c = socketio.AsyncClient(reconnection=False)
    await asyncio.wait_for(
        c.connect(
            f'http://127.0.0.1:{args.port}',
            namespaces=['/', '/gameplay'],
            transports=[args.transport],
            auth={'tag': args.tag},
            wait_timeout=10,
        ),
        20,
    )
    print('CONNECTED', flush=True)
    try:
        line = await asyncio.wait_for(stdin_line(), args.deadline)
    except TimeoutError:
        line = ''
    if line.strip() == 'disconnect':
        t = time.time()
        await c.disconnect()
        print(f'DISCONNECTED {t}', flush=True)
    await asyncio.sleep(0.5)


def main():
    p = argparse.ArgumentParser()
    p.add_argument('cmd', choices=['fanout', 'victim'])
    p.add_argument('--port', type=int, required=True)
    p.add_argument('--n', type=int, default=1000)
    p.add_argument('--concurrency', type=int, default=50)
    p.add_argument('--connect-timeout', type=float, default=90)
    p.add_argument('--deadline', type=float, default=180)
    p.add_argument('--tag', default='victim')
    p.add_argument('--transport', default='websocket')
    p.add_argument('--no-deflate', action='store_true')
    args = p.parse_args()
    import uvloop

    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as r:
        r.run(fanout(args) if args.cmd == 'fanout' else victim(args))


if __name__ == '__main__':
    main()
