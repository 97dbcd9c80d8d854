"""Per-instance state on disk: one directory per serve (by port) with its pidfile and how to reach its Redis."""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path

from ..config.settings import Settings
from ..errors import GamelistError
from .embedded import private_dir

PIDFILE = 'serve.pid'
INFOFILE = 'instance.json'


@dataclass(frozen=True, slots=True)
class Instance:
    """A running (or just started) serve process, as recorded in its state directory."""

    directory: str
    port: int
    pid: int
    config: str
    redis_url: str

    @property
    def path(self) -> Path:
        return Path(self.directory)


def instance_dir(state_root: Path, port: int) -> Path:
    return state_root.resolve() / str(port)


def pid_alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _read(directory: Path) -> Instance | None:
    try:
        raw = json.loads((directory / INFOFILE).read_text(encoding='utf-8'))
        return Instance(**raw)
    except (OSError, ValueError, TypeError):
        return None


def _pidfile_pid(directory: Path) -> int:
    try:
        return int((directory / PIDFILE).read_text(encoding='utf-8').strip())
    except (OSError, ValueError):
        return 0


def claim(state_root: Path, port: int, config: Path) -> Path:
    """Create this instance's directory and pidfile; refuse if a live serve already holds the port's directory."""
    directory = instance_dir(state_root, port)
    # the service user's only: pidfiles, instance.json (a Redis URL, maybe with a password), the embedded Redis's
    # socket, log and data; a state directory made world-readable by an earlier version is closed too
    private_dir(directory.parent)
    private_dir(directory)
    previous = _read(directory)
    # the pidfile too: a serve that is still starting (its Redis not up yet) has not published instance.json
    for pid in (previous.pid if previous else 0, _pidfile_pid(directory)):
        if pid != os.getpid() and pid_alive(pid):
            raise GamelistError(
                f'another gamelist-service serve (pid {pid}) already uses {directory}; stop it or use another port'
            )
    _atomic_write(directory / PIDFILE, f'{os.getpid()}\n')
    return directory


def publish(directory: Path, port: int, config: Path, redis_url: str) -> Instance:
    """Record how other commands (publish, check, reload) find this instance and its Redis."""
    instance = Instance(str(directory), port, os.getpid(), str(config.resolve()), redis_url)
    _atomic_write(directory / INFOFILE, json.dumps(asdict(instance), indent=2) + '\n')
    return instance


def release(directory: Path) -> None:
    for name in (INFOFILE, PIDFILE):
        path = directory / name
        try:
            if path.name != PIDFILE or path.read_text().strip() == str(os.getpid()):
                path.unlink()
        except OSError:
            pass


def running(state_root: Path, config: Path | None = None, port: int | None = None) -> list[Instance]:
    """Live instances under state_root, optionally only those serving config and/or port."""
    root = state_root.resolve()
    if not root.is_dir():
        return []
    found = []
    for directory in sorted(p for p in root.iterdir() if p.is_dir()):
        instance = _read(directory)
        if instance is None or not pid_alive(instance.pid):
            continue
        if config is not None and Path(instance.config) != config.resolve():
            continue
        if port is not None and instance.port != port:
            continue
        found.append(instance)
    return found


def _atomic_write(path: Path, text: str) -> None:
    tmp = path.with_name(f'.{path.name}.{os.getpid()}.tmp')
    # owner only: instance.json holds the Redis URL, which may carry a password
    with os.fdopen(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), 'w', encoding='utf-8') as file:
        file.write(text)
    os.replace(tmp, path)


def resolve_redis_url(settings: Settings, redis_url: str | None, port: int | None) -> str:
    """The Redis to use: redis_url (--redis-url), else $GAMELIST_REDIS_URL or the config's, else the embedded
    Redis of the running serve of this config (port picks one when several run)."""
    url = redis_url or settings.redis.url
    if url != 'embedded':
        return url
    found = running(settings.redis.state_dir, settings.source, port)
    if len(found) == 1:
        return found[0].redis_url
    where = f'{settings.redis.state_dir.resolve()}'
    if not found:
        raise GamelistError(
            f'{settings.source} uses the embedded Redis, but no running serve for it was found in '
            f'{where}: start `gamelist-service serve --config {settings.source}` or pass --redis-url'
        )
    ports = ', '.join(str(i.port) for i in found)
    raise GamelistError(f'several serve processes use {settings.source} (ports {ports}): pass --port to choose one')
