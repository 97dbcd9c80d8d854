"""Game templates given as dicts, as the prototype's GameListUpdater took them: checked, defaults filled.

`updater.game_templates = [{"name": "Poker", "type": "card", "min_players": 2, "max_players": 8}, ...]` works as in
the prototype. Each dict becomes a GameTemplate; a bad field is named (game_templates[2].max_players) in a
GameListInvalid, never an AttributeError.
"""

from __future__ import annotations

import difflib
from collections.abc import Mapping, Sequence
from typing import Any

from ..config.settings import GameTemplate, PlayerCounts
from ..core.lists import utc_now_iso
from .validation import DEFAULT_GAME_TYPE, DEFAULT_MAX_PLAYERS, DEFAULT_MIN_PLAYERS, FieldError, GameListInvalid

STATUSES = ('active', 'maintenance', 'coming_soon')
DEFAULT_ACTIVE_RANGE = (1000, 20000)  # simulated players of an active game when the template does not say
DEFAULT_LIVE_RATIO = (0.3, 0.8)
# accepted keys: the config's names, and the names of the games the prototype wrote
_ALIASES = {'game_id': 'id', 'game_name': 'name', 'game_type': 'type'}
_KEYS = ('id', 'name', 'type', 'min_players', 'max_players', 'status', 'active', 'live_ratio', 'created_at')


def as_templates(items: Sequence[Any], *, root: str = 'game_templates') -> list[GameTemplate]:
    """GameTemplates from GameTemplates or dicts; GameListInvalid names every bad field."""
    if isinstance(items, (str, bytes, Mapping)) or not isinstance(items, Sequence):
        raise GameListInvalid([FieldError(root, f'expected a list of templates, got {type(items).__name__}')])
    errors: list[FieldError] = []
    templates: list[GameTemplate] = []
    created_at = utc_now_iso()
    for i, item in enumerate(items):
        if isinstance(item, GameTemplate):
            templates.append(item)
            continue
        if not isinstance(item, Mapping):
            errors.append(FieldError(f'{root}[{i}]', f'expected a dict or a GameTemplate, got {type(item).__name__}'))
            continue
        problems: list[FieldError] = []
        template = _from_dict(item, i, f'{root}[{i}]', created_at, problems)
        errors.extend(problems)
        if template is not None:
            templates.append(template)
    if errors:
        raise GameListInvalid(errors)
    return templates


def _from_dict(
    raw: Mapping[str, Any], index: int, at: str, created_at: str, errors: list[FieldError]
) -> GameTemplate | None:
    item = {_ALIASES.get(str(key), str(key)): value for key, value in raw.items()}
    for key in item:
        if key not in _KEYS:
            hint = difflib.get_close_matches(key, _KEYS, n=1)
            extra = f" (did you mean '{hint[0]}'?)" if hint else ''
            errors.append(FieldError(f'{at}.{key}', f'unknown field {key!r}{extra}; allowed: {", ".join(_KEYS)}'))
    name = _text(item, 'name', at, errors, required=True)
    kind = _text(item, 'type', at, errors) or DEFAULT_GAME_TYPE
    game_id = _text(item, 'id', at, errors) or f'game_{index + 1}'
    low = _count(item, 'min_players', DEFAULT_MIN_PLAYERS, at, errors, minimum=1)
    high = _count(item, 'max_players', max(DEFAULT_MAX_PLAYERS, low), at, errors, minimum=1)
    if low > high:
        errors.append(FieldError(f'{at}.min_players', f'min_players ({low}) is greater than max_players ({high})'))
    status = item.get('status', 'active')
    if status not in STATUSES:
        errors.append(FieldError(f'{at}.status', f'{status!r} is not one of {", ".join(STATUSES)}'))
    active = _pair(item, 'active', DEFAULT_ACTIVE_RANGE, at, errors, int)
    ratio = _pair(item, 'live_ratio', DEFAULT_LIVE_RATIO, at, errors, float)
    if ratio[1] > 1:
        errors.append(FieldError(f'{at}.live_ratio', f'is a share of the active players: at most 1, not {ratio[1]!r}'))
    if errors or name is None:
        return None
    players = PlayerCounts('simulated', int(active[0]), int(active[1]), float(ratio[0]), float(ratio[1]))
    if status != 'active':
        players = PlayerCounts('fixed', 0, 0)
    return GameTemplate(
        id=game_id,
        name=name,
        type=kind,
        min_players=low,
        max_players=high,
        status=status,
        players=players,
        created_at=str(item.get('created_at') or created_at),
    )


def _text(
    item: Mapping[str, Any], key: str, at: str, errors: list[FieldError], *, required: bool = False
) -> str | None:
    value = item.get(key)
    if value is None:
        if required:
            errors.append(FieldError(f'{at}.{key}', 'is required'))
        return None
    if not isinstance(value, str) or not value.strip():
        errors.append(FieldError(f'{at}.{key}', f'must be a non-empty string, not {value!r}'))
        return None
    return value


def _count(item: Mapping[str, Any], key: str, default: int, at: str, errors: list[FieldError], minimum: int) -> int:
    value = item.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        errors.append(FieldError(f'{at}.{key}', f'must be a whole number of at least {minimum}, not {value!r}'))
        return default
    return value


def _pair(
    item: Mapping[str, Any], key: str, default: tuple[float, float], at: str, errors: list[FieldError], kind: type
) -> tuple[float, float]:
    value = item.get(key, default)
    ok = (
        isinstance(value, (list, tuple))
        and len(value) == 2
        and all(isinstance(v, (int, float)) and not isinstance(v, bool) and v >= 0 for v in value)
        and (kind is float or all(float(v).is_integer() for v in value))
        and value[0] <= value[1]
    )
    if not ok:
        errors.append(FieldError(f'{at}.{key}', f'must be [min, max] with 0 <= min <= max, not {value!r}'))
        return default
    return float(value[0]), float(value[1])
