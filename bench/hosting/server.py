"""Tiny socket.io-on-Sanic server used by hosting.py (benchmark only).

Usage:
  python server.py --mode sanic --port 8001          # (A) async_mode='sanic', Sanic's own server
  python server.py --mode asgi  --port 8001 --ws websockets   # (B) ASGIApp + uvicorn (uvloop)
  python server.py --mode asgi  --port 8001 --ws auto         # (B') uvicorn default ws impl

Control routes (plain Sanic HTTP routes, so they also prove HTTP works
alongside socket.io):
  GET /health                       -> {"ok": true, "mode": ...}
  GET /ctl/broadcast?seq=N&ns=all|/ -> emits game_list:updated, returns server ts
  GET /ctl/tag?tag=X                -> connect/disconnect timestamps for clients
                                       that connected with auth={"tag": X}
  GET /ctl/count                    -> number of connected sids per namespace
"""

import argparse
import json
import os
import time

import socketio
from sanic import Sanic
from sanic.response import json as sjson

p = argparse.ArgumentParser()
p.add_argument('--mode', choices=['sanic', 'asgi'], required=True)
p.add_argument('--port', type=int, required=True)
p.add_argument('--ws', default='websockets', help='uvicorn ws impl (asgi mode)')
p.add_argument('--no-deflate', action='store_true', help='uvicorn: disable permessage-deflate')
p.add_argument('--ping-interval', type=float, default=5)
p.add_argument('--ping-timeout', type=float, default=5)
args = p.parse_args()

NAMESPACES = ['/', '/gameplay']


def make_games(n=20):
    games = []
    for i in range(n):
        games.append(
            {
                'id': f'game-{i:04d}-{"x" * 8}',
                'name': f'Friday night table #{i}',
                'host': f'player_{i * 7 % 101}',
                'players': [f'p{i}_{k}' for k in range(4)],
                'max_players': 6,
                'state': 'waiting' if i % 3 else 'running',
                'created_at': 1700000000 + i * 17,
                'variant': 'classic',
            }
        )
    return games


GAMES = make_games()
PAYLOAD_BYTES = len(json.dumps({'seq': 0, 'ts': 0.0, 'games': GAMES}))

sio = socketio.AsyncServer(
    async_mode='sanic' if args.mode == 'sanic' else 'asgi',
    cors_allowed_origins='*',
    ping_interval=args.ping_interval,
    ping_timeout=args.ping_timeout,
    logger=False,
    engineio_logger=False,
)

app = Sanic('hosting_bench')
app.config.ACCESS_LOG = False
app.config.MOTD = False

# tag -> {ns: {...}}
TAGS = {}
SID_TAG = {}


def _mk_handlers(ns):
    async def on_connect(sid, environ, auth=None):
        tag = (auth or {}).get('tag') if isinstance(auth, dict) else None
        if tag:
            SID_TAG[(ns, sid)] = tag
            TAGS.setdefault(tag, {})[ns] = {'connected_at': time.time(), 'disconnected_at': None, 'reason': None}

    async def on_disconnect(sid, reason=None):
        tag = SID_TAG.pop((ns, sid), None)
        if tag and tag in TAGS and ns in TAGS[tag]:
            TAGS[tag][ns]['disconnected_at'] = time.time()
            TAGS[tag][ns]['reason'] = str(reason)

    async def on_main_screen(sid, data=None):
        return {'ok': True, 'ns': ns, 'echo': data, 'games': GAMES[:3]}

    sio.on('connect', on_connect, namespace=ns)
    sio.on('disconnect', on_disconnect, namespace=ns)
    sio.on('main:screen', on_main_screen, namespace=ns)


for _ns in NAMESPACES:
    _mk_handlers(_ns)


@app.get('/health')
async def health(request):
    return sjson({'ok': True, 'mode': args.mode, 'pid': os.getpid()})


@app.get('/ctl/broadcast')
async def broadcast(request):
    seq = int(request.args.get('seq', 0))
    which = request.args.get('ns', 'all')
    nss = NAMESPACES if which == 'all' else [which]
    ts = time.time()
    c0 = time.process_time()
    for ns in nss:
        await sio.emit('game_list:updated', {'seq': seq, 'ts': ts, 'games': GAMES}, namespace=ns)
    c1 = time.process_time()
    return sjson({'ts': ts, 'emit_cpu_s': c1 - c0, 'emit_wall_s': time.time() - ts})


@app.get('/ctl/tag')
async def tag_info(request):
    return sjson(TAGS.get(request.args.get('tag', ''), {}))


@app.get('/ctl/count')
async def count(request):
    out = {}
    for ns in NAMESPACES:
        out[ns] = sum(1 for _ in sio.manager.get_participants(ns, None))
    return sjson(out)


if args.mode == 'sanic':
    sio.attach(app)
    if __name__ == '__main__':
        print(f'READY sanic payload_bytes={PAYLOAD_BYTES}', flush=True)
        app.run(host='127.0.0.1', port=args.port, single_process=True, access_log=False, debug=False, motd=False)
else:
    asgi_app = socketio.ASGIApp(sio, other_asgi_app=app)
    if __name__ == '__main__':
        import uvicorn

        print(f'READY asgi ws={args.ws} deflate={not args.no_deflate} payload_bytes={PAYLOAD_BYTES}', flush=True)
        uvicorn.run(
            asgi_app,
            host='127.0.0.1',
            port=args.port,
            loop='uvloop',
            ws=args.ws,
            log_level='info',
            access_log=False,
            lifespan='on',
            ws_per_message_deflate=not args.no_deflate,
        )
