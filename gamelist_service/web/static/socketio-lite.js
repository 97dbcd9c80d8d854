// A small Socket.IO v5 client (Engine.IO v4, WebSocket transport only) for the live page.
//
// It speaks exactly what python-socketio/python-engineio speak (see their packet.py):
//   Engine.IO packet = one WebSocket text frame: a type digit, then the payload.
//     0 open {"sid", "pingInterval", "pingTimeout", ...}   1 close   2 ping -> we answer 3 pong   4 message
//   Socket.IO packet = the payload of an Engine.IO message (4): a type digit, the namespace and a comma
//   unless it is "/", an ack id if any, then JSON.
//     0 CONNECT (client: auth object; server: {"sid"})   1 DISCONNECT   2 EVENT ["name", data...]
//     3 ACK [data...]   4 CONNECT_ERROR {"message"}   (5/6 binary: not used by this service, ignored)
//   e.g. 40/gameplay,{"token":"t"}   42/gameplay,["game_list:updated",{...}]   42/gameplay,7["main:screen"]
//   and the server's answer to that last one: 43/gameplay,7[{...}]
//
// One instance holds one connection to one namespace. It reconnects with capped, jittered backoff
// after the transport drops (not after a disconnect the user or the server asked for, nor after a
// CONNECT_ERROR, which retrying would not fix), asking `auth()` again each time so the page can send
// {"since": lastVersion}.

const EIO = { OPEN: '0', CLOSE: '1', PING: '2', PONG: '3', MESSAGE: '4' };
const SIO = { CONNECT: 0, DISCONNECT: 1, EVENT: 2, ACK: 3, CONNECT_ERROR: 4, BINARY_EVENT: 5, BINARY_ACK: 6 };

export const STATES = Object.freeze({
  IDLE: 'disconnected',
  CONNECTING: 'connecting',
  CONNECTED: 'connected',
  RECONNECTING: 'reconnecting',
  FAILED: 'failed',
});

/** Encode one Socket.IO packet as the text of an Engine.IO message frame. */
export function encodePacket(type, namespace, data, id) {
  let out = EIO.MESSAGE + String(type);
  if (namespace && namespace !== '/') out += namespace + ',';
  if (id !== undefined && id !== null) out += String(id);
  if (data !== undefined) out += JSON.stringify(data);
  return out;
}

/** Decode the payload of an Engine.IO message (without its leading "4") into {type, namespace, id, data}. */
export function decodePacket(text) {
  const type = Number(text[0]);
  let rest = text.slice(1);
  const dash = rest.indexOf('-');
  if (dash > 0 && /^\d+$/.test(rest.slice(0, dash))) rest = rest.slice(dash + 1); // binary attachment count
  let namespace = '/';
  if (rest.startsWith('/')) {
    const comma = rest.indexOf(',');
    namespace = comma === -1 ? rest : rest.slice(0, comma);
    rest = comma === -1 ? '' : rest.slice(comma + 1);
    const query = namespace.indexOf('?');
    if (query !== -1) namespace = namespace.slice(0, query);
  }
  const digits = /^\d{1,15}/.exec(rest);
  const id = digits ? Number(digits[0]) : null;
  if (digits) rest = rest.slice(digits[0].length);
  const data = rest ? JSON.parse(rest) : undefined;
  return { type, namespace, id, data };
}

