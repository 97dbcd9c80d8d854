// The live page: one Socket.IO connection, the game list as a table updated in place, and an event log.
import { SocketIOLite, STATES } from './socketio-lite.js';

const $ = (selector) => document.querySelector(selector);
const numbers = new Intl.NumberFormat();
const LOG_LIMIT = 200;
const STATUS_LABELS = { active: 'active', maintenance: 'maintenance', coming_soon: 'coming soon' };

// What the page has shown; exposed read-only as window.gamelistPage for debugging and tests.
const shown = { namespace: null, version: null, receivedAt: null, updatedAt: null, updatedAtRaw: null, games: 0 };
// Highest version received on the current connection: an ack read before a broadcast must not undo it.
let connectionVersion = null;
let client = null;
let agoTimer = null;

function fmt(value) {
  if (typeof value === 'number' && Number.isFinite(value)) return numbers.format(value);
  return value == null ? '–' : String(value);
}

function setText(el, text) {
  // only touch the DOM when the text changes, and flash what changed
  if (el.textContent === text) return false;
  const first = el.textContent === '' || el.textContent === '–';
  el.textContent = text;
  if (!first) flash(el);
  return true;
}

function flash(el) {
  el.classList.remove('flash');
  void el.offsetWidth; // restart the animation when the same cell changes twice in a row
  el.classList.add('flash');
}

// ---- log ----------------------------------------------------------------------------------------------------

function log(direction, title, payload, kind = '') {
  const item = document.createElement('li');
  item.className = `entry ${kind}`;
  const time = document.createElement('time');
  const now = new Date();
  time.textContent = `${now.toLocaleTimeString(undefined, { hour12: false })}.${String(now.getMilliseconds()).padStart(3, '0')}`;
  const arrow = document.createElement('span');
  arrow.className = 'dir';
  arrow.textContent = { in: '←', out: '→', info: '•' }[direction] || '•';
  arrow.title = { in: 'received', out: 'sent', info: 'page' }[direction] || '';
  const text = document.createElement('span');
  text.className = 'title';
  text.textContent = title;
  item.append(time, arrow, text);
  if (payload !== undefined) {
    const details = document.createElement('details');
    const summary = document.createElement('summary');
    summary.textContent = 'payload';
    const pre = document.createElement('pre');
    pre.textContent = JSON.stringify(payload, null, 2);
    details.append(summary, pre);
    item.append(details);
  }
  const list = $('#log');
  list.prepend(item);
  while (list.children.length > LOG_LIMIT) list.lastElementChild.remove();
}

// ---- the list -----------------------------------------------------------------------------------------------

function badge(status) {
  const span = document.createElement('span');
  span.className = `badge badge-${/^[a-z_]+$/.test(status) ? status : 'unknown'}`;
  span.textContent = STATUS_LABELS[status] || String(status);
  return span;
}

function makeRow(game) {
  const row = document.createElement('tr');
  row.dataset.gameId = game.game_id;
  for (const name of ['name', 'type', 'status', 'active', 'live', 'limits']) {
    const cell = document.createElement('td');
    cell.dataset.col = name;
    if (['active', 'live', 'limits'].includes(name)) cell.className = 'num';
    row.append(cell);
  }
  return row;
}

function fillRow(row, game) {
  const cell = (name) => row.querySelector(`td[data-col="${name}"]`);
  setText(cell('name'), String(game.game_name ?? game.game_id));
  cell('name').title = String(game.game_id);
  setText(cell('type'), String(game.game_type ?? '–'));
  const statusCell = cell('status');
  if (statusCell.dataset.status !== String(game.status)) {
    const changed = statusCell.dataset.status !== undefined;
    statusCell.dataset.status = String(game.status);
    statusCell.replaceChildren(badge(String(game.status)));
    if (changed) flash(statusCell);
  }
  setText(cell('active'), fmt(game.active_gamepalye)); // misspelt on purpose: the wire contract
  setText(cell('live'), fmt(game.livegameplaye));
  setText(cell('limits'), `${fmt(game.min_players)}–${fmt(game.max_players)}`);
}

