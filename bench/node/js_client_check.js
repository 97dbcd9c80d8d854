// Used by tests/test_js_client.py: the official socket.io JS client against a running gamelist-service.
// node js_client_check.js URL TRANSPORTS  -> prints one JSON line per step; exits 0 when every check passed.
// TRANSPORTS: websocket, polling, or polling,websocket (the client's default: it upgrades, and 'ready' waits for it).
'use strict';
const { io } = require('socket.io-client');

const [url, transport] = process.argv.slice(2);
const out = (obj) => process.stdout.write(JSON.stringify(obj) + '\n');
const deadline = setTimeout(() => { out({ error: 'timeout' }); process.exit(2); }, 20000);

const opts = { transports: transport.split(','), reconnection: false, forceNew: true };
const sockets = { '/': io(url + '/', opts), '/gameplay': io(url + '/gameplay', opts) };
const updates = { '/': [], '/gameplay': [] };
let connected = 0;

for (const [ns, socket] of Object.entries(sockets)) {
  socket.on('connect_error', (err) => { out({ error: 'connect_error', ns, message: String(err) }); process.exit(3); });
  socket.on('game_list:updated', (msg) => {
    updates[ns].push(msg);
    out({ event: 'game_list:updated', ns, version: msg.data.version, game_name: msg.data.gamelist[0].game_name,
          transport: socket.io.engine.transport.name });
    if (updates['/'].length >= 1 && updates['/gameplay'].length >= 1) finish();
  });
  socket.on('connect', async () => {
    const reply = await socket.timeout(10000).emitWithAck('main:screen');
    out({ event: 'main:screen', ns, message: reply.message, total_games: reply.data.total_games,
          transport: socket.io.engine.transport.name });
    if (++connected === 2) {
      await Promise.all(Object.values(sockets).map(upgraded));
      out({ ready: true });
    }
  });
}

function upgraded(socket) {
  const engine = socket.io.engine;
  if (!opts.transports.includes('websocket') || engine.transport.name === 'websocket') return Promise.resolve();
  return new Promise((resolve) => engine.once('upgrade', resolve));
}

function finish() {
  clearTimeout(deadline);
  for (const socket of Object.values(sockets)) socket.close();
  out({ done: true });
  setTimeout(() => process.exit(0), 50);
}
