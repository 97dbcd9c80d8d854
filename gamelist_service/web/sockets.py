"""Socket.IO: the server class and one AsyncNamespace subclass per configured namespace."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Iterable
from typing import Any, NoReturn

import jsonschema
import socketio

from .. import metrics, transport
from ..config.schema import schema
from ..config.settings import NamespaceSettings
from ..core.lists import MAIN_SCREEN_MESSAGE, envelope, list_data, utc_now_iso
from ..core.service import GamelistService
from ..errors import GamelistError, ListExpired, error_body
from ..producers.validation import validate_push
from ..transport import POLICY_VIOLATION, GamelistServer, ack_requested
from .auth import AuthRefused, authenticate, secrets_equal
from .limits import TOO_MANY_CONNECTIONS, ConnectionLimiter, socket_ceiling
from .origins import OriginPolicy, quiet_engineio

logger = logging.getLogger('gamelist_service.web.sockets')

DEVICE_INFO_SCHEMA = 'device_info.schema.json'
DEVICE_INFO_MAX_BYTES = 4096
DEFAULT_TRANSPORTS = ('polling', 'websocket')
CATCH_UP_REUSE_S = 1.0  # how long the envelope of the list sent on connect is reused

COMPUTED_FIELDS = frozenset(('updated_at', 'cache_duration', 'total_games', 'active_games', 'total_players', 'version'))
INVALID_PRODUCER_TOKEN = 'invalid producer token'
NOT_A_PRODUCER = (
    'game_list:updated is accepted only from producers: connect with auth {"producer_token": ...} '
    '(see producers in the service configuration)'
)


def error_ack(message: str) -> dict[str, Any]:
    return error_body(message)


class GameNamespace(socketio.AsyncNamespace):  # type: ignore[misc]
    """Handlers of one namespace: main:screen, device:info, and the connect-time list."""

    def __init__(self, settings: NamespaceSettings, service: GamelistService) -> None:
        super().__init__(settings.name)
        self.settings = settings
        self.service = service
        self.clients: set[str] = set()
        self.joined = 0  # clients that connected to this namespace so far (the periodic summary's figures)
        self.left = 0
        self.users: dict[str, str] = {}  # sid -> the user its JWT names (auth mode jwt)
        self.producers: set[str] = set()  # sids that may send game_list:updated
        self._expiry: dict[str, asyncio.TimerHandle] = {}  # sid -> the end of its JWT's validity
        self._catch_up: tuple[dict[str, Any], str, float, dict[str, Any]] | None = None
        self._catch_ups: dict[str, int | None] = {}  # sid -> its since, for after_connect
        self._tasks: set[asyncio.Task[None]] = set()
        self._connected_gauge = metrics.CONNECTED_CLIENTS.labels(self.namespace)
        self._device_validator = jsonschema.Draft202012Validator(schema(DEVICE_INFO_SCHEMA))
        self._known_device_fields = frozenset(schema(DEVICE_INFO_SCHEMA)['properties'])

    async def trigger_event(self, event: str, *args: Any) -> Any:
        """Route 'main:screen' to on_main_screen; unknown events get an error ack; no exception reaches the client.

        Events were counted against the client's rate where they arrived (guards.Gate), before this.
        """
        if event == 'connect':
            return await self._connect(*args)
        handler = getattr(self, 'on_' + event.replace(':', '_'), None) if isinstance(event, str) else None
        if handler is None or event.startswith('_') or '__' in event:
            logger.info('unknown event %r from %s on %s', event, args[0] if args else '?', self.namespace)
            return error_ack(f'unknown event {str(event)[:64]!r}')
        try:
            return await handler(*args)
        except socketio.exceptions.ConnectionRefusedError:
            raise
        except GamelistError as exc:
            logger.error('event %s on %s failed: %s', event, self.namespace, exc)
            return error_ack(exc.message if exc.status_code < 500 else 'the game list is unavailable right now')
        except Exception:
            logger.exception('event %s on %s failed unexpectedly', event, self.namespace)
            return error_ack('internal error')

    async def _connect(self, sid: str, environ: dict[str, Any], auth: Any = None) -> bool:
        """on_connect, failing closed: an unexpected error refuses the client with a generic message."""
        try:
            return await self.on_connect(sid, environ, auth)
        except Exception as exc:  # noqa: BLE001 - _connect_failed refuses the client for any of them
            self._connect_failed(sid, exc)

    def admit(self, sid: str, environ: dict[str, Any], auth: Any = None) -> bool:
        """_connect without awaiting (on_connect never waits): transport/ calls it where a namespace CONNECT arrives
        (transport/connect.py) while this class's connect handling is as written here."""
        try:
            return self.accept(sid, environ, auth)
        except Exception as exc:  # noqa: BLE001 - _connect_failed refuses the client for any of them
            self._connect_failed(sid, exc)

    def _connect_failed(self, sid: str, exc: Exception) -> NoReturn:
        """A refusal is counted (limits.max_refused_connects); anything else is logged and refused as 'internal error'."""
        if isinstance(exc, socketio.exceptions.ConnectionRefusedError):
            self._refused(sid)
            raise exc
        logger.error('connect of %s to %s failed unexpectedly', sid, self.namespace, exc_info=exc)
        raise socketio.exceptions.ConnectionRefusedError('internal error') from None

    def _refused(self, sid: str) -> None:
        eio_sid = self.server.manager.eio_sid_from_sid(sid, self.namespace)
        if eio_sid is not None and isinstance(self.server, GamelistServer):
            self.server.connect_refused(eio_sid)

    async def on_connect(self, sid: str, environ: dict[str, Any], auth: Any = None) -> bool:
        return self.accept(sid, environ, auth)

    def accept(self, sid: str, environ: dict[str, Any], auth: Any = None) -> bool:
        """A client joins: the limits, its auth and producer token, the bookkeeping; ConnectionRefusedError refuses
        it. The list due on connect is only noted here: after_connect sends it, once the CONNECT packet is out."""
        limiter: ConnectionLimiter | None = getattr(self.server, 'limiter', None)
        eio_sid = self.server.manager.eio_sid_from_sid(sid, self.namespace) if limiter is not None else None
        if limiter is not None and eio_sid is not None and limiter.over_cap(eio_sid):
            logger.warning(
                'client %s refused on %s: %s holds %d connections (limit %d)',
                sid,
                self.namespace,
                limiter.address.get(eio_sid),
                limiter.connections(eio_sid),
                limiter.limits().max_connections_per_ip,
            )
            raise socketio.exceptions.ConnectionRefusedError(TOO_MANY_CONNECTIONS)
        try:
            claims = authenticate(self.settings.auth, environ, auth)
        except AuthRefused as exc:
            logger.warning('client %s refused on %s: %s', sid, self.namespace, exc.reason)
            raise socketio.exceptions.ConnectionRefusedError(exc.message) from None
        producer = self._producer(sid, auth, claims)
        if claims and eio_sid is not None:
            self._hold_claims(sid, eio_sid, claims)
        if producer:
            self.producers.add(sid)
        if eio_sid is not None and isinstance(self.server, GamelistServer):
            self.server.joined(eio_sid)
        self.clients.add(sid)
        self._connected_gauge.inc()
        self.joined += 1
        since = auth.get('since') if isinstance(auth, dict) else None
        logger.debug('client %s connected to %s (%d clients)', sid, self.namespace, len(self.clients))
        if self.settings.send_list_on_connect or (isinstance(since, int) and not isinstance(since, bool)):
            self._catch_ups[sid] = since  # sent by after_connect, once the CONNECT packet is out
        return True

    async def after_connect(self, sid: str) -> None:
        """Right after the CONNECT packet went out (transport.GamelistServer calls it): the list, if it is due."""
        if sid in self._catch_ups:
            await self._send_current(sid, self._catch_ups.pop(sid))

    def after_connect_now(self, sid: str) -> bool:
        """after_connect when it needs no wait: True when it is done (nothing due, or the list held in memory
        written to the client now); False: nothing done, after_connect must run."""
        catch_ups = self._catch_ups
        if sid not in catch_ups:
            return True
        lst = self.service.settings.get_list(self.settings.list)
        data = self.service.cached(lst.name)
        if data is None:
            return False  # not in memory (or maybe expired): after_connect reads it, or finds it expired
        if self._up_to_date(data, catch_ups[sid]):
            del catch_ups[sid]
            return True
        if not transport.emit_now(
            self.server, lst.event, self._catch_up_envelope(data, lst.event), self.namespace, sid
        ):
            return False
        del catch_ups[sid]
        return True

    def _producer(self, sid: str, auth: Any, claims: dict[str, Any]) -> bool:
        """Whether this client may send game_list:updated; a wrong producer token refuses the connect."""
        producers = self.service.settings.producers
        token = auth.get('producer_token') if isinstance(auth, dict) else None
        if token is not None:
            if not (isinstance(token, str) and producers.token and secrets_equal(token, producers.token)):
                logger.warning('client %s refused on %s: wrong producer token', sid, self.namespace)
                raise socketio.exceptions.ConnectionRefusedError(INVALID_PRODUCER_TOKEN)
            return True
        if producers.jwt_claim is None or not claims:
            return False
        name, value = producers.jwt_claim
        held = claims.get(name)
        return held == value or (isinstance(held, list) and value in held)

    def _hold_claims(self, sid: str, eio_sid: str, claims: dict[str, Any]) -> None:
        """A JWT client: remember its user, and end its session when the token expires (it reconnects with a new
        one, as socket.io clients do after a transport close)."""
        jwt = self.settings.auth.jwt
        assert jwt is not None  # claims come only from a JWT
        user = claims.get(jwt.user_claim)
        if isinstance(user, (str, int)) and not isinstance(user, bool):
            self.users[sid] = str(user)
        exp = claims.get('exp')
        if isinstance(exp, (int, float)):
            loop = asyncio.get_running_loop()
            delay = max(0.0, float(exp) + jwt.leeway_s - time.time())
            self._expiry[sid] = loop.call_later(delay, self._expired, sid, eio_sid)

    def _expired(self, sid: str, eio_sid: str) -> None:
        self._expiry.pop(sid, None)
        if isinstance(self.server, GamelistServer):
            logger.info('client %s on %s: its token expired; closing its connection', sid, self.namespace)
            self.server._spawn(self.server.end_session(eio_sid, POLICY_VIOLATION, 'token expired'))

    async def on_disconnect(self, sid: str, reason: str | None = None) -> None:
        if sid in self.clients:
            self.clients.discard(sid)
            self.left += 1
            self._connected_gauge.dec()
        self.users.pop(sid, None)
        self.producers.discard(sid)
        self._catch_ups.pop(sid, None)
        expiry = self._expiry.pop(sid, None)
        if expiry is not None:
            expiry.cancel()
        logger.debug('client %s left %s (%s; %d clients)', sid, self.namespace, reason, len(self.clients))

    async def _send_current(self, sid: str, since: int | None) -> None:
        try:
            lst = self.service.settings.get_list(self.settings.list)
            try:
                data = await self.service.current(lst.name)
            except ListExpired:
                return  # nothing to send: no producer has sent a list lately
            if self._up_to_date(data, since):
                return
            await self.emit(lst.event, self._catch_up_envelope(data, lst.event), to=sid)
        except Exception as exc:  # noqa: BLE001 - a background task: log, never raise into the loop
            logger.error('could not send the current list to %s on %s: %s', sid, self.namespace, exc)

    def _up_to_date(self, data: dict[str, Any], since: int | None) -> bool:
        """The client came back with auth.since naming this version: nothing to send (unless send_list_on_connect)."""
        return since is not None and not self.settings.send_list_on_connect and int(data.get('version', 0)) == since

    def _catch_up_envelope(self, data: dict[str, Any], event: str) -> dict[str, Any]:
        """The envelope of the list sent on connect: one object per list version and second, so that a reconnect
        storm of 10,000 clients encodes it once a second, not 10,000 times (the timestamp says when it was made)."""
        held = self._catch_up
        now = time.monotonic()
        if held is None or held[0] is not data or held[1] != event or now - held[2] >= CATCH_UP_REUSE_S:
            held = self._catch_up = (data, event, now, envelope(data, event))
        return held[3]

    async def on_main_screen(self, sid: str, *args: Any) -> dict[str, Any] | None:
        try:
            data = await self.service.current(self.settings.list)
            reply = envelope(data, 'main:screen', MAIN_SCREEN_MESSAGE)
        except ListExpired as exc:  # a list fed by producers, expired: an error envelope, never invented games
            logger.info('main:screen on %s: %s', self.namespace, exc.message)
            reply = error_body(exc.message, timestamp=utc_now_iso(), event='main:screen')
        if ack_requested():
            return reply
        await self.emit('main:screen', reply, to=sid)
        return None

    async def on_game_list_updated(self, sid: str, payload: Any = None, *extra: Any) -> dict[str, Any]:
        """A producer's list (the prototype's updater sent it this way): validated like a PUT, written with a new
        version, broadcast. Anyone else gets an error ack."""
        if sid not in self.producers:
            return error_ack(NOT_A_PRODUCER)
        if extra:
            return error_ack('game_list:updated takes one object')
        games = validate_push(_push_body(payload))  # GameListInvalid: an error ack naming each bad field
        lst = self.service.settings.get_list(self.settings.list)
        stored = await self.service.write_and_announce(lst, list_data(games, lst.ttl_s))
        logger.info(
            'producer %s on %s wrote list %s: version %s, %d games',
            sid,
            self.namespace,
            lst.name,
            stored['version'],
            len(games),
        )
        return {
            'status': 'success',
            'message': 'Game list has been updated',
            'version': stored['version'],
            'total_games': stored['total_games'],
        }

    async def on_device_info(self, sid: str, payload: Any = None, *extra: Any) -> dict[str, Any]:
        if extra:
            return error_ack('device:info takes one object')
        if not isinstance(payload, dict):
            return error_ack(f'device:info must be an object, not {_json_type(payload)}')
        size = len(json.dumps(payload, separators=(',', ':'), default=str).encode())
        if size > DEVICE_INFO_MAX_BYTES:
            return error_ack(f'device:info is {size} bytes; at most {DEVICE_INFO_MAX_BYTES} are accepted')
        known = {key: value for key, value in payload.items() if key in self._known_device_fields}
        ignored = sorted(str(key) for key in payload if key not in self._known_device_fields)
        errors = sorted(self._device_validator.iter_errors(known), key=lambda e: list(map(str, e.absolute_path)))
        if errors:
            first = errors[0]
            where = '.'.join(str(p) for p in first.absolute_path) or 'payload'
            return error_ack(f'{where}: {_short(first.message)}')
        refused = self._user_refused(sid, known.get('user_id'))
        if refused is not None:
            return error_ack(refused)
        settings = self.service.settings.redis
        session = {'session_id': sid, 'namespace': self.namespace, 'device': known, 'updated_at': utc_now_iso()}
        await self.service.store.save_session(sid, session, settings.session_ttl_s)
        if 'user_id' in known:
            user = {'user_id': known['user_id'], 'session_id': sid, 'device': known, 'last_seen': utc_now_iso()}
            await self.service.store.save_user(known['user_id'], user, settings.user_ttl_s)
        reply: dict[str, Any] = {'status': 'success'}
        if ignored:
            reply['ignored'] = ignored
        return reply

    def _user_refused(self, sid: str, user_id: str | None) -> str | None:
        """Why this connection may not write user:{user_id}, or None (then it is bound to that user).

        One connection speaks for one user: the first user_id it names, and with JWT auth the token's own.
        """
        if user_id is None:
            return None
        token_user = self.users.get(sid)
        if self.settings.auth.mode == 'jwt' and token_user != user_id:
            claim = self.settings.auth.jwt.user_claim if self.settings.auth.jwt else 'sub'
            return f"user_id must be your token's {claim}"
        server = self.server
        eio_sid = server.manager.eio_sid_from_sid(sid, self.namespace)
        if not isinstance(server, GamelistServer) or eio_sid is None:
            return None
        bound = server.users.setdefault(eio_sid, user_id)
        if bound != user_id:
            return 'this connection already speaks for another user_id'
        return None