export class SocketIOLite {
  /**
   * @param {object} options
   * @param {string} [options.url]  base http(s) URL of the server; the page's own origin by default
   * @param {string} [options.path]  Socket.IO endpoint path
   * @param {string} options.namespace  "/" or "/gameplay" ...
   * @param {() => object|undefined} [options.auth]  called before every (re)connect; its result is the CONNECT payload
   * @param {number} [options.maxAttempts]  reconnection attempts before giving up
   * @param {number} [options.ackTimeoutMs]  how long emitWithAck waits for the server
   */
  constructor({
    url = window.location.origin,
    path = '/socket.io/',
    namespace = '/',
    auth = () => undefined,
    maxAttempts = 60,
    ackTimeoutMs = 10000,
  } = {}) {
    const base = new URL(path, url);
    base.protocol = base.protocol === 'https:' ? 'wss:' : 'ws:';
    base.search = '?EIO=4&transport=websocket';
    this.endpoint = base.toString();
    this.namespace = namespace.startsWith('/') ? namespace : '/' + namespace;
    this.auth = auth;
    this.maxAttempts = maxAttempts;
    this.ackTimeoutMs = ackTimeoutMs;
    this.state = STATES.IDLE;
    this.sid = null;
    this.attempts = 0;
    this.ws = null;
    this.wanted = false; // the user wants a connection: reconnect when the transport drops
    this.nextAckId = 0;
    this.acks = new Map(); // id -> {resolve, reject, timer}
    this.handlers = new Map(); // event -> Set(fn)
    this.pingTimer = null;
    this.retryTimer = null;
    this.opened = false;
  }

  /** Listen to a server event, or to one of: state, connect, connect_error, disconnect, any, packet. */
  on(event, fn) {
    if (!this.handlers.has(event)) this.handlers.set(event, new Set());
    this.handlers.get(event).add(fn);
    return this;
  }

  _fire(event, ...args) {
    for (const fn of this.handlers.get(event) || []) {
      try {
        fn(...args);
      } catch (err) {
        console.error(`handler of ${event} failed`, err);
      }
    }
  }

  _setState(state, detail) {
    this.state = state;
    this._fire('state', state, detail);
  }

  get connected() {
    return this.state === STATES.CONNECTED;
  }

  connect() {
    this.wanted = true;
    this.attempts = 0;
    clearTimeout(this.retryTimer);
    this._open(STATES.CONNECTING);
  }

  disconnect() {
    this.wanted = false;
    clearTimeout(this.retryTimer);
    if (this.ws && this.ws.readyState === WebSocket.OPEN && this.connected) {
      this._send(encodePacket(SIO.DISCONNECT, this.namespace));
    }
    this._teardown('client disconnect');
    this._setState(STATES.IDLE, 'client disconnect');
  }

  /** Send an event without waiting for an answer. */
  emit(event, ...args) {
    this._requireConnected();
    this._send(encodePacket(SIO.EVENT, this.namespace, [event, ...args]));
  }

