// Capacity generator for bench/capacity.py: one of P processes that together hold N raw websocket Engine.IO v4 /
// Socket.IO v5 clients (raw TCP sockets speaking the websocket protocol by hand, or with --client ws the `ws` package;
// the same Engine.IO and Socket.IO steps as loadgen.js), each process binding
// its client sockets to a loopback source address of its own (one source address to one server port allows about
// 28,000 ephemeral ports; each process stays under the 20,000 open files a process may have here).
// Each client binds an explicit source port too, counting up from --local-port-base: a bind to port 0 makes the
// kernel search for a free port (inet_csk_get_port) across the sockets of every source address, and past about
// 40,000 clients on the machine that search took the generators' CPU and capped the ramp near 300 connects/s.
// A port taken by something else (EADDRINUSE) is skipped, and the client tries the next one: counted, not failed.
//
//   node capgen.js --port P --n N --local-address 127.0.11.1 [--host 127.0.0.1] [--rate 333] [--inflight 100]
//                  [--deadline 600] [--start-at EPOCH_MS] [--progress 1] [--id 0] [--local-port-base 10000]
//                  [--client raw|ws]
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
const net = require('net');
const readline = require('readline');
const { performance } = require('perf_hooks');

const args = { port: 3000, host: '127.0.0.1', n: 100, rate: 1000, inflight: 100, deadline: 600, progress: 1, id: 0,
  'local-address': '', 'start-at': 0, 'local-port-base': 10000, client: 'raw' };
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

// A message is read as bytes, never decoded to a string: 200,000 messages of a broadcast decoded made most of the
// generators' garbage, and V8's collections of it took CPU the server under test needed (bench/CAPACITY.md).
const VERSION_KEY = Buffer.from('"version":');

function versionOf(buf, start, end) {
  const v = buf.lastIndexOf(VERSION_KEY, end - VERSION_KEY.length);
  if (v < start) return -1;
  let i = v + VERSION_KEY.length, n = 0, digits = 0;
  while (i < end && buf[i] === 32) i++;
  while (i < end && digits < 15 && buf[i] >= 48 && buf[i] <= 57) { n = n * 10 + buf[i] - 48; i++; digits++; }
  return digits ? n : -1;
}

