"""GameListUpdater: the prototype's synchronous Python API (its interactive menu is menu.py).

It writes a list the way the service does (version + SET ... EX in one script) and publishes it on the updates
channel; every running `serve` broadcasts it to its clients. Without a config file it uses the prototype's defaults.
"""

from __future__ import annotations

import logging
import math
import random
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from types import TracebackType
from typing import Any, Self

import redis
import socketio
from redis.backoff import ExponentialBackoff
from redis.exceptions import RedisError
from redis.retry import Retry

from ..config.loader import load_settings
from ..config.settings import GameTemplate, ListSettings, PlayerCounts
from ..core.lists import game_entry, list_data, utc_now_iso
from ..errors import GamelistError, PayloadError, StoreError
from ..storage.check import check_redis, run_sync
from ..storage.instances import resolve_redis_url
from ..storage.store import CURRENT_LIST_KEY, UPDATES_CHANNEL, redact_url, update_message, write_list_sync
from .templates import as_templates
from .validation import FieldError, GameListInvalid, validate_games

logger = logging.getLogger('gamelist_service.producers.updater')

DEFAULT_REDIS_HOST = '127.0.0.1'
DEFAULT_REDIS_PORT = 6379
DEFAULT_SOCKETIO_URL = 'http://localhost:3000'
DEFAULT_INTERVAL_S = 30.0
DEFAULT_LIST = ListSettings(
    name='current',
    key=CURRENT_LIST_KEY,
    ttl_s=300.0,
    games=('game_1', 'game_2', 'game_3', 'game_4', 'game_5'),
    event='game_list:updated',
    namespaces=('/', '/gameplay'),
)

# (id, name, type, min, max, status, active range); the same games config/games.yaml ships
_DEFAULT_GAMES: tuple[tuple[str, str, str, int, int, Any, tuple[int, int]], ...] = (
    ('game_1', 'Poker', 'card', 2, 8, 'active', (5000, 20000)),
    ('game_2', 'Blackjack', 'card', 1, 7, 'active', (2000, 12000)),
    ('game_3', 'Roulette', 'casino', 1, 10, 'active', (1000, 8000)),
    ('game_4', 'Chess', 'board', 2, 2, 'maintenance', (0, 0)),
    ('game_5', 'Battle Royale', 'action', 10, 100, 'coming_soon', (0, 0)),
)

# called after each update of continuous_updates: (update number, the data written or the error)
UpdateCallback = Callable[[int, 'dict[str, Any] | GamelistError'], None]


def default_templates(created_at: str | None = None) -> list[GameTemplate]:
    """The prototype's games: three active with simulated players, one in maintenance, one coming soon."""
    created_at = created_at or utc_now_iso()
    return [
        GameTemplate(
            id=game_id,
            name=name,
            type=kind,
            min_players=low,
            max_players=high,
            status=status,
            players=PlayerCounts('simulated', *active) if status == 'active' else PlayerCounts('fixed', 0, 0),
            created_at=created_at,
        )
        for game_id, name, kind, low, high, status, active in _DEFAULT_GAMES
    ]


