// Storm generator for bench/storm.py: N raw websocket Engine.IO v4 / Socket.IO v5 clients (the `ws` package) that
// connect all at once, drop all at once, reconnect all at once, and record how the server closed them.
//
//   node stormgen.js --port P --n N [--rate 20000] [--inflight 1000] [--deadline 30]
//
// Commands on stdin, one a line; answers on stdout, one JSON line each:
//   connect [SINCE]  -> every client connects (at most `rate` starts per second, `inflight` handshakes at once),
//                       joins / and /gameplay (auth {"since": SINCE} when given); {"joined": {joined, failed,
//                       seconds, caught_up}} once all joined or failed, or at the deadline (then `never` counts them)
//   drop             -> every socket destroyed at once (no close handshake, as a network blip does); {"dropped": n}
//   closes           -> how the server closed them: {"closes": {codes: {code: count}, engine_close_first, bare}}
//   quit             -> exit
// Every loop is bounded: each storm by --deadline.
'use strict';
const WebSocket = require('ws');
const readline = require('readline');
const { performance } = require('perf_hooks');

const args = { port: 3000, n: 1000, rate: 20000, inflight: 1000, deadline: 30 };
for (let i = 2; i < process.argv.length; i += 2) args[process.argv[i].replace(/^--/, '')] = Number(process.argv[i + 1]);
const url = `ws://127.0.0.1:${args.port}/socket.io/?EIO=4&transport=websocket`;
const now = () => performance.now();
const out = (obj) => process.stdout.write(JSON.stringify(obj) + '\n');

let clients = [];
let storm = null; // the connect storm in progress

function startStorm(since) {
  clients = [];
  storm = { since, t0: now(), next: 0, started: 0, inflight: 0, joined: 0, failed: 0, caughtUp: 0, done: false };
  storm.timer = setInterval(pump, 5);
  storm.deadline = setTimeout(finish, args.deadline * 1000);
  pump();
}

function pump() {
  const s = storm;
  if (!s || s.done) return;
  const allowed = Math.floor(((now() - s.t0) / 1000) * args.rate) + 1;
  while (s.next < args.n && s.inflight < args.inflight && s.started < allowed) connectOne(s.next++);
}

function settled(c, ok) {
  if (c.settled) return;
  c.settled = true;
  storm.inflight--;
  if (ok) storm.joined++; else storm.failed++;
  if (storm.joined + storm.failed === args.n) finish(); else pump();
}

function finish() {
  const s = storm;
  if (!s || s.done) return;
  s.done = true;
  clearInterval(s.timer);
  clearTimeout(s.deadline);
  out({ joined: { joined: s.joined, failed: s.failed, never: args.n - s.joined, seconds: (now() - s.t0) / 1000,
    caught_up: s.caughtUp } });
}

function connectOne(i) {
  const s = storm;
  s.inflight++;
  s.started++;
  const c = { i, joined: 0, settled: false, engineClose: false, closeCode: null, dropped: false };
  const ws = new WebSocket(url, { perMessageDeflate: false, handshakeTimeout: args.deadline * 1000 });
  c.ws = ws;
  const auth = s.since === null ? '' : JSON.stringify({ since: s.since });
  ws.on('message', (buf, isBinary) => {
    const text = isBinary ? '' : buf.toString();
    const ch = text.charCodeAt(0);
    if (ch === 48 /* '0' open */) {
      ws.send('40' + auth);
      ws.send('40/gameplay,' + auth);
    } else if (ch === 50 /* '2' ping */) {
      ws.send('3');
    } else if (ch === 49 /* '1' Engine.IO close */) {
      c.engineClose = true;
    } else if (text.startsWith('40')) {
      if (++c.joined === 2) settled(c, true);
    } else if (text.startsWith('44')) {
      settled(c, false); // refused
    } else if (text.startsWith('42["game_list:updated"')) {
      s.caughtUp++;
    }
  });
  ws.on('close', (code) => { c.closeCode = code; settled(c, false); });
  ws.on('error', () => settled(c, false));
  clients.push(c);
}

function drop() {
  let n = 0;
  for (const c of clients) {
    if (c.ws.readyState === WebSocket.OPEN) n++;
    c.dropped = true;
    try { c.ws._socket ? c.ws._socket.destroy() : c.ws.terminate(); } catch (e) { /* gone */ }
  }
  out({ dropped: n });
}

function closes() {
  const codes = {};
  let engineCloseFirst = 0, bare = 0;
  for (const c of clients) {
    if (c.dropped) continue;
    const code = c.closeCode === null ? 'open' : String(c.closeCode);
    codes[code] = (codes[code] || 0) + 1;
    if (c.engineClose) engineCloseFirst++;
    if (c.closeCode === 1006) bare++; // the TCP connection ended without a close frame
  }
  out({ closes: { codes, engine_close_first: engineCloseFirst, bare } });
}

readline.createInterface({ input: process.stdin }).on('line', (line) => {
  const [cmd, a] = line.trim().split(/\s+/);
  if (cmd === 'connect') startStorm(a === undefined ? null : Number(a));
  else if (cmd === 'drop') drop();
  else if (cmd === 'closes') closes();
  else if (cmd === 'quit') {
    for (const c of clients) { try { c.ws.terminate(); } catch (e) { /* gone */ } }
    setTimeout(() => process.exit(0), 100);
  }
});
process.stdin.on('end', () => process.exit(0));
