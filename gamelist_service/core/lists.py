"""Building a game list from templates, and the envelope clients receive. The field names are the wire contract."""

from __future__ import annotations

import random
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from typing import Any

from ..config.durations import format_duration
from ..config.settings import GameTemplate

UPDATED_MESSAGE = 'Game list has been updated'
MAIN_SCREEN_MESSAGE = 'Current game list'


def utc_now_iso() -> str:
    """ISO 8601 UTC with a Z, as the prototype wrote times."""
    return datetime.now(UTC).isoformat(timespec='microseconds')[:-6] + 'Z'  # strftime's %Y-%m-%dT%H:%M:%S.%fZ


def player_counts(template: GameTemplate, rng: random.Random) -> tuple[int, int]:
    """(active_gamepalye, livegameplaye) for one refresh: fixed, or drawn from the configured ranges."""
    counts = template.players
    if counts.mode == 'fixed':
        return counts.active_min, counts.live_fixed
    if template.status != 'active':
        return 0, 0
    active = rng.randint(counts.active_min, counts.active_max)
    live = int(active * rng.uniform(counts.live_ratio_min, counts.live_ratio_max))
    return active, live


def game_entry(template: GameTemplate, rng: random.Random) -> dict[str, Any]:
    active, live = player_counts(template, rng)
    return {
        'game_id': template.id,
        'game_name': template.name,
        'game_type': template.type,
        'active_gamepalye': active,
        'livegameplaye': live,
        'min_players': template.min_players,
        'max_players': template.max_players,
        'status': template.status,
        'created_at': template.created_at,
    }


def list_data(games: Iterable[Mapping[str, Any]], ttl_s: float, *, updated_at: str | None = None) -> dict[str, Any]:
    """The object stored in Redis: games plus the totals the service computes."""
    gamelist = [dict(game) for game in games]
    return {
        'gamelist': gamelist,
        'updated_at': updated_at or utc_now_iso(),
        'cache_duration': f'{format_cache_duration(ttl_s)}',
        'total_games': len(gamelist),
        'active_games': sum(1 for game in gamelist if game.get('status') == 'active'),
        'total_players': sum(int(game.get('active_gamepalye', 0)) for game in gamelist),
    }


def build_list(templates: Iterable[GameTemplate], ttl_s: float, rng: random.Random | None = None) -> dict[str, Any]:
    """A fresh list from the templates, as a scheduled tick builds it."""
    rng = rng or random.Random()
    return list_data((game_entry(template, rng) for template in templates), ttl_s)


def format_cache_duration(ttl_s: float) -> str:
    """'300 seconds', as the prototype wrote it; sub-second TTLs keep their unit."""
    return f'{int(ttl_s)} seconds' if float(ttl_s).is_integer() else format_duration(ttl_s)


def envelope(data: Mapping[str, Any], event: str, message: str = UPDATED_MESSAGE) -> dict[str, Any]:
    """What clients receive: the broadcast envelope of the wire contract."""
    return {
        'status': 'success',
        'message': message,
        'data': data,
        'timestamp': utc_now_iso(),
        'event': event,
    }