class GameListUpdater:
    """The prototype's GameListUpdater: write the game list to Redis with a TTL and have running services broadcast it.

    Without config, the prototype's defaults: Redis at redis_host:redis_port, list gamelist:current with a 300 s
    TTL, the five default games, event game_list:updated to / and /gameplay (list name 'current').
    :param socketio_url: the service; used with producer_token (else notifications go through Redis).
    :param producer_token: the producers' secret (producers.token_env in the service's config): then the list is sent
        as game_list:updated over Socket.IO to socketio_url, and the service validates, writes and broadcasts it,
        as the prototype's Go server rebroadcast it. Without it, the list is written to Redis and published there.
    :param redis_url: a Redis URL, instead of redis_host and redis_port (or the config's Redis).
    :param config: a configuration file: templates, key, TTL and Redis come from it (its first list, or list_name).
    """

    def __init__(
        self,
        redis_host: str = DEFAULT_REDIS_HOST,
        redis_port: int = DEFAULT_REDIS_PORT,
        socketio_url: str = DEFAULT_SOCKETIO_URL,
        *,
        redis_url: str | None = None,
        config: Path | str | None = None,
        list_name: str | None = None,
        timeout_s: float = 5.0,
        producer_token: str | None = None,
    ) -> None:
        self.socketio_url = socketio_url
        self.producer_token = producer_token
        self.timeout_s = timeout_s
        self.rng = random.Random()
        if config is not None:
            settings = load_settings(config)
            try:
                self.list = settings.get_list(list_name) if list_name else settings.lists[0]
            except KeyError:
                names = ', '.join(lst.name for lst in settings.lists)
                raise GamelistError(f'no list named {list_name!r} in {settings.source}; lists: {names}') from None
            self.game_templates: list[GameTemplate | Mapping[str, Any]] = list(settings.templates_for(self.list))
            if redis_url is None:
                redis_url = resolve_redis_url(settings, None, None)  # the config's, or a running serve's embedded one
        else:
            self.list = replace(DEFAULT_LIST, name=list_name) if list_name else DEFAULT_LIST
            self.game_templates = list(default_templates())
        self.redis_url = redis_url or f'redis://{redis_host}:{redis_port}/0'
        self.redis: redis.Redis = redis.Redis.from_url(
            self.redis_url,
            socket_connect_timeout=min(timeout_s, 2.0),
            socket_timeout=timeout_s,
            retry=Retry(ExponentialBackoff(cap=0.5, base=0.05), retries=2),
        )
        self.last_receivers = 0
        if producer_token:
            logger.info(
                'GameListUpdater: list %s sent as a producer to %s (the service writes and broadcasts it)',
                self.list.name,
                socketio_url,
            )
        else:
            logger.info(
                'GameListUpdater: Redis %s, list %s (%s, ttl %gs); running services broadcast what is published on '
                '%s (socketio_url %s is used only with producer_token)',
                redact_url(self.redis_url),
                self.list.name,
                self.list.key,
                self.list.ttl_s,
                UPDATES_CHANNEL,
                socketio_url,
            )

    # -- the prototype's API -------------------------------------------------------------------------------------

    def generate_game_list(self) -> list[dict[str, Any]]:
        """A fresh list from the templates (GameTemplates, or dicts as the prototype took), with simulated players."""
        return [game_entry(template, self.rng) for template in as_templates(self.game_templates)]

    def update_game_list_in_redis(
        self, custom_games: Sequence[Mapping[str, Any]] | None = None, cache_duration: float | None = None
    ) -> dict[str, Any]:
        """Write the list (custom_games, else generated) with a TTL and a new version; returns the data written.

        Custom games are validated first (GameListInvalid names each bad field); fields left out get defaults.
        This only writes; clients are told by send_game_list_update_notification (update_and_notify does both).
        :param cache_duration: TTL in seconds; default the list's (300 s without a config).
        """
        ttl_s = self.list.ttl_s if cache_duration is None else _positive('cache_duration', cache_duration)
        if custom_games is None:
            games = self.generate_game_list()
        else:
            games = validate_games(custom_games, root='custom_games')
        try:
            return write_list_sync(self.redis, self.list.key, list_data(games, ttl_s), ttl_s)
        except (RedisError, OSError) as exc:
            raise self._error(f'SET {self.list.key}', exc) from exc

    def send_game_list_update_notification(self, game_list_data: Mapping[str, Any]) -> bool:
        """Have every running service broadcast game_list_data; True if at least one service process heard it.

        False means no service is subscribed (the list is in Redis, but no client was told); the count is in
        last_receivers. A Redis failure raises StoreError.
        """
        if not isinstance(game_list_data, Mapping) or not isinstance(game_list_data.get('gamelist'), list):
            raise PayloadError('game_list_data must be the object update_game_list_in_redis returned')
        if self.producer_token:
            self.send_as_producer(game_list_data['gamelist'])
            return True
        try:
            receivers = int(self.redis.publish(UPDATES_CHANNEL, update_message(self.list.name, game_list_data)))
        except (RedisError, OSError) as exc:
            raise self._error(f'PUBLISH {UPDATES_CHANNEL}', exc) from exc
        self.last_receivers = receivers
        if receivers:
            logger.info(
                'Game list update (version %s) sent to %d service process(es): %s to %s',
                game_list_data.get('version'),
                receivers,
                self.list.event,
                ', '.join(self.list.namespaces),
            )
        else:
            logger.warning(
                'no running gamelist-service is subscribed to %s: %s is stored but no client was told',
                UPDATES_CHANNEL,
                self.list.key,
            )
        return receivers > 0

    def update_and_notify(
        self, custom_games: Sequence[Mapping[str, Any]] | None = None, cache_duration: float | None = None
    ) -> dict[str, Any]:
        """Write the list and have running services broadcast it; returns the data written (with its version).

        With producer_token the service writes it (with the list's TTL; cache_duration does not apply) and broadcasts.
        """
        if self.producer_token:
            games = (
                self.generate_game_list() if custom_games is None else validate_games(custom_games, root='custom_games')
            )
            reply = self.send_as_producer(games)
            return {**list_data(games, self.list.ttl_s), 'version': reply['version']}
        data = self.update_game_list_in_redis(custom_games, cache_duration)
        self.send_game_list_update_notification(data)
        return data

    def send_as_producer(self, games: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
        """Send games as game_list:updated to socketio_url, as a producer; the service's ack (with the version).

        Raises StoreError when the service cannot be reached, PayloadError when it refuses the list (with its reason).
        """
        client = socketio.Client(reconnection=False)
        namespace = self.list.namespaces[0]
        refusals: list[Any] = []
        client.on('connect_error', lambda data=None: refusals.append(data), namespace=namespace)
        try:
            client.connect(
                self.socketio_url,
                namespaces=[namespace],
                transports=['websocket'],
                auth={'producer_token': self.producer_token},
                wait_timeout=self.timeout_s,
            )
            games_sent = {'gamelist': [dict(game) for game in games]}
            reply = client.call('game_list:updated', games_sent, namespace=namespace, timeout=self.timeout_s)
        except (socketio.exceptions.ConnectionError, socketio.exceptions.TimeoutError, OSError) as exc:
            why = refusals[-1].get('message') if refusals and isinstance(refusals[-1], dict) else exc
            raise StoreError(f'the service at {self.socketio_url} did not take the list: {why}') from exc
        finally:
            client.disconnect()
        if not isinstance(reply, dict) or reply.get('status') != 'success':
            message = reply.get('message') if isinstance(reply, dict) else reply
            raise PayloadError(f'the service at {self.socketio_url} refused the list: {message}')
        self.last_receivers = 1
        logger.info('Game list (version %s) sent to %s as game_list:updated', reply.get('version'), self.socketio_url)
        return reply

    def continuous_updates(
        self,
        interval: float = DEFAULT_INTERVAL_S,
        max_updates: int | None = None,
        *,
        on_update: UpdateCallback | None = None,
    ) -> int:
        """update_and_notify now and every interval seconds, max_updates times (None: until Ctrl-C).

        Returns how many updates succeeded. A failed update is logged (and passed to on_update) and the next one
        still runs; Ctrl-C (KeyboardInterrupt) stops the loop, as in the prototype.
        """
        interval_s = _positive('interval', interval)
        if max_updates is not None and (isinstance(max_updates, bool) or not isinstance(max_updates, int)):
            raise PayloadError(f'max_updates must be a whole number or None, not {max_updates!r}')
        if max_updates is not None and max_updates < 1:
            raise PayloadError(f'max_updates must be at least 1, not {max_updates}')
        started = time.monotonic()
        attempts = succeeded = 0
        try:
            while max_updates is None or attempts < max_updates:
                attempts += 1
                result: dict[str, Any] | GamelistError
                try:
                    result = self.update_and_notify()
                    succeeded += 1
                except StoreError as exc:
                    logger.error('update %d failed: %s; the next runs in %gs', attempts, exc.message, interval_s)
                    result = exc
                if on_update is not None:
                    on_update(attempts, result)
                if max_updates is not None and attempts >= max_updates:
                    break
                # anchored to the start, no drift; an update that overran skips the slots it missed
                slots = max(attempts, math.ceil((time.monotonic() - started) / interval_s))
                time.sleep(max(0.0, started + slots * interval_s - time.monotonic()))
        except KeyboardInterrupt:
            logger.info('continuous updates stopped by the user after %d update(s)', succeeded)
        return succeeded

    def check_redis(self) -> list[tuple[str, bool, str]]:
        """The prototype's redis_test.py: ping, set/get, TTL, server version, as (step, passed, detail)."""
        steps = run_sync(check_redis(self.redis_url, pings=0, timeout_s=self.timeout_s))
        return [(step.name, step.passed, step.detail) for step in steps]

    def test_redis_connection(self) -> bool:
        """True when Redis answers PING, a SET/GET round trip and a TTL; each step is logged."""
        results = self.check_redis()
        for step, passed, detail in results:
            (logger.info if passed else logger.error)(
                'Redis check %s: %s (%s)', step, 'ok' if passed else 'FAILED', detail
            )
        return all(passed for _, passed, _ in results)

    # -- lifecycle -----------------------------------------------------------------------------------------------

    def close(self) -> None:
        self.redis.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def _error(self, action: str, exc: Exception) -> StoreError:
        url = redact_url(self.redis_url)
        return StoreError(f'Redis at {url} failed to {action}: {exc}', url=url)


def _positive(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
        raise GameListInvalid([FieldError(name, f'must be a positive number of seconds, not {value!r}')])
    return float(value)
