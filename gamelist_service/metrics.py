"""Prometheus metrics (prometheus-client). With several workers, serve sets PROMETHEUS_MULTIPROC_DIR before any
process imports this module, and /metrics adds up what every worker wrote there."""

from __future__ import annotations

import os
from typing import Any

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    multiprocess,
    start_http_server,
)
from prometheus_client import generate_latest as _generate_latest

MULTIPROC_ENV = 'PROMETHEUS_MULTIPROC_DIR'

CONNECTED_CLIENTS = Gauge(
    'gamelist_connected_clients',
    'Socket.IO clients connected, per namespace',
    ['namespace'],
    multiprocess_mode='livesum',
)
BROADCASTS = Counter('gamelist_broadcasts', 'Broadcasts sent, per list and namespace', ['list', 'namespace'])
BROADCAST_SECONDS = Histogram(
    'gamelist_broadcast_duration_seconds',
    'Time to hand one list to every local client of its namespaces (until the fast path has written it)',
    ['list'],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0),
)
SCHEDULE_RUNS = Counter('gamelist_schedule_runs', 'Schedule runs, per schedule and result', ['schedule', 'result'])
REDIS_ERRORS = Counter('gamelist_redis_errors', 'Redis operations that failed, per operation', ['operation'])
RELOAD_SUCCESS = Gauge(
    'gamelist_config_last_reload_successful',
    'Whether the last configuration reload attempt succeeded (1) or not (0)',
    multiprocess_mode='livemin',
)
RELOAD_TIME = Gauge(
    'gamelist_config_last_reload_success_timestamp_seconds',
    'When the configuration in use was loaded',
    multiprocess_mode='livemax',
)
CONFIG_GENERATION = Gauge(
    'gamelist_config_generation',
    'Configuration generation: 1 at start, +1 per applied reload',
    multiprocess_mode='livemax',
)
CONFIG_HASH = Gauge(
    'gamelist_config_info', 'The configuration in use (1 for its SHA-256)', ['sha256'], multiprocess_mode='livemax'
)
RELOAD_SUCCESS.set(1)  # every process starts on a configuration that validated (the main one included)
SCREEN_REQUESTS = Counter(
    'gamelist_screen_requests',
    'main:screen requests, per path: answered from memory where they arrive (direct) or by the handler (handler)',
    ['path'],
)
NAMESPACE_CONNECTS = Counter(
    'gamelist_namespace_connects',
    'Namespace CONNECTs of clients, per path: answered where they arrive (direct) or by python-socketio (handler)',
    ['path'],
)
FANOUT_WRITES = Counter(
    'gamelist_fanout_writes',
    'Frames of broadcasts and catch-up lists handed to sockets, per path: written directly (fast) or through '
    "python-socketio's own path (plain)",
    ['path'],
)
LIST_CACHE = Counter(
    'gamelist_list_cache_lookups',
    'Lookups of the in-memory copy of a list, per result: hit, or miss (then it is read from Redis, once for all waiting)',
    ['result'],
)
DEFLATED_FRAMES = Counter(
    'gamelist_deflated_frames',
    'Frames compressed (permessage-deflate), per kind: a packet the fast path writes (a broadcast, a catch-up list, '
    'an ack), compressed once for every connection that takes it (broadcast), or one message to one connection '
    '(single: main:screen answered where it arrives, packets a lean connection sends)',
    ['kind'],
)
LOOP_LAG = Histogram(
    'gamelist_event_loop_lag_seconds',
    'How late the event loop woke a timer due every 0.1 s: the longest stall of each interval',
    buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0),
)
LOOP_STALL_MAX = Gauge(
    'gamelist_event_loop_stall_max_seconds',
    'The longest event-loop stall since the process started',
    multiprocess_mode='max',
)
HANDOFFS = Counter(
    'gamelist_worker_handoffs',
    'Connections carrying a request of a session another worker holds, per direction: handed to that worker '
    '(handed) or taken over from another (adopted)',
    ['direction'],
)
EMBEDDED_RESTARTS = Counter(
    'gamelist_embedded_redis_restarts', 'Times the embedded redis-server was restarted after it died'
)
LEADER = Gauge(
    'gamelist_scheduler_leader',
    'Processes of this instance that hold the scheduler lease (0 or 1)',
    multiprocess_mode='livesum',
)


def mark_process_dead(pid: int) -> None:
    if os.environ.get(MULTIPROC_ENV):
        multiprocess.mark_process_dead(pid)  # type: ignore[no-untyped-call]


def config_loaded(generation: int, digest: str, loaded_at: float, previous_digest: str | None = None) -> None:
    if previous_digest and previous_digest != digest:
        CONFIG_HASH.labels(previous_digest).set(0)
    CONFIG_HASH.labels(digest).set(1)
    CONFIG_GENERATION.set(generation)
    RELOAD_TIME.set(loaded_at)
    RELOAD_SUCCESS.set(1)


def serve_on(host: str, port: int) -> Any:
    """GET /metrics on a listener of its own (server.metrics_listen), from a thread; returns it (shutdown() ends it)."""
    registry: CollectorRegistry = REGISTRY
    if os.environ.get(MULTIPROC_ENV):
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
    server, _thread = start_http_server(port, addr=host, registry=registry)
    return server


def generate_latest() -> bytes:
    """The exposition text: this process's metrics, or every worker's in multiprocess mode."""
    if os.environ.get(MULTIPROC_ENV):
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
        return _generate_latest(registry)
    return _generate_latest(REGISTRY)


__all__ = ['CONTENT_TYPE_LATEST', 'generate_latest']
