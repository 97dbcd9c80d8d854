// Capacity generator for bench/capacity.py: one of P processes that together hold N raw websocket Engine.IO v4 /
// Socket.IO v5 clients (the `ws` package and the same hand-written handshake as loadgen.js), each process binding
// its client sockets to a loopback source address of its own (one source address to one server port allows about
// 28,000 ephemeral ports; each process stays under the 20,000 open files a process may have here).
// Each client binds an explicit source port too, counting up from --local-port-base: a bind to port 0 makes the
// kernel search for a free port (inet_csk_get_port) across the sockets of every source address, and past about
// 40,000 clients on the machine that search took the generators' CPU and capped the ramp near 300 connects/s.
// A port taken by something else (EADDRINUSE) is skipped, and the client tries the next one: counted, not failed.
//
//   node capgen.js --port P --n N --local-address 127.0.11.1 [--host 127.0.0.1] [--rate 333] [--inflight 100]
//                  [--deadline 600] [--start-at EPOCH_MS] [--progress 1] [--id 0] [--local-port-base 10000]
//
// Each client opens ws://HOST:P/socket.io/?EIO=4&transport=websocket from --local-address, joins / and /gameplay,
// answers Engine.IO pings, and records every `game_list:updated` by its data.version. The ramp starts at
// --start-at (so that P processes start together), at most --rate connects per second and --inflight handshakes
// at once; a handshake that fails is counted, not retried.
// stdout: JSON lines. {"progress": ...} every --progress s during the ramp, {"ready": ...} once every client joined
// or failed (or at the deadline). Commands on stdin, one a line:
//   pub V T          the broadcast of version V was published at T (ms since the epoch): latencies count from T
//   stats [V ...]    -> {"stats": {...}}: clients, disconnects, memory, and for each V given: receipts per namespace,
//                       clients that got it on both, duplicates, first/last arrival, a latency histogram (1 % buckets)
//   quit             -> close every socket and exit
// Every loop is bounded: the ramp by --deadline.
'use strict';
const WebSocket = require('ws');
const readline = require('readline');
const { performance } = require('perf_hooks');

const args = { port: 3000, host: '127.0.0.1', n: 100, rate: 1000, inflight: 100, deadline: 600, progress: 1, id: 0,
  'local-address': '', 'start-at': 0, 'local-port-base': 10000 };
for (let i = 2; i < process.argv.length; i += 2) {
  const key = process.argv[i].replace(/^--/, '');
  const value = process.argv[i + 1];
  args[key] = typeof args[key] === 'number' ? Number(value) : value;
}
const url = `ws://${args.host}:${args.port}/socket.io/?EIO=4&transport=websocket`;
const now = () => performance.timeOrigin + performance.now(); // ms since the epoch, sub-ms resolution
const out = (obj) => process.stdout.write(JSON.stringify(obj) + '\n');
const LOG_STEP = Math.log(1.01); // latency buckets: 1 % wide (key k holds expm1(k * LOG_STEP) ms)

const clients = [];
const versions = new Map(); // version -> {published, pending: [], counts: [n0, n1], both, dupes, first, last, hist}
let joined = 0, failed = 0, inflight = 0, started = 0, disconnected = 0, pings = 0, lastJoinAt = 0;
const closeCodes = {}; // how clients that had joined lost their connection: close code -> count
const failReasons = {}; // why handshakes failed: error code or close code -> count
let t0 = 0, readySent = false, pumpTimer = null, progressTimer = null;
let nextPort = args['local-port-base'], portsSkipped = 0; // explicit source ports (see the top)
const MAX_PORT_SKIPS = 1000;

function perVersion(version) {
  let s = versions.get(version);
  if (!s) {
    s = { published: 0, pending: [], counts: [0, 0], both: 0, dupes: 0, first: Infinity, last: -Infinity,
      hist: new Map(), latMin: Infinity, latMax: -Infinity };
    versions.set(version, s);
  }
  return s;
}

function addLatency(s, at) {
  const lat = Math.max(0, at - s.published);
  const key = Math.round(Math.log1p(lat) / LOG_STEP);
  s.hist.set(key, (s.hist.get(key) || 0) + 1);
  if (lat < s.latMin) s.latMin = lat;
  if (lat > s.latMax) s.latMax = lat;
}

function record(c, ns, text, at) {
  const v = text.lastIndexOf('"version":');
  if (v < 0) return;
  const version = parseInt(text.slice(v + 10, v + 30), 10);
  const s = perVersion(version);
  if (c.v[ns] === version) { s.dupes++; return; }
  c.v[ns] = version;
  s.counts[ns]++;
  if (c.v[1 - ns] === version) s.both++;
  if (at < s.first) s.first = at;
  if (at > s.last) s.last = at;
  if (s.published) addLatency(s, at); else s.pending.push(at);
}

function count(map, key) { map[key] = (map[key] || 0) + 1; }

