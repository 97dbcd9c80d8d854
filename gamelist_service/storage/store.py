"""The only Redis code: key names, the list write (version + SET ... EX in one script), sessions, users, pub/sub."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Mapping
from typing import Any

from redis import Redis as SyncRedis
from redis.asyncio import Redis
from redis.asyncio.client import PubSub
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff
from redis.exceptions import RedisError

from ..errors import FencedError, StoreError
from .urls import connect, redact_url

__all__ = ['CURRENT_LIST_KEY', 'UPDATES_CHANNEL', 'Store', 'redact_url', 'update_message', 'write_list_sync']

CURRENT_LIST_KEY = 'gamelist:current'
SESSION_KEY_PREFIX = 'session:'
USER_KEY_PREFIX = 'user:'
VERSION_KEY_SUFFIX = ':version'  # gamelist:current:version, INCR'd on every write of gamelist:current
UPDATES_CHANNEL = 'gamelist:updates'  # every process of every instance broadcasts what arrives here

logger = logging.getLogger('gamelist_service.storage.store')

LEADER_KEY = 'gamelist:leader'  # "<identity>|<epoch>" of the process that runs the schedules, with a lease (PX)
LEADER_EPOCH_KEY = 'gamelist:leader:epoch'  # INCR'd on every new lease: the fencing token
SCHEDULE_KEY_PREFIX = 'gamelist:schedule:'  # hash per schedule: def (its definition's hash), runs, last (wall time)

# INCR the version and SET the list with it in one atomic step, so the stored list always carries the
# highest version and two writers can never leave an older list behind a newer version number.
# With a third key (the leader key) and a fourth argument (the lease value), the write is fenced: a process
# that lost its lease (paused, partitioned) cannot write any more; it gets -1 and nothing changes.
# The STRLEN after the SET is a second use of the new key: under the embedded Redis's volatile-lfu policy a list
# then ranks above keys written once (a flood of user: keys), which are evicted first.
_WRITE_LIST_LUA = """
if #KEYS >= 3 and redis.call('GET', KEYS[3]) ~= ARGV[4] then
  return -1
end
local version = redis.call('INCR', KEYS[2])
local body = ARGV[1] .. version .. '}'
if ARGV[3] == 'ms' then
  redis.call('SET', KEYS[1], body, 'PX', ARGV[2])
else
  redis.call('SET', KEYS[1], body, 'EX', ARGV[2])
end
redis.call('STRLEN', KEYS[1])
return version
"""

# Take the lease if nobody holds it; the value carries a new epoch (fencing token). Returns the epoch or 0.
_ACQUIRE_LUA = """
if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then
  local epoch = redis.call('INCR', KEYS[2])
  redis.call('SET', KEYS[1], ARGV[1] .. '|' .. epoch, 'PX', ARGV[2])
  return epoch
end
return 0
"""

# Extend the lease only if it is still ours; 1 if renewed, 0 if lost.
_RENEW_LUA = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0
"""

_RELEASE_LUA = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
"""

# Claim the next run of a schedule, fenced by the lease: -1 if the caller no longer leads, -2 if max_runs is
# reached, else the run's number. A changed definition starts the count again.
_CLAIM_RUN_LUA = """
if redis.call('GET', KEYS[2]) ~= ARGV[1] then
  return -1
end
if redis.call('HGET', KEYS[1], 'def') ~= ARGV[2] then
  redis.call('DEL', KEYS[1])
  redis.call('HSET', KEYS[1], 'def', ARGV[2], 'runs', 0)
end
local runs = tonumber(redis.call('HGET', KEYS[1], 'runs') or '0')
if tonumber(ARGV[4]) > 0 and runs >= tonumber(ARGV[4]) then
  return -2
end
redis.call('HSET', KEYS[1], 'runs', runs + 1, 'last', ARGV[3])
return runs + 1
"""


def _ignore(operation: str) -> None:
    pass


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _ms(seconds: float) -> int:
    return max(1, round(seconds * 1000))


def dumps(data: Any) -> str:
    return json.dumps(data, separators=(',', ':'), ensure_ascii=False)


def write_list_args(data: Mapping[str, Any], ttl_s: float) -> tuple[dict[str, Any], str, int, str]:
    """For _WRITE_LIST_LUA: the list without version, the JSON the script completes with it, the TTL and its unit."""
    body = {k: v for k, v in data.items() if k != 'version'}
    prefix = dumps(body)[:-1] + (',"version":' if body else '"version":')
    integral = float(ttl_s).is_integer()
    ttl_arg, unit = (int(ttl_s), 's') if integral else (max(1, round(ttl_s * 1000)), 'ms')
    return body, prefix, ttl_arg, unit


def write_list_sync(client: SyncRedis, key: str, data: Mapping[str, Any], ttl_s: float) -> dict[str, Any]:
    """The list write of Store.write_list (version + SET ... EX, one script), for a synchronous redis-py client
    (GameListUpdater); returns the data as written, with its version. Raises redis-py's errors."""
    body, prefix, ttl_arg, unit = write_list_args(data, ttl_s)
    version = int(client.eval(_WRITE_LIST_LUA, 2, key, key + VERSION_KEY_SUFFIX, prefix, ttl_arg, unit))
    logger.info(
        'Redis SET %s (ttl %s%s, version %d, %d games)', key, ttl_arg, unit, version, len(body.get('gamelist', []))
    )
    return {**body, 'version': version}


