"""Building a game list: the wire contract's fields and types, totals, simulated and fixed counts, the envelope."""

from __future__ import annotations

import random
import re
from datetime import UTC, datetime
from typing import Any

import pytest

from gamelist_service.config.settings import GameTemplate, PlayerCounts, Status
from gamelist_service.core import lists
from gamelist_service.core.lists import (
    MAIN_SCREEN_MESSAGE,
    UPDATED_MESSAGE,
    build_list,
    envelope,
    format_cache_duration,
    game_entry,
    list_data,
    player_counts,
    utc_now_iso,
)

ISO_Z = re.compile(r'^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d+)?Z$')
GAME_FIELDS = {
    'game_id': str,
    'game_name': str,
    'game_type': str,
    'active_gamepalye': int,
    'livegameplaye': int,
    'min_players': int,
    'max_players': int,
    'status': str,
    'created_at': str,
}
LIST_FIELDS = {'gamelist', 'updated_at', 'cache_duration', 'total_games', 'active_games', 'total_players'}


def simulated(
    game_id: str,
    status: Status = 'active',
    active: tuple[int, int] = (5000, 20000),
    ratio: tuple[float, float] = (0.4, 0.8),
) -> GameTemplate:
    counts = PlayerCounts('simulated', active[0], active[1], ratio[0], ratio[1])
    return GameTemplate(game_id, f'Game {game_id}', 'card', 2, 8, status, counts, '2024-01-01T12:00:00Z')


def fixed(game_id: str, active: int, live: int, status: Status = 'active') -> GameTemplate:
    counts = PlayerCounts('fixed', active, active, live_fixed=live)
    return GameTemplate(game_id, f'Game {game_id}', 'board', 2, 2, status, counts, '2024-01-01T12:00:00Z')


def shipped_templates() -> list[GameTemplate]:
    """The five games of config/games.yaml."""
    return [
        GameTemplate('game_1', 'Poker', 'card', 2, 8, 'active', PlayerCounts('simulated', 5000, 20000, 0.4, 0.8), 'c'),
        GameTemplate(
            'game_2', 'Blackjack', 'card', 1, 7, 'active', PlayerCounts('simulated', 2000, 12000, 0.3, 0.7), 'c'
        ),
        GameTemplate('game_3', 'Roulette', 'casino', 1, 10, 'active', PlayerCounts('simulated', 1000, 8000), 'c'),
        GameTemplate('game_4', 'Chess', 'board', 2, 2, 'maintenance', PlayerCounts('fixed', 0, 0), 'c'),
        GameTemplate('game_5', 'Battle Royale', 'action', 10, 100, 'coming_soon', PlayerCounts('fixed', 0, 0), 'c'),
    ]


def parse_iso_z(value: str) -> datetime:
    assert ISO_Z.match(value), value
    return datetime.strptime(value, '%Y-%m-%dT%H:%M:%S.%fZ').replace(tzinfo=UTC)


def test_game_entry_has_exactly_the_contract_fields_and_types() -> None:
    entry = game_entry(simulated('game_1'), random.Random(1))

    assert set(entry) == set(GAME_FIELDS)
    for name, kind in GAME_FIELDS.items():
        assert type(entry[name]) is kind, (name, entry[name])
    assert entry['game_id'] == 'game_1'
    assert entry['game_name'] == 'Game game_1'
    assert entry['game_type'] == 'card'
    assert (entry['min_players'], entry['max_players']) == (2, 8)
    assert entry['status'] == 'active'
    assert entry['created_at'] == '2024-01-01T12:00:00Z'


def test_list_has_exactly_the_contract_fields() -> None:
    data = build_list(shipped_templates(), 300, random.Random(3))

    assert set(data) == LIST_FIELDS
    assert isinstance(data['gamelist'], list)
    assert [game['game_id'] for game in data['gamelist']] == ['game_1', 'game_2', 'game_3', 'game_4', 'game_5']
    for game in data['gamelist']:
        assert set(game) == set(GAME_FIELDS)
    for name in ('total_games', 'active_games', 'total_players'):
        assert type(data[name]) is int
    assert type(data['cache_duration']) is str
    assert 'version' not in data  # the store adds it on write


def test_totals() -> None:
    data = build_list(shipped_templates(), 300, random.Random(11))
    games: list[dict[str, Any]] = data['gamelist']

    assert data['total_games'] == 5
    assert data['active_games'] == 3
    assert data['total_players'] == sum(game['active_gamepalye'] for game in games)
    assert data['total_players'] > 0


def test_totals_from_given_games() -> None:
    games = [
        {'game_id': 'a', 'status': 'active', 'active_gamepalye': 15000},
        {'game_id': 'b', 'status': 'active', 'active_gamepalye': 5},
        {'game_id': 'c', 'status': 'maintenance', 'active_gamepalye': 0},
        {'game_id': 'd', 'status': 'coming_soon', 'active_gamepalye': 7},
    ]
    data = list_data(games, 300)

    assert (data['total_games'], data['active_games'], data['total_players']) == (4, 2, 15012)
    assert data['gamelist'] == games
    assert data['gamelist'][0] is not games[0]  # copied, not aliased


