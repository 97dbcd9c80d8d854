"""The prototype's interactive menu around a GameListUpdater (`gamelist-service updater`)."""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any

from ..errors import GamelistError
from ..storage.store import redact_url
from .updater import DEFAULT_INTERVAL_S, GameListUpdater

MENU = """
Game List Updater: {key} on Redis {url}
1. Single update
2. Continuous updates (every 30 seconds)
3. Custom continuous updates
4. Test Redis connection
5. Exit"""


def run_menu(
    updater: GameListUpdater,
    read: Callable[[str], str] = input,
    write: Callable[[str], None] = lambda line: print(line, flush=True),
) -> int:
    """The prototype's interactive menu; returns 0 on 5 or end of input. Ctrl-C stops continuous updates."""
    while True:
        write(MENU.format(key=updater.list.key, url=redact_url(updater.redis_url)))
        try:
            choice = read('Choose an option (1-5): ').strip()
            if choice == '1':
                _single(updater, write)
            elif choice == '2':
                _continuous(updater, write, DEFAULT_INTERVAL_S, None)
            elif choice == '3':
                asked = _ask_interval(read, write)
                if asked is not None:
                    _continuous(updater, write, *asked)
            elif choice == '4':
                for step, passed, detail in updater.check_redis():
                    write(f'{"ok  " if passed else "FAIL"} {step}: {detail}')
            elif choice in ('5', 'q', 'quit', 'exit'):
                write('Goodbye')
                return 0
            else:
                write(f'unknown option {choice!r}: choose 1 to 5')
        except EOFError:
            write('')
            return 0


def _single(updater: GameListUpdater, write: Callable[[str], None]) -> None:
    try:
        data = updater.update_and_notify()
    except GamelistError as exc:
        write(f'error: {exc.message}')
        return
    write(_describe(updater, 1, data))


def _continuous(
    updater: GameListUpdater, write: Callable[[str], None], interval_s: float, max_updates: int | None
) -> None:
    limit = f', {max_updates} update(s)' if max_updates else ''
    write(f'Continuous updates every {interval_s:g}s{limit}; press Ctrl-C to stop')

    def report(number: int, result: dict[str, Any] | GamelistError) -> None:
        if isinstance(result, GamelistError):
            write(f'update {number}: error: {result.message}')
        else:
            write(_describe(updater, number, result))

    done = updater.continuous_updates(interval_s, max_updates, on_update=report)
    write(f'Continuous updates stopped after {done} update(s)')


def _ask_interval(read: Callable[[str], str], write: Callable[[str], None]) -> tuple[float, int | None] | None:
    raw = read('Interval in seconds: ').strip()
    try:
        interval_s = float(raw)
        if not math.isfinite(interval_s) or interval_s <= 0:
            raise ValueError(raw)
    except ValueError:
        write(f'invalid interval {raw!r}: a positive number of seconds, e.g. 60')
        return None
    raw = read('Maximum number of updates (empty for no limit): ').strip()
    if not raw:
        return interval_s, None
    if not raw.isdecimal() or int(raw) < 1:
        write(f'invalid maximum {raw!r}: a whole number of at least 1, or empty')
        return None
    return interval_s, int(raw)


def _describe(updater: GameListUpdater, number: int, data: Mapping[str, Any]) -> str:
    told = updater.last_receivers
    line = (
        f'update {number}: version {data["version"]}, {data["total_games"]} games, {data["active_games"]} active, '
        f'{data["total_players"]} players -> {updater.list.key} (ttl {data["cache_duration"]}); '
        f'{told} service process(es) notified'
    )
    if not told:
        line += '\nwarning: no running service is subscribed; the list is stored but no client was told'
    return line
