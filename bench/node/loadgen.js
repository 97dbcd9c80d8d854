// Load generator for bench/run.py: N raw websocket Engine.IO v4 / Socket.IO v5 clients (the `ws` package, no
// socket.io-client: one client costs a few KB here, so 10,000 fit in one process).
//
//   node loadgen.js --port P --n N [--rate 1000] [--inflight 100] [--deadline 600]
//
// Each client opens ws://127.0.0.1:P/socket.io/?EIO=4&transport=websocket, joins / and /gameplay, answers
// Engine.IO pings, and records every `game_list:updated`: its version, the server's timestamp, and when it came.
// stdout: JSON lines. {"ready": ...} once every client joined (or the ramp gave up). Commands on stdin, one a line:
//   stats            -> {"stats": {...}} per version: receipts per namespace, first/last arrival, latency percentiles
//   screen S K       -> K clients send main:screen with an ack, each again as soon as its ack came, for S seconds;
//                       {"screen": {acks, acks_per_s, p50_ms, p99_ms, max_ms}}
//   bytes            -> {"bytes": {total, deflate}}: bytes read off the wire so far, clients that negotiated deflate
//   quit             -> close every socket and exit
// Every loop is bounded: the ramp by --deadline, each screen run by S.
'use strict';
const WebSocket = require('ws');
const readline = require('readline');
const { performance } = require('perf_hooks');

const args = { port: 3000, n: 100, rate: 1000, inflight: 100, deadline: 600, deflate: 0 };
for (let i = 2; i < process.argv.length; i += 2) args[process.argv[i].replace(/^--/, '')] = Number(process.argv[i + 1]);
const url = `ws://127.0.0.1:${args.port}/socket.io/?EIO=4&transport=websocket`;
const now = () => performance.timeOrigin + performance.now(); // ms since the epoch, sub-ms resolution
const out = (obj) => process.stdout.write(JSON.stringify(obj) + '\n');

const clients = [];
const byVersion = new Map(); // version -> {ns: {count, first, last, lat: []}}
let joined = 0, opened = 0, inflight = 0, failed = 0, disconnectedAfterJoin = 0, pings = 0, started = 0;
const t0 = now();
let screen = null; // the running screen test

function record(ns, text, at) {
  const v = text.lastIndexOf('"version":');
  const t = text.lastIndexOf('"timestamp":"');
  if (v < 0 || t < 0) return;
  const version = parseInt(text.slice(v + 10, v + 30), 10);
  const stamp = text.slice(t + 13, t + 13 + 26); // 2026-01-01T12:00:00.123456 (both servers write microseconds)
  const ts = Date.parse(stamp.slice(0, 23) + 'Z') + Number(stamp.slice(23, 26)) / 1000;
  let per = byVersion.get(version);
  if (!per) { per = {}; byVersion.set(version, per); }
  let s = per[ns];
  if (!s) { s = { count: 0, first: at, last: at, lat: [] }; per[ns] = s; }
  s.count++;
  if (at < s.first) s.first = at;
  if (at > s.last) s.last = at;
  s.lat.push(at - ts);
}

function connectOne(i) {
  inflight++;
  started++;
  const c = { ws: null, joined: 0, ackId: 0, sentAt: 0, done: false };
  // --deflate 1: offer permessage-deflate (ws's default offer, as browsers make one); else offer nothing
  const ws = new WebSocket(url, { perMessageDeflate: args.deflate ? {} : false, handshakeTimeout: 30000 });
  c.ws = ws;
  ws.on('open', () => { opened++; });
  ws.on('message', (buf, isBinary) => {
    const at = now();
    const text = isBinary ? '' : buf.toString();
    const ch = text.charCodeAt(0);
    if (ch === 52 /* '4' */) {
      const t1 = text.charCodeAt(1);
      if (t1 === 50 /* '42' event */) {
        if (text.startsWith('42/gameplay,')) record('/gameplay', text, at); else record('/', text, at);
      } else if (t1 === 51 /* '43' ack */) {
        if (screen && c.sentAt) screenAck(c, at);
      } else if (t1 === 48 /* '40' connect */) {
        if (++c.joined === 2) {
          joined++;
          inflight--;
          c.done = true;
          if (joined + failed === args.n) ready();
          else pump();
        }
      }
    } else if (ch === 50 /* '2' ping */) {
      pings++;
      ws.send('3');
    } else if (ch === 48 /* '0' open */) {
      ws.send('40');
      ws.send('40/gameplay,');
    }
  });
  const fail = () => {
    if (c.done) { if (!c.closedCounted) { c.closedCounted = true; disconnectedAfterJoin++; } return; }
    c.done = true;
    failed++;
    inflight--;
    if (joined + failed === args.n) ready(); else pump();
  };
  ws.on('error', fail);
  ws.on('close', fail);
  clients.push(c);
}