function showList(data, source) {
  if (!data || !Array.isArray(data.gamelist)) {
    log('info', `${source}: no game list in the message`, data, 'warn');
    return false;
  }
  // Broadcasts arrive in order and always win (a lower version after a reconnect means the counter was reset,
  // e.g. a restarted Redis without persistence). Only an ack can be older than what this connection already got.
  const older = typeof data.version === 'number' && typeof connectionVersion === 'number' && data.version < connectionVersion;
  if (source === 'ack' && older) {
    log('info', `main:screen answer (version ${data.version}) is older than the shown ${connectionVersion}; kept the newer one`);
    return false;
  }
  if (typeof data.version === 'number') connectionVersion = Math.max(connectionVersion ?? data.version, data.version);
  const body = $('#games tbody');
  const rows = new Map([...body.rows].map((row) => [row.dataset.gameId, row]));
  const keep = new Set();
  data.gamelist.forEach((game, index) => {
    const id = String(game.game_id);
    keep.add(id);
    let row = rows.get(id);
    if (!row) {
      row = makeRow(game);
      rows.set(id, row);
    }
    fillRow(row, game);
    if (body.rows[index] !== row) body.insertBefore(row, body.rows[index] || null); // list order, moving only what moved
  });
  for (const [id, row] of rows) if (!keep.has(id)) row.remove();
  $('#empty').hidden = data.gamelist.length > 0;
  if (data.gamelist.length === 0) $('#empty').textContent = 'The list is empty.';

  setText($('#total-games'), fmt(data.total_games));
  setText($('#active-games'), fmt(data.active_games));
  setText($('#total-players'), fmt(data.total_players));
  setText($('#version'), fmt(data.version));
  const updated = data.updated_at ? new Date(data.updated_at) : null;
  const valid = updated && !Number.isNaN(updated.getTime());
  const when = { dateStyle: 'medium', timeStyle: 'medium', hour12: false };
  setText($('#updated-at'), valid ? updated.toLocaleString(undefined, when) : fmt(data.updated_at));
  $('#updated-at').title = data.updated_at || '';

  shown.version = typeof data.version === 'number' ? data.version : shown.version;
  shown.updatedAt = valid ? updated : null;
  shown.updatedAtRaw = data.updated_at || null;
  shown.receivedAt = Date.now();
  shown.games = data.gamelist.length;
  document.body.dataset.version = String(shown.version ?? '');
  tickAgo();
  return true;
}

function tickAgo() {
  clearTimeout(agoTimer);
  if (!shown.updatedAt) return;
  const seconds = Math.max(0, Math.round((Date.now() - shown.updatedAt.getTime()) / 1000));
  const minutes = Math.floor(seconds / 60);
  $('#updated-ago').textContent = minutes ? `${minutes} min ${seconds % 60} s ago` : `${seconds} s ago`;
  agoTimer = setTimeout(tickAgo, 1000);
}

// ---- connection ---------------------------------------------------------------------------------------------

function showState(state, detail) {
  $('#conn-state').textContent = state;
  $('#conn-dot').dataset.state = state;
  const connected = state === STATES.CONNECTED;
  $('#conn-detail').textContent = connected ? `${client.namespace} · sid ${detail}` : detail || '';
  const busy = connected || state === STATES.CONNECTING || state === STATES.RECONNECTING;
  $('#btn-connect').disabled = busy;
  $('#btn-disconnect').disabled = !busy;
  $('#namespace').disabled = busy;
  $('#token').disabled = busy;
  $('#btn-main-screen').disabled = !connected;
  $('#btn-device').disabled = !connected;
}

function authPayload() {
  const auth = {};
  const token = $('#token').value.trim();
  if (token) auth.token = token;
  if (typeof shown.version === 'number') auth.since = shown.version; // the service sends the list if it moved on
  return Object.keys(auth).length ? auth : undefined;
}

function connect() {
  const namespace = $('#namespace').value;
  if (namespace !== shown.namespace) {
    shown.version = null; // another namespace may carry another list
    shown.namespace = namespace;
  }
  const firstTime = shown.version === null;
  client = new SocketIOLite({ namespace, auth: authPayload });
  client.on('state', (state, detail) => {
    showState(state, detail);
    // one line per drop or failure, not one per attempt
    const worthLogging = state === STATES.FAILED || (state === STATES.RECONNECTING && /retrying/.test(detail || ''));
    if (worthLogging) log('info', `${state}: ${detail}`, undefined, 'warn');
  });
  client.on('connect', (sid) => {
    connectionVersion = null;
    const auth = authPayload();
    const shownAuth = auth && { auth: { ...auth, token: auth.token ? '***' : undefined } }; // never log the token
    log('info', `connected to ${namespace} (sid ${sid})`, shownAuth, 'ok');
    if (firstTime && shown.version === null) requestList();
  });
  client.on('connect_error', (message, data) => log('in', `connect_error: ${message}`, data, 'error'));
  client.on('disconnect', (reason) => log('info', `disconnected: ${reason}`, undefined, 'warn'));
  client.on('any', (event, ...args) => {
    const data = args[0];
    const version = data && data.data && data.data.version;
    log('in', `${event}${version !== undefined ? ` (version ${version})` : ''}`, args.length === 1 ? data : args);
    if (event === 'game_list:updated' || event === 'main:screen') showList(data && data.data, event);
  });
  client.connect();
}

