"""Reloading the configuration on SIGHUP: validate exactly as `validate` does, apply what can change live."""

from __future__ import annotations

import dataclasses
import logging
import os
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import ConfigError
from ..storage.store import redact_url
from .loader import load_settings
from .settings import Settings

logger = logging.getLogger('gamelist_service.config.reload')


@dataclass(slots=True)
class ReloadStatus:
    """What /ready and /metrics say about the configuration in use and the last reload attempt."""

    generation: int = 1
    digest: str = ''
    loaded_at: float = field(default_factory=time.time)
    last_attempt_ok: bool = True
    last_attempt_at: float | None = None
    last_errors: tuple[str, ...] = ()
    restart_needed: tuple[str, ...] = ()

    def as_dict(self) -> dict[str, object]:
        return {
            'generation': self.generation,
            'sha256': self.digest,
            'last_success': self.loaded_at,
            'last_attempt_successful': self.last_attempt_ok,
            'last_attempt': self.last_attempt_at,
            'last_errors': list(self.last_errors),
            'restart_needed': list(self.restart_needed),
        }


def restart_only_changes(old: Settings, new: Settings) -> list[str]:
    """Settings a running process cannot take: the listening socket, the Redis it uses, the embedded Redis."""
    changes = []
    for item in dataclasses.fields(old.server):
        before, after = getattr(old.server, item.name), getattr(new.server, item.name)
        if before != after:
            changes.append(f'server.{item.name}: {before!r} -> {after!r}')
    for name in ('url', 'state_dir', 'persistence'):
        before, after = getattr(old.redis, name), getattr(new.redis, name)
        if before != after:
            shown = (redact_url(str(before)), redact_url(str(after))) if name == 'url' else (before, after)
            changes.append(f'redis.{name}: {shown[0]!r} -> {shown[1]!r}')
    removed = {ns.name for ns in old.namespaces} - {ns.name for ns in new.namespaces}
    changes.extend(f'namespaces[{name!r}] removed (its clients stay until a restart)' for name in sorted(removed))
    return changes


def merge(old: Settings, new: Settings) -> Settings:
    """The new settings, except what needs a restart, which keeps its running value."""
    redis = dataclasses.replace(
        new.redis, url=old.redis.url, state_dir=old.redis.state_dir, persistence=old.redis.persistence
    )
    return dataclasses.replace(new, server=old.server, redis=redis)


@dataclass(frozen=True, slots=True)
class Launch:
    """How serve was started: the file and the command-line overrides, applied again on every reload."""

    config: Path
    env: Mapping[str, str] = field(default_factory=dict)
    host: str | None = None
    workers: int = 1
    verbose: bool = False
    log_format: str = 'text'

    def load(self) -> Settings:
        """The settings serve runs with: the file and the command-line overrides."""
        settings = load_settings(self.config, {**os.environ, **self.env})
        server = settings.server
        if self.host:
            server = dataclasses.replace(server, host=self.host)
        if not server.transports:  # both, also with several workers: each request reaches its session's worker
            server = dataclasses.replace(server, transports=('polling', 'websocket'))
        return dataclasses.replace(settings, server=server)


def load_for_reload(current: Settings, launch: Launch, status: ReloadStatus) -> Settings | None:
    """Read and validate the file again; on success the settings to apply, else None (errors logged, status set)."""
    status.last_attempt_at = time.time()
    try:
        new = launch.load()
    except ConfigError as exc:
        status.last_attempt_ok = False
        status.last_errors = exc.lines
        logger.error('reload rejected, still running generation %d: %d problem(s)', status.generation, len(exc.lines))
        for line in exc.lines:
            logger.error('%s', line)
        return None
    status.restart_needed = tuple(restart_only_changes(current, new))
    for change in status.restart_needed:
        logger.warning('reload: %s needs a restart; the running value is kept', change)
    status.generation += 1
    status.digest = new.digest
    status.loaded_at = time.time()
    status.last_attempt_ok = True
    status.last_errors = ()
    return merge(current, new)
