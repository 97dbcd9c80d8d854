"""The latest list of each name in memory, keyed by version, so main:screen does not GET it from Redis every time.

Filled from the updates this process broadcasts (every write of every instance is published on gamelist:updates) and
from reads of Redis. An entry never outlives the list's key in Redis: it expires with the TTL, counted from the
list's updated_at (written before the key) or, after a read, from Redis's PTTL, less a safety margin. A newer version
is never replaced by an older one, so a late read cannot undo an update that arrived meanwhile; the service drops
the entry when an older version is broadcast (versions start again in an emptied or restarted Redis), so Redis is
read next. What it cannot see is a key deleted by hand before its TTL: that is served from memory until the TTL would
have ended.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from ..config.settings import ListSettings
from ..errors import StoreError
from ..metrics import LIST_CACHE
from ..storage.store import Store

logger = logging.getLogger('gamelist_service.core.listcache')
_HIT = LIST_CACHE.labels('hit')
_MISS = LIST_CACHE.labels('miss')

MAX_MARGIN_S = 1.0  # an entry expires this much (at most 10 % of the TTL) before the key in Redis


@dataclass(frozen=True, slots=True)
class Entry:
    key: str
    version: int
    data: dict[str, Any]
    expires: float  # on the cache's monotonic clock


class ListCache:
    """List name -> the newest version seen, until its TTL runs out."""

    def __init__(self, clock: Callable[[], float] = time.monotonic, wall: Callable[[], float] = time.time) -> None:
        self._clock = clock
        self._wall = wall
        self._entries: dict[str, Entry] = {}

    def get(self, lst: ListSettings) -> dict[str, Any] | None:
        entry = self._entries.get(lst.name)
        if entry is None or entry.key != lst.key or self._clock() >= entry.expires:
            _MISS.inc()
            return None
        _HIT.inc()
        return entry.data

    def clear(self) -> None:
        self._entries.clear()

    def discard(self, name: str) -> None:
        self._entries.pop(name, None)

    def version(self, name: str) -> int | None:
        entry = self._entries.get(name)
        return None if entry is None else entry.version

    def remember(self, lst: ListSettings, data: dict[str, Any], ttl_left_s: float | None = None) -> bool:
        """Keep data unless a newer version is held; ttl_left_s defaults to the list's TTL from its updated_at."""
        version = data.get('version')
        if not isinstance(version, int) or isinstance(version, bool):
            return False
        held = self._entries.get(lst.name)
        if held is not None and held.key == lst.key and held.version > version:
            return False
        if ttl_left_s is None:
            ttl_left_s = lst.ttl_s
            written = _epoch(data.get('updated_at'))
            if written is not None:
                ttl_left_s = min(ttl_left_s, written + lst.ttl_s - self._wall())
        ttl_left_s -= min(MAX_MARGIN_S, lst.ttl_s * 0.1)
        if ttl_left_s <= 0:
            self._entries.pop(lst.name, None)
            return False
        self._entries[lst.name] = Entry(lst.key, version, data, self._clock() + ttl_left_s)
        return True

    async def fill(self, store: Store, lst: ListSettings, data: dict[str, Any]) -> None:
        """Keep a list just read from Redis, until its key's PTTL runs out."""
        try:
            left = await store.ttl(lst.key)
        except StoreError as exc:
            logger.debug('not caching %s: %s', lst.key, exc)
            return
        if left >= 0:  # -1 (no expiry) and -2 (gone meanwhile) are not cached
            self.remember(lst, data, left)


def _epoch(value: Any) -> float | None:
    if not isinstance(value, str):
        return None
    try:
        return datetime.fromisoformat(value).timestamp()
    except ValueError:
        return None