let nextIndex = 0;
let readySent = false;
function pump() {
  // a bounded connect rate: at most `rate` per second, at most `inflight` handshakes at once
  const allowed = Math.floor(((now() - t0) / 1000) * args.rate) + 1;
  while (nextIndex < args.n && inflight < args.inflight && started < allowed) connectOne(nextIndex++);
}
const pumpTimer = setInterval(pump, 10);

function ready() {
  if (readySent) return;
  readySent = true;
  clearInterval(pumpTimer);
  out({ ready: { joined, failed, ramp_s: (now() - t0) / 1000 } });
}

setTimeout(() => { if (!readySent) ready(); }, args.deadline * 1000);

function pct(sorted, p) {
  if (!sorted.length) return null;
  return sorted[Math.min(sorted.length - 1, Math.floor((p / 100) * sorted.length))];
}

function stats() {
  const versions = {};
  for (const [version, per] of byVersion) {
    const all = [];
    let first = Infinity, last = -Infinity;
    const counts = {};
    for (const [ns, s] of Object.entries(per)) {
      counts[ns] = s.count;
      for (const x of s.lat) all.push(x);
      first = Math.min(first, s.first);
      last = Math.max(last, s.last);
    }
    all.sort((a, b) => a - b);
    const minLat = all.length ? all[0] : null;
    versions[version] = {
      counts, spread_ms: last - first, first_at: first, last_at: last, lat_min_ms: minLat,
      per_ns: Object.fromEntries(Object.entries(per).map(([ns, s]) => [ns, [s.first - first, s.last - first]])),
      lat_p50_ms: pct(all, 50), lat_p99_ms: pct(all, 99), lat_max_ms: all[all.length - 1],
    };
  }
  return { joined, failed, disconnected_after_join: disconnectedAfterJoin, pings, versions };
}

// bytes read off the wire by every open client so far (TCP payload: frames as sent, compressed or not), and how many
// clients negotiated permessage-deflate
function wireBytes() {
  let total = 0, deflate = 0;
  for (const c of clients) {
    const sock = c.ws && c.ws._socket;
    if (sock) total += sock.bytesRead;
    if (c.ws && c.ws.extensions && c.ws.extensions.includes('permessage-deflate')) deflate++;
  }
  return { total, deflate };
}

function screenSend(c) {
  c.ackId++;
  c.sentAt = now();
  c.ws.send(`42${c.ackId}["main:screen"]`);
}

function screenAck(c, at) {
  screen.lat.push(at - c.sentAt);
  screen.acks++;
  c.sentAt = 0;
  if (now() < screen.until) screenSend(c);
  else if (--screen.active === 0) screenDone();
}

function screenDone() {
  const s = screen;
  screen = null;
  clearTimeout(s.timer);
  const lat = s.lat.sort((a, b) => a - b);
  const elapsed = (now() - s.start) / 1000;
  out({ screen: { clients: s.k, acks: s.acks, seconds: elapsed, acks_per_s: s.acks / elapsed,
    p50_ms: pct(lat, 50), p99_ms: pct(lat, 99), max_ms: lat[lat.length - 1] } });
}

function startScreen(seconds, k) {
  const active = clients.filter((c) => c.joined === 2 && c.ws.readyState === WebSocket.OPEN).slice(0, k);
  screen = { k: active.length, acks: 0, lat: [], start: now(), until: now() + seconds * 1000, active: active.length };
  screen.timer = setTimeout(() => { if (screen) screenDone(); }, seconds * 1000 + 10000); // acks that never come
  for (const c of active) screenSend(c);
}

readline.createInterface({ input: process.stdin }).on('line', (line) => {
  const [cmd, a, b] = line.trim().split(/\s+/);
  if (cmd === 'stats') out({ stats: stats() });
  else if (cmd === 'bytes') out({ bytes: wireBytes() });
  else if (cmd === 'screen') startScreen(Number(a), Number(b));
  else if (cmd === 'quit') {
    for (const c of clients) { c.done = true; c.closedCounted = true; try { c.ws.terminate(); } catch (e) { /* gone */ } }
    setTimeout(() => process.exit(0), 100);
  }
});
process.stdin.on('end', () => process.exit(0));
pump();