def _push_body(payload: Any) -> Any:
    """What a producer sent, as a PUT body: {"gamelist": [...]}. The prototype's updater sent the whole data object
    (or the envelope around it): the fields the service computes are dropped, as it computes them again."""
    if isinstance(payload, dict) and isinstance(payload.get('data'), dict) and 'gamelist' not in payload:
        payload = payload['data']
    if isinstance(payload, dict):
        return {key: value for key, value in payload.items() if key not in COMPUTED_FIELDS}
    return payload


def _json_type(value: Any) -> str:
    return {
        list: 'an array',
        str: 'a string',
        int: 'a number',
        float: 'a number',
        bool: 'a boolean',
        type(None): 'null',
        bytes: 'binary data',
    }.get(type(value), type(value).__name__)


def _short(message: str, limit: int = 160) -> str:
    return message if len(message) <= limit else message[: limit - 3] + '...'


def _limiter(service: GamelistService, trust_forwarded_for: bool) -> ConnectionLimiter:
    """Limits per address and session, and the process's ceiling of client sockets (its open-file limit)."""
    limiter = ConnectionLimiter(lambda: service.settings.limits, trust_forwarded_for)
    limiter.socket_ceiling = socket_ceiling()
    return limiter


def create_server(service: GamelistService, async_mode: str) -> GamelistServer:
    """The AsyncServer with the config's CORS origins, transports and pings, and a namespace per config entry."""
    server = service.settings.server
    sio = transport.create_server(
        fast_path=server.fast_path,
        async_mode=async_mode,
        cors_allowed_origins=OriginPolicy(server.cors_allowed_origins, server.trust_forwarded_for),
        transports=list(server.transports or DEFAULT_TRANSPORTS),
        ping_interval=server.ping_interval_s,
        ping_timeout=server.ping_timeout_s,
        max_http_buffer_size=server.max_http_buffer_size,
        logger=False,
        engineio_logger=False,
        # limits read on each use: a reload applies at once
        limiter=_limiter(service, server.trust_forwarded_for),
        connect_timeout_s=server.connect_timeout_s,
    )
    quiet_engineio(sio.eio.logger)
    for ns in service.settings.namespaces:
        sio.register_namespace(GameNamespace(ns, service))
    return sio


