"""Every default is stated once, in the schema: the loader and the settings' own defaults take it from there, and
the configuration reference (docs/configuration.md, tests/test_readme.py) shows the same values."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest

from gamelist_service.config import loader, schema
from gamelist_service.config.loader import load_settings
from gamelist_service.config.settings import (
    AuthSettings,
    JwtSettings,
    LimitSettings,
    NamespaceSettings,
    PlayerCounts,
    RedisSettings,
    ScheduleSettings,
    ServerSettings,
)

from .helpers import write_config

MINIMAL: dict[str, Any] = {
    'version': 1,
    'server': {},
    'redis': {'url': 'redis://127.0.0.1:1/0'},
    'namespaces': {'/': None, '/gameplay': None},
    'games': [
        {
            'id': 'g1',
            'name': 'Poker',
            'type': 'card',
            'min_players': 2,
            'max_players': 8,
            'status': 'active',
            'players': {'mode': 'simulated', 'active': [1, 2]},
        }
    ],
    'lists': {'current': {'key': 'gamelist:current', 'ttl': '300s', 'games': 'all', 'namespaces': ['/', '/gameplay']}},
    'schedules': [{'name': 'refresh', 'list': 'current', 'every': '30s'}],
}


def test_a_file_that_states_nothing_gets_the_settings_defaults(tmp_path: Path) -> None:
    """The loader (schema defaults) and the dataclasses (schema.default at import) agree on every field."""
    settings = load_settings(write_config(tmp_path / 'min.yaml', MINIMAL), {})
    assert settings.server == ServerSettings()
    assert settings.redis == RedisSettings(url='redis://127.0.0.1:1/0')
    assert settings.limits == LimitSettings()
    assert settings.leader_lease_s == 5.0 == schema.default_s('leader', 'lease')
    assert settings.namespaces[0] == NamespaceSettings('/', 'current', auth=AuthSettings())
    (current,) = settings.lists
    assert (current.event, current.fed_by) == ('game_list:updated', 'templates')
    (sched,) = settings.schedules
    assert sched == ScheduleSettings('refresh', 'current', interval_s=30.0)
    (game,) = settings.games
    assert game.players == PlayerCounts('simulated', 1, 2)
    assert (game.players.live_ratio_min, game.players.live_ratio_max) == (0.3, 0.8)
    assert JwtSettings('i', 'a') == JwtSettings('i', 'a', ('HS256',), 0.0, user_claim='sub')


def test_the_loader_takes_each_default_from_the_schema(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Changing a default in the schema alone changes what a file that does not state it gets: nothing else holds
    a copy of the value."""
    changed = copy.deepcopy(schema.schema())
    props = changed['properties']
    defs = changed['$defs']
    props['server']['properties']['port']['default'] = 4321
    props['server']['properties']['ping_interval']['default'] = '7s'
    props['limits']['properties']['burst']['default'] = 9
    props['redis']['properties']['embedded']['properties']['maxmemory']['default'] = '64mb'
    props['leader']['properties']['lease']['default'] = '9s'
    defs['list']['properties']['event']['default'] = 'lobby:updated'
    defs['namespace']['properties']['send_list_on_connect']['default'] = True
    defs['schedule']['properties']['jitter']['default'] = '2s'
    defs['players']['else']['properties']['live_ratio']['default'] = [0.1, 0.2]
    monkeypatch.setattr(schema, 'schema', lambda name=schema.SCHEMA_FILE: changed)
    monkeypatch.setattr(loader, 'schema', lambda name=schema.SCHEMA_FILE: changed)
    settings = load_settings(write_config(tmp_path / 'min.yaml', MINIMAL), {})
    assert settings.server.port == 4321
    assert settings.server.ping_interval_s == 7.0
    assert settings.limits.burst == 9
    assert settings.redis.maxmemory == '64mb'
    assert settings.leader_lease_s == 9.0
    assert settings.lists[0].event == 'lobby:updated'
    assert settings.namespaces[0].send_list_on_connect is True
    assert settings.schedules[0].jitter_s == 2.0
    assert (settings.games[0].players.live_ratio_min, settings.games[0].players.live_ratio_max) == (0.1, 0.2)