function record(c, ns, buf, start, end, at) {
  const version = versionOf(buf, start, end);
  if (version < 0) return;
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

// What a client does with one Engine.IO packet (a text frame's payload, buf[start:end]), whichever client carries it.
function onPacket(c, buf, start, end, at) {
  if (end <= start) return;
  const ch = buf[start];
  if (ch === 52 /* '4' */) {
    const t1 = buf[start + 1];
    if (t1 === 50 /* '42' event */) {
      record(c, buf[start + 2] === 47 /* '42/gameplay,...': the only other namespace */ ? 1 : 0, buf, start, end, at);
    } else if (t1 === 48 /* '40' connect */) {
      if (++c.joined === 2) joinedOne(c, at);
    } else if (t1 === 52 /* '44' refused */) {
      c.kill();
    }
  } else if (ch === 50 /* '2' ping */) {
    pings++;
    c.send(PONG);
  } else if (ch === 48 /* '0' open */) {
    c.send(JOIN);
  }
}

function joinedOne(c, at) {
  if (c.timer) { clearTimeout(c.timer); c.timer = null; }
  joined++;
  inflight--;
  c.done = true;
  lastJoinAt = at;
  if (joined + failed === args.n) ready(); else pump();
}

// A client's connection ended: a joined client was disconnected (unless quitting), one still joining failed, or
// the source port it was given was taken (it tries again from the next one).
function ended(c, reason, code) {
  if (c.done) {
    if (!c.quitting) { disconnected++; count(closeCodes, String(code)); }
    return;
  }
  c.done = true;
  inflight--;
  if (reason === 'EADDRINUSE' && c.localPort && portsSkipped < MAX_PORT_SKIPS) {
    portsSkipped++; // the port is someone else's: the same client again, from the next port
    started--;
    setImmediate(connectOne);
    return;
  }
  failed++;
  count(failReasons, reason || `close ${code}`);
  if (joined + failed === args.n) ready(); else pump();
}

function connectOne() {
  inflight++;
  started++;
  const c = { joined: 0, done: false, v: [0, 0], localPort: 0, timer: null, send: null, kill: null, isOpen: null };
  if (args['local-address'] && nextPort <= 65535) c.localPort = nextPort++; // past the last port: the kernel picks
  if (args.client === 'ws') wsClient(c); else rawClient(c);
  clients.push(c);
}

// --client raw (the default): a TCP socket that speaks the websocket protocol by hand. A server's frames are parsed
// where they land in one read buffer the process reuses, and nothing is allocated per message unless a frame is
// split between reads: the `ws` package's client took about twice the CPU, and that CPU is the server's on a machine
// with 2 cores.
const MASK = Buffer.alloc(4); // a client's frames must be masked; the key is not a secret here (all zeros)
const masked = (text) => Buffer.concat([Buffer.from([0x81, 0x80 | text.length]), MASK, Buffer.from(text)]);
// JOIN and PONG are what onPacket hands to c.send (the ws client sends the same texts through its own framing)
const JOIN = Buffer.concat([masked('40'), masked('40/gameplay,')]);
const PONG = masked('3');
const CLOSE_RAW = Buffer.from([0x88, 0x82, 0, 0, 0, 0, 0x03, 0xe8]); // close 1000
const WS_PONG_RAW = Buffer.from([0x8a, 0x80, 0, 0, 0, 0]); // the answer to a websocket-level ping
const HANDSHAKE = Buffer.from(`GET /socket.io/?EIO=4&transport=websocket HTTP/1.1\r\nHost: ${args.host}:${args.port}\r\n`
  + 'Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n'
  + 'Sec-WebSocket-Version: 13\r\n\r\n');
const HEAD_END = Buffer.from('\r\n\r\n');
const READ_BUFFER = Buffer.alloc(256 * 1024);

function rawClient(c) {
  const options = { host: args.host, port: args.port };
  if (args['local-address']) options.localAddress = args['local-address'];
  if (c.localPort) options.localPort = c.localPort;
  // every read lands in one buffer the process reuses (net's onread): no Buffer per read for V8 to collect
  options.onread = { buffer: READ_BUFFER, callback: (nread, buffer) => { onData(buffer.subarray(0, nread)); } };
  const sock = net.connect(options);
  let head = true, rest = null, reason = null, closeCode = 1006;
  sock.setNoDelay(true);
  c.timer = setTimeout(() => { reason = reason || 'handshake timeout'; sock.destroy(); }, 30000); // joinedOne clears it
  c.send = (frame) => sock.write(frame);
  c.kill = () => sock.destroy();
  c.isOpen = () => !sock.destroyed && !head;
  sock.on('connect', () => sock.write(HANDSHAKE));
  function onData(chunk) {
    const at = now();
    let buf = rest ? Buffer.concat([rest, chunk]) : chunk;
    rest = null;
    let o = 0;
    if (head) {
      const e = buf.indexOf(HEAD_END);
      if (e < 0) { rest = Buffer.from(buf); return; } // a copy: the read buffer is reused
      if (buf.toString('latin1', 0, 12) !== 'HTTP/1.1 101') {
        reason = `http ${buf.toString('latin1', 9, 12)}`;
        sock.destroy();
        return;
      }
      head = false;
      o = e + 4;
    }
    const n = buf.length;
    while (o + 2 <= n) {
      const b0 = buf[o];
      let len = buf[o + 1] & 0x7f, h = 2;
      if (len === 126) { if (o + 4 > n) break; len = buf.readUInt16BE(o + 2); h = 4; }
      else if (len === 127) { if (o + 10 > n) break; len = Number(buf.readBigUInt64BE(o + 2)); h = 10; }
      if (o + h + len > n) break;
      const op = b0 & 0x0f;
      if (op === 1) onPacket(c, buf, o + h, o + h + len, at);
      else if (op === 8) { closeCode = len >= 2 ? buf.readUInt16BE(o + h) : 1005; sock.end(CLOSE_RAW); }
      else if (op === 9) sock.write(WS_PONG_RAW);
      o += h + len;
    }
    if (o < n) rest = Buffer.from(buf.subarray(o)); // a split frame waits for the rest (a copy: the buffer is reused)
  }
  sock.on('error', (err) => { reason = reason || err.code || err.message || 'error'; });
  sock.on('close', () => {
    clearTimeout(c.timer);
    ended(c, reason, closeCode);
  });
}

// --client ws: the `ws` package's client, as before (a cross-check of the raw one).
function wsClient(c) {
  const options = { perMessageDeflate: false, handshakeTimeout: 30000 };
  if (args['local-address']) options.localAddress = args['local-address'];
  if (c.localPort) options.localPort = c.localPort;
  const ws = new WebSocket(url, options);
  c.send = (frame) => {
    if (frame === PONG) ws.send('3');
    else { ws.send('40'); ws.send('40/gameplay,'); } // JOIN
  };
  c.kill = () => ws.terminate();
  c.isOpen = () => ws.readyState === WebSocket.OPEN;
  ws.on('message', (buf, isBinary) => { if (!isBinary) onPacket(c, buf, 0, buf.length, now()); });
  let reason = null;
  ws.on('error', (err) => { reason = reason || (err && (err.code || err.message)) || 'error'; });
  ws.on('unexpected-response', (req, res) => { reason = `http ${res.statusCode}`; ws.terminate(); });
  ws.on('close', (code) => ended(c, reason, code));
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
  for (const c of clients) if (c.joined === 2 && c.isOpen()) open++;
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
    for (const c of clients) { c.done = true; c.quitting = true; try { c.kill(); } catch (e) { /* gone */ } }
    setTimeout(() => process.exit(0), 100);
  }
});
process.stdin.on('end', () => process.exit(0));
setTimeout(start, Math.max(0, args['start-at'] - now()));