def update_message(list_name: str, data: Mapping[str, Any]) -> str:
    """What is published on UPDATES_CHANNEL when list_name was written."""
    return dumps({'list': list_name, 'data': data})


class Store:
    """Typed access to the keys of the wire contract, over one redis-py asyncio connection pool."""

    def __init__(self, url: str, *, timeout_s: float = 5.0) -> None:
        self.url = url
        self.redis: Redis = connect(
            url,
            socket_connect_timeout=min(timeout_s, 2.0),
            socket_timeout=timeout_s,
            health_check_interval=30,
            retry=Retry(ExponentialBackoff(cap=0.5, base=0.05), retries=2),
        )
        self.on_error: Callable[[str], None] = _ignore  # the app counts failures per operation in its metrics
        self._write_list = self.redis.register_script(_WRITE_LIST_LUA)
        self._acquire = self.redis.register_script(_ACQUIRE_LUA)
        self._renew = self.redis.register_script(_RENEW_LUA)
        self._release = self.redis.register_script(_RELEASE_LUA)
        self._claim_run = self.redis.register_script(_CLAIM_RUN_LUA)

    def _error(self, action: str, exc: Exception) -> StoreError:
        self.on_error(action.split()[0])
        return StoreError(f'Redis at {redact_url(self.url)} failed to {action}: {exc}', url=redact_url(self.url))

    async def ping(self) -> float:
        """Round-trip time of a PING, in seconds."""
        started = time.perf_counter()
        try:
            await self.redis.ping()
        except (RedisError, OSError) as exc:
            raise self._error('answer PING', exc) from exc
        return time.perf_counter() - started

    async def write_list(
        self, key: str, data: Mapping[str, Any], ttl_s: float, *, fence: str | None = None
    ) -> dict[str, Any]:
        """Store a list under key with its TTL and a new version; returns the data as stored (with version).

        :param fence: the lease value of the leader writing on a schedule; the write is refused (FencedError)
            unless that lease is still held.
        """
        body, prefix, ttl_arg, unit = write_list_args(data, ttl_s)
        keys = [key, key + VERSION_KEY_SUFFIX]
        args: list[str | int] = [prefix, ttl_arg, unit]
        if fence is not None:
            keys.append(LEADER_KEY)
            args.append(fence)
        try:
            version = int(await self._write_list(keys=keys, args=args))
        except (RedisError, OSError) as exc:
            raise self._error(f'SET {key}', exc) from exc
        if version < 0:
            raise FencedError(f'refused to write {key}: this process no longer holds the scheduler lease')
        logger.info(
            'Redis SET %s (ttl %s%s, version %d, %d games, %d bytes)',
            key,
            ttl_arg,
            unit,
            version,
            len(body.get('gamelist', [])),
            len(prefix) + len(str(version)) + 1,
        )
        return {**body, 'version': version}

    async def read_list(self, key: str) -> dict[str, Any] | None:
        """The list stored under key, or None when it has expired or was never written."""
        try:
            raw = await self.redis.get(key)
        except (RedisError, OSError) as exc:
            raise self._error(f'GET {key}', exc) from exc
        logger.debug('Redis GET %s (%s)', key, 'miss' if raw is None else f'{len(raw)} bytes')
        if raw is None:
            return None
        try:
            loaded = json.loads(raw)
        except ValueError as exc:
            raise StoreError(f'{key} in Redis does not hold JSON: {exc}') from exc
        if not isinstance(loaded, dict):
            raise StoreError(f'{key} in Redis does not hold a JSON object')
        return loaded

    async def list_version(self, key: str) -> int:
        """The version of the last write of key (0 if never written)."""
        try:
            raw = await self.redis.get(key + VERSION_KEY_SUFFIX)
        except (RedisError, OSError) as exc:
            raise self._error(f'GET {key}{VERSION_KEY_SUFFIX}', exc) from exc
        return int(raw or 0)

    async def ttl(self, key: str) -> float:
        """Seconds left before key expires; -1 without expiry, -2 when missing."""
        try:
            ms = int(await self.redis.pttl(key))
        except (RedisError, OSError) as exc:
            raise self._error(f'PTTL {key}', exc) from exc
        return ms / 1000 if ms >= 0 else float(ms)

    async def save_session(self, session_id: str, data: Mapping[str, Any], ttl_s: float) -> str:
        return await self._set_json(SESSION_KEY_PREFIX + session_id, data, ttl_s)

    async def save_user(self, user_id: str, data: Mapping[str, Any], ttl_s: float) -> str:
        return await self._set_json(USER_KEY_PREFIX + user_id, data, ttl_s)

    async def _set_json(self, key: str, data: Mapping[str, Any], ttl_s: float) -> str:
        try:
            await self.redis.set(key, dumps(data), px=max(1, round(ttl_s * 1000)))
        except (RedisError, OSError) as exc:
            raise self._error(f'SET {key}', exc) from exc
        logger.info('Redis SET %s (ttl %ss)', key, f'{ttl_s:g}')
        return key

    async def publish_update(self, list_name: str, data: Mapping[str, Any]) -> int:
        """Tell every running process that list_name changed; returns how many subscribers heard it."""
        message = update_message(list_name, data)
        try:
            receivers = int(await self.redis.publish(UPDATES_CHANNEL, message))
        except (RedisError, OSError) as exc:
            raise self._error(f'PUBLISH {UPDATES_CHANNEL}', exc) from exc
        logger.debug(
            'Redis PUBLISH %s list=%s version=%s receivers=%d',
            UPDATES_CHANNEL,
            list_name,
            data.get('version'),
            receivers,
        )
        return receivers

    async def acquire_lease(self, identity: str, lease_s: float) -> str | None:
        """Take the scheduler lease if it is free; returns the lease value (with its fencing epoch) or None."""
        try:
            epoch = int(await self._acquire(keys=[LEADER_KEY, LEADER_EPOCH_KEY], args=[identity, _ms(lease_s)]))
        except (RedisError, OSError) as exc:
            raise self._error(f'SET {LEADER_KEY} NX', exc) from exc
        return f'{identity}|{epoch}' if epoch else None

    async def renew_lease(self, value: str, lease_s: float) -> bool:
        """Extend the lease if it is still ours."""
        try:
            return bool(await self._renew(keys=[LEADER_KEY], args=[value, _ms(lease_s)]))
        except (RedisError, OSError) as exc:
            raise self._error(f'PEXPIRE {LEADER_KEY}', exc) from exc

    async def release_lease(self, value: str) -> None:
        try:
            await self._release(keys=[LEADER_KEY], args=[value])
        except (RedisError, OSError) as exc:
            raise self._error(f'DEL {LEADER_KEY}', exc) from exc

    async def leader(self) -> str | None:
        try:
            raw = await self.redis.get(LEADER_KEY)
        except (RedisError, OSError) as exc:
            raise self._error(f'GET {LEADER_KEY}', exc) from exc
        return None if raw is None else _text(raw)

    async def claim_run(self, schedule: str, definition: str, fence: str, now_wall: float, max_runs: int) -> int:
        """Record a schedule's next run under the lease: its number, -1 if the lease is lost, -2 past max_runs."""
        try:
            return int(
                await self._claim_run(
                    keys=[SCHEDULE_KEY_PREFIX + schedule, LEADER_KEY], args=[fence, definition, now_wall, max_runs]
                )
            )
        except (RedisError, OSError) as exc:
            raise self._error(f'HSET {SCHEDULE_KEY_PREFIX}{schedule}', exc) from exc

    async def schedule_state(self, schedule: str, definition: str) -> tuple[int, float | None]:
        """(runs, wall time of the last run) of a schedule, as all leaders so far recorded them."""
        try:
            raw = await self.redis.hgetall(SCHEDULE_KEY_PREFIX + schedule)
        except (RedisError, OSError) as exc:
            raise self._error(f'HGETALL {SCHEDULE_KEY_PREFIX}{schedule}', exc) from exc
        state = {_text(k): _text(v) for k, v in raw.items()}
        if state.get('def') != definition:
            return 0, None
        last = state.get('last')
        return int(state.get('runs', 0)), float(last) if last else None

    def pubsub(self) -> PubSub:
        return self.redis.pubsub(ignore_subscribe_messages=True)

    async def server_info(self) -> dict[str, Any]:
        try:
            info: dict[str, Any] = await self.redis.info('server')
        except (RedisError, OSError) as exc:
            raise self._error('answer INFO', exc) from exc
        return info

    async def close(self) -> None:
        await self.redis.aclose()
        manager = getattr(self.redis.connection_pool, 'sentinel_manager', None)  # a Sentinel URL: its own clients
        for sentinel in getattr(manager, 'sentinels', ()):
            await sentinel.aclose()