  /** Send an event with an ack id; resolves with the server's answer (its first argument). */
  emitWithAck(event, ...args) {
    this._requireConnected();
    const id = this.nextAckId++;
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        this.acks.delete(id);
        reject(new Error(`no answer to ${event} within ${this.ackTimeoutMs} ms`));
      }, this.ackTimeoutMs);
      this.acks.set(id, { resolve, reject, timer });
      this._send(encodePacket(SIO.EVENT, this.namespace, [event, ...args], id));
    });
  }

  _requireConnected() {
    if (!this.connected) throw new Error(`not connected to ${this.namespace}`);
  }

  _send(text) {
    this._fire('packet', 'out', text);
    this.ws.send(text);
  }

  _open(state) {
    this._teardown();
    this._setState(state, this.attempts ? `attempt ${this.attempts}` : undefined);
    this.opened = false;
    const ws = new WebSocket(this.endpoint);
    this.ws = ws;
    ws.onmessage = (msg) => {
      if (this.ws === ws) this._onFrame(msg.data);
    };
    ws.onclose = (ev) => {
      if (this.ws !== ws) return;
      let reason = `transport closed (code ${ev.code}${ev.reason ? ', ' + ev.reason : ''})`;
      if (!this.opened) {
        // the browser hides why a handshake failed; a refused Origin is the usual cause when the server is up
        const origin = window.location.origin;
        reason = `could not open the WebSocket: server down, or ${origin} not in server.cors_allowed_origins`;
      }
      this._dropped(reason);
    };
    ws.onerror = () => {}; // onclose follows with the details we have
  }

  _onFrame(text) {
    if (typeof text !== 'string' || text.length === 0) return; // binary frames: not used by this service
    const kind = text[0];
    const body = text.slice(1);
    if (kind === EIO.PING) {
      this._armPingWatchdog();
      this.ws.send(EIO.PONG + body);
      return;
    }
    this._fire('packet', 'in', text);
    if (kind === EIO.OPEN) {
      const open = JSON.parse(body);
      this.opened = true;
      this.pingInterval = open.pingInterval;
      this.pingTimeout = open.pingTimeout;
      this._armPingWatchdog();
      const auth = this.auth();
      this._send(encodePacket(SIO.CONNECT, this.namespace, auth === undefined ? undefined : auth));
    } else if (kind === EIO.CLOSE) {
      this._dropped('server closed the transport');
    } else if (kind === EIO.MESSAGE) {
      this._onPacket(decodePacket(body));
    }
  }

  _onPacket(packet) {
    if (packet.namespace !== this.namespace) return;
    switch (packet.type) {
      case SIO.CONNECT:
        this.sid = packet.data && packet.data.sid;
        this.attempts = 0;
        this._setState(STATES.CONNECTED, this.sid);
        this._fire('connect', this.sid);
        break;
      case SIO.CONNECT_ERROR: {
        // {"message": ...} as Socket.IO v5 says; python-socketio sends a bare string for an unknown namespace
        const data = packet.data;
        const message = typeof data === 'string' ? data : (data && data.message) || JSON.stringify(data);
        this.wanted = false; // a refused CONNECT (bad token, unknown namespace) is not fixed by retrying
        this._teardown('connect_error');
        this._setState(STATES.FAILED, message);
        this._fire('connect_error', message, packet.data);
        break;
      }
      case SIO.EVENT:
        if (Array.isArray(packet.data) && packet.data.length > 0) {
          const [event, ...args] = packet.data;
          this._fire('any', event, ...args);
          this._fire(event, ...args);
        }
        break;
      case SIO.ACK: {
        const pending = this.acks.get(packet.id);
        if (pending) {
          clearTimeout(pending.timer);
          this.acks.delete(packet.id);
          pending.resolve(Array.isArray(packet.data) ? packet.data[0] : packet.data);
        }
        break;
      }
      case SIO.DISCONNECT:
        this.wanted = false; // the server asked us to leave: do not come back on our own
        this._teardown('server disconnect');
        this._setState(STATES.IDLE, 'server disconnect');
        this._fire('disconnect', 'server disconnect');
        break;
      default:
        console.warn('ignored Socket.IO packet of type', packet.type);
    }
  }

  _armPingWatchdog() {
    clearTimeout(this.pingTimer);
    // Engine.IO v4: the server pings every pingInterval; silence for longer than interval + timeout means a dead link
    const limit = (this.pingInterval || 25000) + (this.pingTimeout || 20000);
    this.pingTimer = setTimeout(() => this._dropped(`no ping from the server for ${limit} ms`), limit);
  }

  _teardown(reason) {
    clearTimeout(this.pingTimer);
    const ws = this.ws;
    this.ws = null;
    this.sid = null;
    if (ws) {
      ws.onmessage = ws.onclose = ws.onerror = null;
      if (ws.readyState === WebSocket.OPEN || ws.readyState === WebSocket.CONNECTING) ws.close(1000);
    }
    for (const [id, pending] of this.acks) {
      clearTimeout(pending.timer);
      pending.reject(new Error(`connection closed before the answer (${reason || 'closed'})`));
      this.acks.delete(id);
    }
  }

  _dropped(reason) {
    const wasConnected = this.connected;
    this._teardown(reason);
    if (wasConnected) this._fire('disconnect', reason);
    if (!this.wanted) {
      this._setState(STATES.IDLE, reason);
      return;
    }
    if (this.attempts >= this.maxAttempts) {
      this.wanted = false;
      this._setState(STATES.FAILED, `gave up after ${this.attempts} attempts: ${reason}`);
      return;
    }
    this.attempts += 1;
    const delay = Math.min(5000, 250 * 2 ** (this.attempts - 1)) * (0.75 + Math.random() * 0.5);
    this._setState(STATES.RECONNECTING, `${reason}; retrying in ${(delay / 1000).toFixed(1)} s`);
    this.retryTimer = setTimeout(() => this._open(STATES.RECONNECTING), delay);
  }
}