async function requestList() {
  log('out', 'main:screen (with ack)');
  try {
    const reply = await client.emitWithAck('main:screen');
    const version = reply && reply.data && reply.data.version;
    const ok = reply && reply.status === 'success';
    const suffix = version !== undefined ? ` (version ${version})` : '';
    log('in', `ack main:screen: ${reply && reply.status}${suffix}`, reply, ok ? 'ok' : 'error');
    if (ok) showList(reply.data, 'ack');
  } catch (err) {
    log('info', `main:screen failed: ${err.message}`, undefined, 'error');
  }
}

function devicePayload(form) {
  const fields = new FormData(form);
  const payload = {};
  for (const name of ['device_id', 'platform', 'os_version', 'app_version', 'model', 'locale', 'user_id', 'user_agent']) {
    const value = String(fields.get(name) || '').trim();
    if (value) payload[name] = value;
  }
  const width = Number.parseInt(fields.get('width'), 10);
  const height = Number.parseInt(fields.get('height'), 10);
  if (Number.isInteger(width) && Number.isInteger(height)) payload.screen = { width, height };
  return payload;
}

async function sendDeviceInfo(event) {
  event.preventDefault();
  const payload = devicePayload(event.target);
  const result = $('#device-result');
  log('out', 'device:info (with ack)', payload);
  try {
    const reply = await client.emitWithAck('device:info', payload);
    const ok = reply && reply.status === 'success';
    const ignored = ok && reply.ignored ? `; ignored: ${reply.ignored.join(', ')}` : '';
    const outcome = ok ? ignored : `: ${reply && reply.message}`;
    log('in', `ack device:info: ${reply && reply.status}${outcome}`, reply, ok ? 'ok' : 'error');
    result.textContent = ok ? `stored${ignored}` : `refused: ${reply && reply.message}`;
    result.className = `small ${ok ? 'ok-text' : 'error-text'}`;
  } catch (err) {
    log('info', `device:info failed: ${err.message}`, undefined, 'error');
    result.textContent = err.message;
    result.className = 'small error-text';
  }
}

function prefillDevice() {
  const form = $('#device-form');
  form.elements.user_agent.value = navigator.userAgent.slice(0, 256);
  form.elements.locale.value = navigator.language || '';
  form.elements.width.value = String(window.screen.width || '');
  form.elements.height.value = String(window.screen.height || '');
  const platform = (navigator.userAgentData && navigator.userAgentData.platform) || navigator.platform || '';
  form.elements.os_version.value = platform.slice(0, 256);
}

function init() {
  $('#server-url').textContent = window.location.origin;
  prefillDevice();
  showState(STATES.IDLE);
  $('#connect-form').addEventListener('submit', (event) => {
    event.preventDefault();
    connect();
  });
  $('#btn-disconnect').addEventListener('click', () => {
    client.disconnect();
    log('info', 'disconnected by the page');
  });
  $('#btn-main-screen').addEventListener('click', requestList);
  $('#device-form').addEventListener('submit', sendDeviceInfo);
  $('#btn-clear-log').addEventListener('click', () => $('#log').replaceChildren());
  document.addEventListener('animationend', (event) => event.target.classList.remove('flash'));
  window.gamelistPage = Object.freeze({
    get version() {
      return shown.version;
    },
    get receivedAt() {
      return shown.receivedAt;
    },
    get updatedAt() {
      return shown.updatedAtRaw;
    },
    get state() {
      return client ? client.state : STATES.IDLE;
    },
  });
  // the page opens live: on the namespace the URL names (?ns=/gameplay), else /
  const wanted = new URLSearchParams(window.location.search).get('ns');
  const select = $('#namespace');
  if (wanted && /^\/[A-Za-z0-9_\-/]*$/.test(wanted)) {
    if (![...select.options].some((option) => option.value === wanted)) select.add(new Option(wanted, wanted));
    select.value = wanted;
  }
  log('info', `page loaded; connecting to ${select.value}`);
  connect();
}

init();