def apply_namespaces(
    sio: socketio.AsyncServer, service: GamelistService, namespaces: Iterable[NamespaceSettings]
) -> None:
    """After a reload: existing namespaces take their new settings, new ones start accepting clients."""
    for ns in namespaces:
        handler = sio.namespace_handlers.get(ns.name)
        if isinstance(handler, GameNamespace):
            handler.settings = ns
        else:
            sio.register_namespace(GameNamespace(ns, service))
            logger.info('namespace %s added', ns.name)


class ClientSummary:
    """One INFO line every period about the clients that joined and left (per-client lines are DEBUG): a storm of
    10,000 reconnects reads as one line, not 20,000."""

    def __init__(self, sio: socketio.AsyncServer) -> None:
        self.sio = sio
        self.last: tuple[int, int] = self.counts()

    def counts(self) -> tuple[int, int]:
        handlers = [h for h in self.sio.namespace_handlers.values() if isinstance(h, GameNamespace)]
        return sum(h.joined for h in handlers), sum(h.left for h in handlers)

    def line(self, period_s: float) -> str | None:
        """The summary since the last call, or None when nobody joined or left."""
        now = self.counts()
        joined, left = now[0] - self.last[0], now[1] - self.last[1]
        self.last = now
        if not joined and not left:
            return None
        per_namespace = ', '.join(
            f'{name} {len(h.clients)}'
            for name, h in self.sio.namespace_handlers.items()
            if isinstance(h, GameNamespace)
        )
        return (
            f'clients in the last {period_s:g}s: {joined} joined, {left} left; now {len(self.sio.eio.sockets)} '
            f'connections ({per_namespace})'
        )

    async def run(self, period_s: float = 10.0) -> None:
        while True:
            await asyncio.sleep(period_s)
            line = self.line(period_s)
            if line is not None:
                logger.info('%s', line)


async def emit_to_namespace(sio: socketio.AsyncServer, event: str, data: dict[str, Any], namespace: str) -> int:
    """Broadcast to every client of namespace in this process; returns how many there are."""
    handler = sio.namespace_handlers.get(namespace)
    count = len(handler.clients) if isinstance(handler, GameNamespace) else 0
    await sio.emit(event, data, namespace=namespace)
    return count
