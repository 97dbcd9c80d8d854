// The reference: Node's socket.io 4 doing gamelist-service's broadcast job, for bench/run.py.
//
//   node ref_server.js --port P --redis redis://127.0.0.1:R/0
//
// Subscribes to gamelist:updates like every serve process, and on each message emits the same envelope
// ({status, message, data, timestamp, event}) as game_list:updated to / and /gameplay. main:screen is answered
// through the ack (or as an event) from the latest list in memory, read from Redis (gamelist:current) when none
// has arrived yet; a client connecting with auth {since: V} gets the latest list when V is not its version.
// websocket transport as the clients use; socket.io's defaults otherwise (no compression).
// After each broadcast prints how long the emits took (as gamelist-service logs it). Prints {"listening": port} when ready; GET /health answers 200. Ends on SIGTERM/SIGINT.
'use strict';
const http = require('http');
const { Server } = require('socket.io');
const Redis = require('ioredis');
const { performance } = require('perf_hooks');

const args = { port: 3000, redis: 'redis://127.0.0.1:6379/0' };
for (let i = 2; i < process.argv.length; i += 2) args[process.argv[i].replace(/^--/, '')] = process.argv[i + 1];

// ISO 8601 UTC with microseconds and a Z, as gamelist-service writes its timestamps
function utcNowIso() {
  const t = performance.timeOrigin + performance.now();
  const ms = Math.floor(t);
  return new Date(ms).toISOString().slice(0, 23) + String(Math.floor((t - ms) * 1000)).padStart(3, '0') + 'Z';
}

const envelope = (data, event, message) => ({ status: 'success', message, data, timestamp: utcNowIso(), event });

const server = http.createServer((req, res) => {
  if (req.url === '/health') { res.writeHead(200, { 'content-type': 'application/json' }); res.end('{"status":"ok"}'); }
});
// --deflate 1: permessage-deflate on (socket.io's default is off), compressing messages of 1 KB or more, as
// gamelist-service's default compression_threshold
const io = new Server(server, { pingInterval: 25000, pingTimeout: 20000, maxHttpBufferSize: 65536,
  perMessageDeflate: Number(args.deflate) ? { threshold: 1024 } : false });
const redis = new Redis(args.redis);
const sub = new Redis(args.redis);
let latest = null; // {version, data}

async function current() {
  if (latest) return latest.data;
  const raw = await redis.get('gamelist:current');
  return raw ? JSON.parse(raw) : null;
}

for (const ns of ['/', '/gameplay']) {
  io.of(ns).on('connection', (socket) => {
    // a client that reconnects with the version it saw gets the current list if it moved on, as gamelist-service
    const since = socket.handshake.auth && socket.handshake.auth.since;
    if (typeof since === 'number' && latest && latest.version !== since) {
      socket.emit('game_list:updated', envelope(latest.data, 'game_list:updated', 'Game list has been updated'));
    }
    socket.on('main:screen', async (...args) => {
      const ack = typeof args[args.length - 1] === 'function' ? args[args.length - 1] : null;
      const reply = envelope(await current(), 'main:screen', 'Current game list');
      if (ack) ack(reply); else socket.emit('main:screen', reply);
    });
  });
}

sub.subscribe('gamelist:updates');
sub.on('message', (channel, raw) => {
  const msg = JSON.parse(raw);
  const version = msg.data && msg.data.version;
  if (!latest || !(version < latest.version)) latest = { version, data: msg.data };
  const started = performance.now();
  const message = envelope(msg.data, 'game_list:updated', 'Game list has been updated');
  let clients = 0;
  for (const ns of ['/', '/gameplay']) {
    clients += io.of(ns).sockets.size;
    io.of(ns).emit('game_list:updated', message);
  }
  // the emits write to the sockets synchronously; setImmediate also counts any work they left for this turn.
  // The same line as gamelist-service logs, for bench/run.py's capacity phase.
  setImmediate(() => process.stdout.write(
    `broadcast of version ${version} written in ${(performance.now() - started).toFixed(1)} ms (${clients} clients over 2 namespaces)\n`));
});

server.listen(Number(args.port), '127.0.0.1', () => process.stdout.write(JSON.stringify({ listening: Number(args.port) }) + '\n'));
const stop = () => { io.close(); redis.disconnect(); sub.disconnect(); setTimeout(() => process.exit(0), 200); };
process.on('SIGTERM', stop);
process.on('SIGINT', stop);
