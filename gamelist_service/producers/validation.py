"""Games pushed by producers (HTTP API, GameListUpdater): validated against schemas/game.schema.json, defaults filled."""

from __future__ import annotations

import difflib
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from functools import cache
from typing import Any

import jsonschema

from ..config.schema import schema
from ..config.yamlpos import JsonPath, format_path
from ..core.lists import utc_now_iso
from ..errors import PayloadError

GAME_SCHEMA = 'game.schema.json'
# The order clients see, as the prototype wrote each game.
GAME_FIELDS = (
    'game_id',
    'game_name',
    'game_type',
    'active_gamepalye',
    'livegameplaye',
    'min_players',
    'max_players',
    'status',
    'created_at',
)
DEFAULT_GAME_TYPE = 'custom'
DEFAULT_MIN_PLAYERS = 1
DEFAULT_MAX_PLAYERS = 10
DEFAULT_STATUS = 'active'
MAX_ERRORS = 50  # a list of 10,000 bad games gets a readable answer, not a megabyte of errors


@dataclass(frozen=True, slots=True)
class FieldError:
    """One problem with a pushed list: where (gamelist[2].max_players) and what."""

    path: str
    message: str

    def as_dict(self) -> dict[str, str]:
        return {'path': self.path, 'message': self.message}


class GameListInvalid(PayloadError):
    """A pushed list that does not fit the contract; errors names every bad field."""

    def __init__(self, errors: Sequence[FieldError]) -> None:
        self.errors = tuple(errors)
        count = len(self.errors)
        details = '; '.join(f'{e.path}: {e.message}' for e in self.errors)
        super().__init__(f'invalid game list, {count} problem{"s" if count != 1 else ""}: {details}')

    def __repr__(self) -> str:
        return f'GameListInvalid(errors={self.errors!r})'


@cache
def _validator() -> jsonschema.Draft202012Validator:
    return jsonschema.Draft202012Validator(schema(GAME_SCHEMA))


def validate_push(body: Any) -> list[dict[str, Any]]:
    """The games of an HTTP body, which must be exactly {"gamelist": [...]}; raises GameListInvalid."""
    if not isinstance(body, dict):
        raise GameListInvalid([FieldError('(root)', f'expected an object {{"gamelist": [...]}}, got {_kind(body)}')])
    errors = [
        FieldError(
            format_path((key,)),
            f'unknown field {key!r}: send only gamelist; the service computes '
            'updated_at, cache_duration, the totals and version',
        )
        for key in body
        if key != 'gamelist'
    ]
    if 'gamelist' not in body:
        errors.append(FieldError('gamelist', 'is required'))
        raise GameListInvalid(errors)
    try:
        games = validate_games(body['gamelist'], root='gamelist')
    except GameListInvalid as exc:
        raise GameListInvalid([*errors, *exc.errors][:MAX_ERRORS]) from None
    if errors:
        raise GameListInvalid(errors)
    return games


def validate_games(games: Any, *, root: str = 'gamelist', now: float | None = None) -> list[dict[str, Any]]:
    """Check games in the prototype's format and fill what is left out; raises GameListInvalid naming each bad field.

    :param root: how the list is named in error paths (gamelist[2].max_players, custom_games[2].max_players).
    """
    if isinstance(games, (str, bytes, dict)) or not isinstance(games, Sequence):
        raise GameListInvalid([FieldError(root, f'expected a list of games, got {_kind(games)}')])
    stamp = int(time.time() if now is None else now)
    created_at = utc_now_iso()
    errors: list[FieldError] = []
    filled: list[dict[str, Any]] = []
    seen: dict[str, int] = {}
    for i, game in enumerate(games):
        problems = list(_schema_errors(game, (root, i)))
        if problems:
            errors.extend(problems)
            continue
        entry = _with_defaults(game, i, stamp, created_at)
        errors.extend(_cross_field_errors(entry, (root, i)))
        first = seen.setdefault(entry['game_id'], i)
        if first != i:
            at = format_path((root, first))
            errors.append(
                FieldError(format_path((root, i, 'game_id')), f'duplicate game_id {entry["game_id"]!r} (also {at})')
            )
        filled.append(entry)
    if errors:
        raise GameListInvalid(errors[:MAX_ERRORS])
    return filled


def _with_defaults(game: dict[str, Any], index: int, stamp: int, created_at: str) -> dict[str, Any]:
    """A game with every field, in the prototype's order; defaults as the prototype filled them."""
    min_players = game.get('min_players', DEFAULT_MIN_PLAYERS)
    defaults: dict[str, Any] = {
        'game_id': f'game_{index + 1}_{stamp}',
        'game_name': game['game_name'],
        'game_type': DEFAULT_GAME_TYPE,
        'active_gamepalye': 0,
        'livegameplaye': 0,
        'min_players': min_players,
        'max_players': max(DEFAULT_MAX_PLAYERS, min_players),
        'status': DEFAULT_STATUS,
        'created_at': created_at,
    }
    return {field: game.get(field, defaults[field]) for field in GAME_FIELDS}


def _schema_errors(game: Any, at: JsonPath) -> Iterator[FieldError]:
    if not isinstance(game, dict):
        yield FieldError(format_path(at), f'expected a game object, got {_kind(game)}')
        return
    for error in sorted(_validator().iter_errors(game), key=lambda e: [str(p) for p in e.absolute_path]):
        path: JsonPath = (*at, *error.absolute_path)
        if error.validator == 'additionalProperties':
            for key in game:
                if key not in GAME_FIELDS:
                    hint = difflib.get_close_matches(key, GAME_FIELDS, n=1)
                    extra = f" (did you mean '{hint[0]}'?)" if hint else ''
                    yield FieldError(
                        format_path((*path, key)), f'unknown field {key!r}{extra}; allowed: {", ".join(GAME_FIELDS)}'
                    )
        elif error.validator == 'required':
            yield FieldError(format_path((*path, 'game_name')), 'is required')
        elif error.validator == 'pattern' and path[-1] == 'created_at':
            yield FieldError(format_path(path), f'{error.instance!r} is not ISO 8601 UTC, e.g. 2024-01-01T12:00:00Z')
        else:
            yield FieldError(format_path(path), _short(error.message))


def _cross_field_errors(game: dict[str, Any], at: JsonPath) -> Iterator[FieldError]:
    if game['min_players'] > game['max_players']:
        yield FieldError(
            format_path((*at, 'min_players')),
            f'min_players ({game["min_players"]}) is greater than max_players ({game["max_players"]})',
        )
    if game['livegameplaye'] > game['active_gamepalye']:
        yield FieldError(
            format_path((*at, 'livegameplaye')),
            f'livegameplaye ({game["livegameplaye"]}) is greater than active_gamepalye ({game["active_gamepalye"]})',
        )


def _kind(value: Any) -> str:
    names = {
        dict: 'an object',
        list: 'a list',
        str: 'a string',
        bool: 'a boolean',
        int: 'a number',
        float: 'a number',
        type(None): 'null',
    }
    return names.get(type(value), f'a {type(value).__name__}')


def _short(message: str, limit: int = 200) -> str:
    return message if len(message) <= limit else message[: limit - 3] + '...'
