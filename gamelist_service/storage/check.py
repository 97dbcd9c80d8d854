"""The Redis check (the prototype's redis_test.py): ping, a set/get round trip, a TTL, the server's version, latency.

`gamelist-service check` prints it; GameListUpdater.check_redis() returns it as the prototype's tuples.
"""

from __future__ import annotations

import asyncio
import statistics
import time
import uuid
from collections.abc import Coroutine
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, TypeVar

from ..errors import GamelistError
from .embedded import version_warning
from .store import Store

T = TypeVar('T')


@dataclass(frozen=True, slots=True)
class Step:
    name: str
    passed: bool
    detail: str


async def check_redis(url: str, *, pings: int = 20, timeout_s: float = 3.0) -> list[Step]:
    """Each step of the check, in order; a Redis that fails gives one last step named 'redis' saying how."""
    store = Store(url, timeout_s=timeout_s)
    key = f'gamelist:check:{uuid.uuid4().hex}'
    steps: list[Step] = []
    try:
        latency = await store.ping()
        steps.append(Step('ping', True, f'PONG in {latency * 1000:.2f} ms'))
        value = uuid.uuid4().hex
        started = time.perf_counter()
        await store.redis.set(key, value, ex=10)
        got = await store.redis.get(key)
        elapsed_ms = (time.perf_counter() - started) * 1000
        steps.append(Step('set/get', got in (value, value.encode()), f'{key} round trip in {elapsed_ms:.2f} ms'))
        ttl = await store.ttl(key)
        steps.append(Step('ttl', 0 < ttl <= 10, f'{ttl:.1f}s left of 10s'))
        await store.redis.delete(key)
        info = await store.server_info()
        version = str(info.get('redis_version', '?'))
        binary = str(info['executable']) if info.get('executable') else None  # a managed Redis may not say
        detail = f'redis {version} ({info.get("redis_mode", "?")} mode), {binary or "binary not reported"}'
        warning = version_warning(version, binary)
        steps.append(Step('version', True, f'{detail}; WARNING: {warning}' if warning else detail))
        if pings:
            samples = [await store.ping() * 1000 for _ in range(pings)]
            detail = f'median {statistics.median(samples):.3f} ms, max {max(samples):.3f} ms over {pings} pings'
            steps.append(Step('latency', True, detail))
    except GamelistError as exc:
        steps.append(Step('redis', False, exc.message))
    finally:
        await store.close()
    return steps


def run_sync(coro: Coroutine[Any, Any, T]) -> T:
    """Run a coroutine to its end from synchronous code, in a thread of its own when this one runs an event loop."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coro)
    with ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(asyncio.run, coro).result()
