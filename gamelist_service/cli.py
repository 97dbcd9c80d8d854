"""The gamelist-service command: serve, validate, schema, publish, check. It parses, sets up logs, calls the library."""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from . import __version__, deferred
from .config.loader import DEFAULT_CONFIG_PATH, load_settings, summary
from .config.reload import Launch
from .config.schema import schema_text
from .config.settings import ENV_PORT, ENV_REDIS_URL, Settings
from .errors import GamelistError
from .logs import setup_logging
from .storage import instances
from .storage.check import check_redis
from .storage.instances import resolve_redis_url
from .storage.store import Store, redact_url


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog='gamelist-service',
        description='A live game list in Redis, pushed to every Socket.IO client when it changes.',
    )
    parser.add_argument('--version', action='version', version=f'%(prog)s {__version__}')
    parser.add_argument('-v', '--verbose', action='store_true', help='debug logs')
    parser.add_argument('--log-format', choices=('text', 'json'), default='text', help='log lines as text or JSON')
    sub = parser.add_subparsers(dest='command', required=True, metavar='COMMAND')

    def command(name: str, func: Callable[[argparse.Namespace], int], help_text: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help_text, description=help_text)
        p.set_defaults(func=func)
        return p

    def config_arg(p: argparse.ArgumentParser) -> None:
        p.add_argument(
            '--config',
            type=Path,
            default=DEFAULT_CONFIG_PATH,
            help=f'configuration file (default: {DEFAULT_CONFIG_PATH})',
        )

    def redis_args(p: argparse.ArgumentParser) -> None:
        p.add_argument(
            '--redis-url', help='Redis to use (default: the config, or the embedded Redis of a running serve)'
        )
        p.add_argument('--port', type=int, help='which running serve to find, when several share a config')

    p = command('serve', cmd_serve, 'run the service: scheduler, Socket.IO and HTTP')
    config_arg(p)
    p.add_argument('--host', help='address to listen on (default: the config)')
    p.add_argument('--port', type=int, help=f'port to listen on (default: ${ENV_PORT}, else the config)')
    p.add_argument('--redis-url', help=f'Redis URL or "embedded" (default: ${ENV_REDIS_URL}, else the config)')
    p.add_argument('--workers', type=_positive, default=1, help='worker processes (default: 1)')

    p = command('reload', cmd_reload, 'make a running serve re-read its configuration (sends SIGHUP)')
    config_arg(p)
    p.add_argument('--port', type=int, help='which running serve, when several share a config')

    p = command('validate', cmd_validate, 'check configuration files; exit 1 listing every problem')
    p.add_argument('paths', nargs='+', type=Path, metavar='PATH')

    command('schema', cmd_schema, 'print the JSON Schema of the configuration file')

    p = command('publish', cmd_publish, 'refresh a list now and have the running service broadcast it')
    config_arg(p)
    redis_args(p)
    p.add_argument('--list', dest='list_name', help='list to refresh (default: the first in the config)')

    p = command('check', cmd_check, 'check Redis: ping, set/get, TTL round trip, server version, latency')
    config_arg(p)
    redis_args(p)

    p = command('updater', cmd_updater, "the prototype's interactive updater: single, continuous, custom, Redis test")
    p.add_argument('--config', type=Path, help="configuration file (default: none, the prototype's defaults)")
    p.add_argument('--redis-url', help=f'Redis to write (default: ${ENV_REDIS_URL}, the config, else 127.0.0.1:6379)')
    return parser


