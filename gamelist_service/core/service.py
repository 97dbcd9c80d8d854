"""The service's core: refresh a list (build, store, announce), and broadcast what is announced to local clients."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import random
import time
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

from redis.exceptions import RedisError

from .. import metrics
from ..config.settings import ListSettings, ScheduleSettings, Settings
from ..errors import FencedError, ListExpired, NotFromTemplates, StoreError
from ..storage.store import UPDATES_CHANNEL, Store, redact_url
from .leadership import Leadership, RedisLedger, process_identity
from .listcache import ListCache
from .lists import build_list, envelope
from .scheduler import Scheduler

logger = logging.getLogger('gamelist_service.core.service')

READ_TIMEOUT_S = 3.0  # main:screen and the connect-time list wait at most this long for Redis
RESUBSCRIBE_MAX_S = 5.0  # the longest backoff between attempts to subscribe to the updates again

# emit(event, data, namespace) -> number of local clients it went to
EmitFn = Callable[[str, dict[str, Any], str], Awaitable[int]]


class GamelistService:
    """One per process. The scheduler calls refresh(); every process broadcasts what arrives on the updates channel."""

    def __init__(
        self,
        settings: Settings,
        store: Store,
        emit: EmitFn,
        *,
        written: Callable[[], Awaitable[None]] | None = None,
        rng: random.Random | None = None,
        identity: str | None = None,
    ) -> None:
        self.settings = settings
        self.store = store
        self._emit = emit
        self._written = written  # returns once the emitted frames are written (see fastpath.FastAsyncManager)
        self._rng = rng or random.Random()
        self._locks: dict[str, asyncio.Lock] = {}
        self._loading: dict[str, asyncio.Task[dict[str, Any]]] = {}  # list name -> the read every caller awaits
        self._tasks: set[asyncio.Task[None]] = set()
        self.leadership = Leadership(
            store,
            identity or process_identity(settings.server.port),
            settings.leader_lease_s,
            on_gain=self._lead,
            on_loss=self._follow,
        )
        self.scheduler = Scheduler(self._scheduled, ledger=RedisLedger(store, self.leadership))
        self.redis_error: str | None = None
        self.listening = asyncio.Event()
        self.broadcasts = 0
        self.lists = ListCache()  # main:screen from memory, keyed by version, expiring with the TTL
        self._sent: dict[str, tuple[Any, Any]] = {}  # list name -> (version, updated_at) last broadcast here
        self._caught_up: dict[str, tuple[Any, Any]] = {}  # what _catch_up sent, until the next message of that list
        self._resubscribe = asyncio.Event()  # set to retry the updates subscription now, not after the backoff

    # -- producing ---------------------------------------------------------------------------------------------

    def _lock(self, list_name: str) -> asyncio.Lock:
        return self._locks.setdefault(list_name, asyncio.Lock())

    async def refresh(self, list_name: str, *, fence: str | None = None) -> dict[str, Any]:
        """Build the list from its templates, write it with its TTL and a new version, and announce it."""
        settings = self.settings  # one configuration for the whole tick, even if a reload lands meanwhile
        lst = settings.get_list(list_name)
        if lst.from_producers:
            raise NotFromTemplates(
                f'list {list_name} is fed by producers (lists.{list_name}.fed_by): it is never built from templates; '
                'push it with PUT /api/v1/lists/<name>, GameListUpdater or game_list:updated'
            )
        async with self._lock(list_name):
            data = build_list(settings.templates_for(lst), lst.ttl_s, self._rng)
            return await self.write_and_announce(lst, data, fence=fence)

    async def write_and_announce(
        self, lst: ListSettings, data: dict[str, Any], *, fence: str | None = None
    ) -> dict[str, Any]:
        stored = await self.store.write_list(lst.key, data, lst.ttl_s, fence=fence)
        await self.store.publish_update(lst.name, stored)
        return stored

    async def current(self, list_name: str) -> dict[str, Any]:
        """The list as stored; if it has expired, it is rebuilt first, as a scheduled tick would.

        From memory when it can; otherwise one read of Redis serves every caller waiting at that moment (a reconnect
        storm of 10,000 clients with `since` makes one GET, not 10,000).
        """
        cached = self.cached(list_name)
        if cached is not None:
            return cached
        loading = self._loading.get(list_name)
        if loading is None:
            loading = asyncio.get_running_loop().create_task(self._load(list_name))
            self._loading[list_name] = loading
            loading.add_done_callback(lambda task: self._loaded(list_name, task))
        return await asyncio.shield(loading)

    def _loaded(self, list_name: str, task: asyncio.Task[dict[str, Any]]) -> None:
        if self._loading.get(list_name) is task:
            del self._loading[list_name]
        if not task.cancelled():
            task.exception()  # retrieved here too: every caller may have gone (timed out) before it ended

    async def _load(self, list_name: str) -> dict[str, Any]:
        lst = self.settings.get_list(list_name)
        data = await self._read(lst.key)
        if data is not None:
            await self.lists.fill(self.store, lst, data)
            return data
        if lst.from_producers:  # nobody sent a list lately: never show games that nobody sent
            raise ListExpired(f'no current game list: {lst.key} has expired and its producers have not sent a new one')
        async with self._lock(list_name):  # many clients asking at once cause one rebuild
            data = await self._read(lst.key)
            if data is not None:
                return data
            logger.info('list %s has expired from Redis (%s): rebuilding it', list_name, lst.key)
            data = build_list(self.settings.templates_for(lst), lst.ttl_s, self._rng)
            stored = await self.write_and_announce(lst, data)
            self.lists.remember(lst, stored)
            return stored

    def cached(self, list_name: str) -> dict[str, Any] | None:
        """The list from memory, while the updates subscription is live (else an update could have been missed)."""
        return self.lists.get(self.settings.get_list(list_name)) if self.listening.is_set() else None

    async def _read(self, key: str) -> dict[str, Any] | None:
        """read_list within READ_TIMEOUT_S: a client asking for the list gets an error, not a wait, from a hung Redis."""
        try:
            async with asyncio.timeout(READ_TIMEOUT_S):
                return await self.store.read_list(key)
        except TimeoutError:
            raise StoreError(
                f'Redis at {redact_url(self.store.url)} did not answer GET {key} within {READ_TIMEOUT_S:g}s'
            ) from None

    async def _scheduled(self, schedule: ScheduleSettings) -> None:
        try:
            if self.leadership.value is None:
                raise FencedError('this process no longer holds the scheduler lease')
            data = await self.refresh(schedule.list, fence=self.leadership.value)
        except Exception:
            metrics.SCHEDULE_RUNS.labels(schedule.name, 'failure').inc()
            raise
        metrics.SCHEDULE_RUNS.labels(schedule.name, 'success').inc()
        logger.info(
            'schedule %s refreshed list %s (version %s, %d games)',
            schedule.name,
            schedule.list,
            data.get('version'),
            data.get('total_games', 0),
        )

    # -- consuming ---------------------------------------------------------------------------------------------

    async def broadcast(self, list_name: str, data: dict[str, Any]) -> int:
        """Send a list to this process's clients in each namespace the list targets; returns the client count."""
        try:
            lst = self.settings.get_list(list_name)
        except KeyError:
            logger.warning('update for unknown list %r ignored (not in %s)', list_name, self.settings.source)
            return 0
        if not self.lists.remember(lst, data):
            # older than the list held: versions start again in an emptied or restarted Redis (or two writers'
            # messages crossed). Redis decides: the next main:screen reads it instead of serving the held list.
            self.lists.discard(lst.name)
        self._sent[lst.name] = (data.get('version'), data.get('updated_at'))
        message = envelope(data, lst.event)
        total = 0
        started = time.perf_counter()
        for namespace in lst.namespaces:
            count = await self._emit(lst.event, message, namespace)
            total += count
            metrics.BROADCASTS.labels(lst.name, namespace).inc()
            logger.info('broadcast %s to %s (%d clients, version %s)', lst.event, namespace, count, data.get('version'))
        if self._written is not None:
            await self._written()
        elapsed = time.perf_counter() - started
        metrics.BROADCAST_SECONDS.labels(lst.name).observe(elapsed)
        logger.info(
            'broadcast of version %s written in %.1f ms (%d clients over %d namespaces)',
            data.get('version'),
            elapsed * 1e3,
            total,
            len(lst.namespaces),
        )
        self.broadcasts += 1
        return total

    async def _on_message(self, raw: bytes | str) -> None:
        try:
            message = json.loads(raw)
            list_name, data = message['list'], message['data']
            if not isinstance(list_name, str) or not isinstance(data, dict):
                raise TypeError('list must be a string and data an object')
        except (ValueError, KeyError, TypeError) as exc:
            logger.warning('malformed message on %s ignored: %s', UPDATES_CHANNEL, exc)
            return
        if self._caught_up.pop(list_name, None) == (data.get('version'), data.get('updated_at')):
            return  # written before the catch-up read it, published after the subscription: already sent
        await self.broadcast(list_name, data)

    async def listen(self) -> None:
        """Subscribe to the updates channel for ever, resubscribing with backoff when Redis goes away."""
        delay = 0.1
        while True:
            pubsub = self.store.pubsub()
            try:
                await pubsub.subscribe(UPDATES_CHANNEL)
                self.lists.clear()  # updates may have been missed while not subscribed
                if self.redis_error:
                    logger.warning('Redis is back: subscribed to %s again', UPDATES_CHANNEL)
                    await self._catch_up()
                self.listening.set()
                self.redis_error = None
                delay = 0.1
                async for message in pubsub.listen():
                    if message.get('type') == 'message':
                        await self._on_message(message['data'])
            except asyncio.CancelledError:
                raise
            except (RedisError, OSError, StoreError) as exc:
                self.listening.clear()
                self.redis_error = f'{type(exc).__name__}: {exc}'
                logger.error(
                    'Redis subscription to %s lost: %s; retrying in %.1fs', UPDATES_CHANNEL, self.redis_error, delay
                )
            finally:
                with contextlib.suppress(Exception):
                    await pubsub.aclose()  # type: ignore[no-untyped-call]
            with contextlib.suppress(TimeoutError):  # the backoff, cut short when this process takes the lease
                await asyncio.wait_for(self._resubscribe.wait(), delay)
            self._resubscribe.clear()
            delay = min(delay * 2, RESUBSCRIBE_MAX_S)

    async def _catch_up(self) -> None:
        """After a lost subscription: send local clients each list written meanwhile (its broadcast was missed)."""
        self._caught_up.clear()
        for lst in self.settings.lists:
            data = await self.store.read_list(lst.key)
            if data is None:
                continue
            written = (data.get('version'), data.get('updated_at'))
            if self._sent.get(lst.name) != written:
                logger.info('list %s changed while not subscribed: sending version %s', lst.name, data.get('version'))
                await self.broadcast(lst.name, data)
                self._caught_up[lst.name] = written

    # -- lifecycle ---------------------------------------------------------------------------------------------

    def start(self, *, schedules: bool = True) -> None:
        """Listen for updates; with schedules, also compete for the lease and run the schedules while leading."""
        self._spawn(self.listen(), 'updates-listener')
        if schedules:
            self._spawn(self.leadership.run(), 'scheduler-lease')

    def _spawn(self, coro: Coroutine[Any, Any, None], name: str) -> None:
        task = asyncio.get_running_loop().create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _lead(self) -> None:
        if not self.listening.is_set():
            self._resubscribe.set()  # Redis answers again: subscribe before the first tick's broadcast
        self.scheduler.start(self.settings.schedules)

    async def _follow(self) -> None:
        await self.scheduler.stop()

    def apply(self, settings: Settings) -> dict[str, list[str]]:
        """Use a reloaded configuration: lists and templates from the next tick on, schedules as they changed."""
        self.settings = settings
        if self.leadership.leading:
            return self.scheduler.update(settings.schedules)
        return {}

    async def stop(self) -> None:
        await self.scheduler.stop()
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await self.leadership.release()