function connectOne() {
  inflight++;
  started++;
  const c = { ws: null, joined: 0, done: false, v: [0, 0] };
  const options = { perMessageDeflate: false, handshakeTimeout: 30000 };
  if (args['local-address']) {
    options.localAddress = args['local-address'];
    if (nextPort <= 65535) options.localPort = nextPort++; // past the last port: the kernel picks one
  }
  const ws = new WebSocket(url, options);
  c.ws = ws;
  ws.on('message', (buf, isBinary) => {
    const at = now();
    const text = isBinary ? '' : buf.toString();
    const ch = text.charCodeAt(0);
    if (ch === 52 /* '4' */) {
      const t1 = text.charCodeAt(1);
      if (t1 === 50 /* '42' event */) {
        record(c, text.startsWith('42/gameplay,') ? 1 : 0, text, at);
      } else if (t1 === 48 /* '40' connect */) {
        if (++c.joined === 2) {
          joined++;
          inflight--;
          c.done = true;
          lastJoinAt = at;
          if (joined + failed === args.n) ready(); else pump();
        }
      } else if (t1 === 52 /* '44' refused */) {
        ws.terminate();
      }
    } else if (ch === 50 /* '2' ping */) {
      pings++;
      ws.send('3');
    } else if (ch === 48 /* '0' open */) {
      ws.send('40');
      ws.send('40/gameplay,');
    }
  });
  let reason = null;
  ws.on('error', (err) => { reason = reason || (err && (err.code || err.message)) || 'error'; });
  ws.on('unexpected-response', (req, res) => { reason = `http ${res.statusCode}`; ws.terminate(); });
  ws.on('close', (code) => {
    if (c.done) {
      if (!c.quitting) { disconnected++; count(closeCodes, String(code)); }
      return;
    }
    c.done = true;
    inflight--;
    if (reason === 'EADDRINUSE' && options.localPort && portsSkipped < MAX_PORT_SKIPS) {
      portsSkipped++; // the port is someone else's: the same client again, from the next port
      started--;
      setImmediate(connectOne);
      return;
    }
    failed++;
    count(failReasons, reason || `close ${code}`);
    if (joined + failed === args.n) ready(); else pump();
  });
  clients.push(c);
}

function pump() {
  if (readySent || !t0) return;
  const allowed = Math.floor(((now() - t0) / 1000) * args.rate) + 1;
  while (started < args.n && inflight < args.inflight && started < allowed) connectOne();
}

function progress() {
  out({ progress: { id: args.id, started, joined, failed, inflight, disconnected, ports_skipped: portsSkipped, t: now(),
    rss: process.memoryUsage.rss() } });
}

function ready() {
  if (readySent) return;
  readySent = true;
  clearInterval(pumpTimer);
  clearInterval(progressTimer);
  progress();
  out({ ready: { id: args.id, joined, failed, never: args.n - joined - failed, started_at: t0,
    last_join_at: lastJoinAt, ramp_s: ((lastJoinAt || now()) - t0) / 1000, fail_reasons: failReasons,
    ports_skipped: portsSkipped } });
}

function start() {
  t0 = now();
  pumpTimer = setInterval(pump, 10);
  progressTimer = setInterval(progress, args.progress * 1000);
  setTimeout(ready, args.deadline * 1000);
  pump();
}

function stats(wanted) {
  const per = {};
  for (const version of wanted) {
    const s = versions.get(version);
    if (!s) { per[version] = null; continue; }
    per[version] = { counts: { '/': s.counts[0], '/gameplay': s.counts[1] }, both: s.both, dupes: s.dupes,
      first: s.first === Infinity ? null : s.first, last: s.last === -Infinity ? null : s.last,
      published: s.published || null, unpublished: s.pending.length,
      lat_min_ms: s.latMin === Infinity ? null : s.latMin, lat_max_ms: s.latMax === -Infinity ? null : s.latMax,
      hist: Object.fromEntries(s.hist) };
  }
  let open = 0;
  for (const c of clients) if (c.ws.readyState === WebSocket.OPEN) open++;
  const mem = process.memoryUsage();
  return { id: args.id, joined, failed, open, disconnected, close_codes: closeCodes, pings,
    rss: mem.rss, heap_used: mem.heapUsed, external: mem.external, cpu: process.cpuUsage(), versions: per };
}

readline.createInterface({ input: process.stdin }).on('line', (line) => {
  const [cmd, ...rest] = line.trim().split(/\s+/);
  if (cmd === 'pub') {
    const s = perVersion(Number(rest[0]));
    s.published = Number(rest[1]);
    for (const at of s.pending) addLatency(s, at);
    s.pending = [];
  } else if (cmd === 'stats') {
    out({ stats: stats(rest.map(Number)) });
  } else if (cmd === 'quit') {
    for (const c of clients) { c.done = true; c.quitting = true; try { c.ws.terminate(); } catch (e) { /* gone */ } }
    setTimeout(() => process.exit(0), 100);
  }
});
process.stdin.on('end', () => process.exit(0));
setTimeout(start, Math.max(0, args['start-at'] - now()));