def main(*args: str) -> int:
    """Entry point of the gamelist-service script; tests call it with arguments."""
    ns = build_parser().parse_args(args or sys.argv[1:])
    setup_logging(ns.verbose, ns.log_format)
    try:
        code: int = ns.func(ns)
    except GamelistError as exc:
        print(f'error: {exc.message}', file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    return code


def cmd_validate(ns: argparse.Namespace) -> int:
    failed = False
    for path in ns.paths:
        try:
            settings = load_settings(path)
        except GamelistError as exc:
            failed = True
            lines = getattr(exc, 'lines', None) or [f'{path}:1:1: (root): {exc.message}']
            for line in lines:
                print(line, file=sys.stderr)
        else:
            print(summary(settings))
    return 1 if failed else 0


def cmd_schema(ns: argparse.Namespace) -> int:
    sys.stdout.write(schema_text())
    return 0


def cmd_serve(ns: argparse.Namespace) -> int:
    deferred.defer(deferred.CLIENT_LIBRARIES)  # before python-engineio is imported: serve runs no client
    from .web.server import serve  # noqa: PLC0415 - Sanic is only imported by the command that needs it

    env: dict[str, str] = {}
    if ns.port is not None:
        env[ENV_PORT] = str(ns.port)
    if ns.redis_url:
        env[ENV_REDIS_URL] = ns.redis_url
    launch = Launch(ns.config, env, ns.host, ns.workers, verbose=ns.verbose, log_format=ns.log_format)
    return serve(launch)


def cmd_reload(ns: argparse.Namespace) -> int:
    settings = load_settings(ns.config)
    found = instances.running(settings.redis.state_dir, settings.source, ns.port)
    if len(found) != 1:
        where = settings.redis.state_dir.resolve()
        what = 'no running serve' if not found else f'{len(found)} running serve processes (pass --port)'
        raise GamelistError(f'{what} for {settings.source} in {where}')
    os.kill(found[0].pid, signal.SIGHUP)
    print(f'sent SIGHUP to serve pid {found[0].pid} (port {found[0].port}); its log and /ready show the outcome')
    return 0


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError('must be at least 1')
    return value


def cmd_publish(ns: argparse.Namespace) -> int:
    settings = load_settings(ns.config)
    url = resolve_redis_url(settings, ns.redis_url, ns.port)
    list_name = ns.list_name or settings.lists[0].name
    try:
        settings.get_list(list_name)
    except KeyError:
        names = ', '.join(lst.name for lst in settings.lists)
        raise GamelistError(f'no list named {list_name!r} in {settings.source}; lists: {names}') from None
    return asyncio.run(_publish(settings, url, list_name))


async def _publish(settings: Settings, url: str, list_name: str) -> int:
    from .core.service import GamelistService  # noqa: PLC0415

    async def no_emit(event: str, data: dict[str, Any], namespace: str) -> int:
        return 0

    store = Store(url)
    try:
        service = GamelistService(settings, store, no_emit)
        lst = settings.get_list(list_name)
        data = await service.refresh(list_name)
        receivers = await store.redis.pubsub_numsub('gamelist:updates')
    finally:
        await store.close()
    listeners = int(receivers[0][1]) if receivers else 0
    print(
        f'published list {list_name} to {lst.key} on {redact_url(url)}: version {data["version"]}, '
        f'{data["total_games"]} games, {data["active_games"]} active, {data["total_players"]} players, '
        f'ttl {lst.ttl_s:g}s; event {lst.event} to {", ".join(lst.namespaces)}; '
        f'{listeners} service process(es) subscribed'
    )
    if listeners == 0:
        print('warning: no running service is subscribed; the list is stored but no client was told', file=sys.stderr)
    return 0


def cmd_check(ns: argparse.Namespace) -> int:
    settings = load_settings(ns.config)
    url = resolve_redis_url(settings, ns.redis_url, ns.port)
    return asyncio.run(_check(url))


async def _check(url: str) -> int:
    print(f'Redis at {redact_url(url)}')
    steps = await check_redis(url)
    for step in steps:
        print(f'{"ok  " if step.passed else "FAIL"} {step.name}: {step.detail}')
    return 0 if all(step.passed for step in steps) else 1


def cmd_updater(ns: argparse.Namespace) -> int:
    from .producers.menu import run_menu  # noqa: PLC0415
    from .producers.updater import GameListUpdater  # noqa: PLC0415

    redis_url = ns.redis_url or os.environ.get(ENV_REDIS_URL) or None
    with GameListUpdater(redis_url=redis_url, config=ns.config) as updater:
        return run_menu(updater)