def test_empty_list() -> None:
    data = build_list([], 300, random.Random(0))
    assert data['gamelist'] == []
    assert (data['total_games'], data['active_games'], data['total_players']) == (0, 0, 0)


def test_simulated_counts_stay_within_the_configured_ranges() -> None:
    template = simulated('game_1', active=(100, 200), ratio=(0.25, 0.5))
    rng = random.Random(1234)
    seen_active = set()
    for _ in range(500):
        active, live = player_counts(template, rng)
        assert 100 <= active <= 200
        assert int(active * 0.25) <= live <= int(active * 0.5)
        assert live <= active
        seen_active.add(active)
    assert len(seen_active) > 50  # simulated: the counts change from one refresh to the next


def test_simulated_counts_in_built_lists_stay_within_ranges() -> None:
    templates = shipped_templates()
    rng = random.Random(99)
    for _ in range(100):
        data = build_list(templates, 300, rng)
        for game, template in zip(data['gamelist'], templates, strict=True):
            counts = template.players
            if counts.mode == 'simulated':
                assert counts.active_min <= game['active_gamepalye'] <= counts.active_max
                assert 0 <= game['livegameplaye'] <= game['active_gamepalye'] * counts.live_ratio_max


def test_seeded_rng_gives_the_same_counts() -> None:
    first = build_list(shipped_templates(), 300, random.Random(5))['gamelist']
    second = build_list(shipped_templates(), 300, random.Random(5))['gamelist']
    assert first == second


@pytest.mark.parametrize('status', ['maintenance', 'coming_soon'])
def test_non_active_simulated_games_report_zero(status: Status) -> None:
    template = simulated('game_x', status=status, active=(1000, 2000))
    rng = random.Random(8)
    for _ in range(20):
        assert player_counts(template, rng) == (0, 0)
    entry = game_entry(template, rng)
    assert (entry['active_gamepalye'], entry['livegameplaye']) == (0, 0)
    assert entry['status'] == status


def test_fixed_counts() -> None:
    template = fixed('game_f', 15000, 8000)
    rng = random.Random(2)
    for _ in range(10):
        assert player_counts(template, rng) == (15000, 8000)
    entry = game_entry(template, rng)
    assert (entry['active_gamepalye'], entry['livegameplaye']) == (15000, 8000)


def test_fixed_counts_do_not_consume_randomness() -> None:
    rng = random.Random(3)
    state = rng.getstate()
    player_counts(fixed('game_f', 10, 5), rng)
    assert rng.getstate() == state


def test_cache_duration() -> None:
    assert build_list([], 300, random.Random(0))['cache_duration'] == '300 seconds'
    assert build_list([], 300.0, random.Random(0))['cache_duration'] == '300 seconds'
    assert format_cache_duration(30) == '30 seconds'
    assert format_cache_duration(0.5) == '500ms'


def test_updated_at_is_iso_utc_with_z() -> None:
    before = datetime.now(UTC)
    data = build_list(shipped_templates(), 300, random.Random(0))
    after = datetime.now(UTC)

    updated = parse_iso_z(data['updated_at'])
    assert before <= updated <= after


def test_updated_at_can_be_given() -> None:
    assert list_data([], 300, updated_at='2024-01-01T12:00:00Z')['updated_at'] == '2024-01-01T12:00:00Z'


def test_utc_now_iso() -> None:
    before = datetime.now(UTC)
    value = utc_now_iso()
    after = datetime.now(UTC)
    assert value.endswith('Z')
    assert '+' not in value
    assert before <= parse_iso_z(value) <= after


@pytest.mark.parametrize(
    'moment',
    [
        datetime(2026, 11, 26, 3, 14, 55, 793608, tzinfo=UTC),
        datetime(2026, 1, 2, 3, 4, 5, 0, tzinfo=UTC),  # microsecond 0: still six digits
        datetime(1999, 12, 31, 23, 59, 59, 999999, tzinfo=UTC),
    ],
)
def test_utc_now_iso_writes_what_the_prototype_wrote(monkeypatch: pytest.MonkeyPatch, moment: datetime) -> None:
    class Frozen(datetime):
        @classmethod
        def now(cls, tz: Any = None) -> Frozen:
            return cls.fromtimestamp(moment.timestamp(), tz)

    monkeypatch.setattr(lists, 'datetime', Frozen)
    assert utc_now_iso() == moment.strftime('%Y-%m-%dT%H:%M:%S.%fZ')


def test_envelope_shape() -> None:
    data = build_list(shipped_templates(), 300, random.Random(0)) | {'version': 7}

    message = envelope(data, 'game_list:updated')

    assert list(message) == ['status', 'message', 'data', 'timestamp', 'event']
    assert message['status'] == 'success'
    assert message['message'] == 'Game list has been updated' == UPDATED_MESSAGE
    assert message['data'] == data
    assert message['data']['version'] == 7
    assert message['event'] == 'game_list:updated'
    parse_iso_z(message['timestamp'])


def test_main_screen_envelope() -> None:
    message = envelope({'gamelist': []}, 'main:screen', MAIN_SCREEN_MESSAGE)

    assert message['message'] == 'Current game list'
    assert message['event'] == 'main:screen'
    assert message['status'] == 'success'
    assert set(message) == {'status', 'message', 'data', 'timestamp', 'event'}
