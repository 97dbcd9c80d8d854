"""The only Redis code: key names, the list write (version + SET ... EX in one script), sessions, users, pub/sub."""

from __future__ import annotations

import json
import logging
import re
import time
from collections.abc import Mapping
from typing import Any

from redis.asyncio import Redis
from redis.asyncio.client import PubSub
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff
from redis.exceptions import RedisError

from .exceptions import StoreError

CURRENT_LIST_KEY = 'gamelist:current'
SESSION_KEY_PREFIX = 'session:'
USER_KEY_PREFIX = 'user:'
VERSION_KEY_SUFFIX = ':version'  # gamelist:current:version, INCR'd on every write of gamelist:current
UPDATES_CHANNEL = 'gamelist:updates'  # every process of every instance broadcasts what arrives here

logger = logging.getLogger('gamelist_service.store')

_PASSWORD_ARG_RE = re.compile(r'((?:^|&)password=)[^&]*', re.IGNORECASE)

# INCR the version and SET the list with it in one atomic step, so the stored list always carries the
# highest version and two writers can never leave an older list behind a newer version number.
_WRITE_LIST_LUA = """
local version = redis.call('INCR', KEYS[2])
local body = ARGV[1] .. version .. '}'
if ARGV[3] == 'ms' then
  redis.call('SET', KEYS[1], body, 'PX', ARGV[2])
else
  redis.call('SET', KEYS[1], body, 'EX', ARGV[2])
end
return version
"""


def dumps(data: Any) -> str:
    return json.dumps(data, separators=(',', ':'), ensure_ascii=False)


def redact_url(url: str) -> str:
    """A Redis URL fit for logs: the password (before the @ or as ?password=, which redis-py accepts) is replaced."""
    base, sep, query = url.partition('?')
    query = _PASSWORD_ARG_RE.sub(r'\1***', query)
    if '@' not in base or '://' not in base:
        return base + sep + query
    scheme, rest = base.split('://', 1)
    creds, host = rest.rsplit('@', 1)
    user = creds.split(':', 1)[0] if ':' in creds else ''
    return f'{scheme}://{user}:***@{host}{sep}{query}'


class Store:
    """Typed access to the keys of the wire contract, over one redis-py asyncio connection pool."""

    def __init__(self, url: str, *, timeout_s: float = 5.0) -> None:
        self.url = url
        self.redis: Redis = Redis.from_url(
            url,
            socket_connect_timeout=min(timeout_s, 2.0),
            socket_timeout=timeout_s,
            health_check_interval=30,
            retry=Retry(ExponentialBackoff(cap=0.5, base=0.05), retries=2),
        )
        self._write_list = self.redis.register_script(_WRITE_LIST_LUA)

    def _error(self, action: str, exc: Exception) -> StoreError:
        return StoreError(f'Redis at {redact_url(self.url)} failed to {action}: {exc}', url=redact_url(self.url))

    async def ping(self) -> float:
        """Round-trip time of a PING, in seconds."""
        started = time.perf_counter()
        try:
            await self.redis.ping()
        except (RedisError, OSError) as exc:
            raise self._error('answer PING', exc) from exc
        return time.perf_counter() - started

    async def write_list(self, key: str, data: Mapping[str, Any], ttl_s: float) -> dict[str, Any]:
        """Store a list under key with its TTL and a new version; returns the data as stored (with version)."""
        body = {k: v for k, v in data.items() if k != 'version'}
        prefix = dumps(body)[:-1] + (',"version":' if body else '"version":')
        integral = float(ttl_s).is_integer()
        ttl_arg, unit = (int(ttl_s), 's') if integral else (max(1, round(ttl_s * 1000)), 'ms')
        try:
            version = int(await self._write_list(keys=[key, key + VERSION_KEY_SUFFIX], args=[prefix, ttl_arg, unit]))
        except (RedisError, OSError) as exc:
            raise self._error(f'SET {key}', exc) from exc
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
        logger.info('Redis GET %s (%s)', key, 'miss' if raw is None else f'{len(raw)} bytes')
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
        message = dumps({'list': list_name, 'data': data})
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
