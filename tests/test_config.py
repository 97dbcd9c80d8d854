"""load_settings: a valid file becomes a frozen Settings; every problem of a bad one is listed, with its position."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
from pathlib import Path

import pytest

from gamelist_service.config.loader import load_settings
from gamelist_service.config.schema import schema, schema_text
from gamelist_service.config.settings import PlayerCounts, Settings
from gamelist_service.errors import ConfigError, GamelistError

from .helpers import ROOT, SHIPPED_CONFIG, shipped_data, write_config

pytestmark = pytest.mark.usefixtures('clean_env')

# A small valid file; the assertions below name its lines and columns, so keep them where they are.
BASE = """\
version: 1
server:
  port: 3000
redis:
  url: embedded
namespaces:
  /: {}
  /gameplay: {list: main}
games:
  - id: poker
    name: Poker
    type: card
    min_players: 2
    max_players: 8
    status: active
    players: {mode: simulated, active: [10, 20]}
  - id: chess
    name: Chess
    type: board
    min_players: 2
    max_players: 2
    status: maintenance
    players: {mode: fixed, active: 0, live: 0}
lists:
  main:
    key: gamelist:main
    ttl: 300s
    games: all
    namespaces: [/, /gameplay]
schedules:
  - name: refresh
    list: main
    every: 30s
"""

DURATION_HELP = 'A positive duration: a string with a unit (500ms, 30s, 5m, 1h) or a number of seconds.'


def edit(*replacements: tuple[str, str], text: str = BASE) -> str:
    """BASE with each (old, new) applied once; old must occur exactly once, so the positions stay known."""
    for old, new in replacements:
        assert text.count(old) == 1, old
        text = text.replace(old, new)
    return text


def write(tmp_path: Path, text: str, name: str = 'games.yaml') -> Path:
    path = tmp_path / name
    path.write_text(text, encoding='utf-8')
    return path


def problems(path: Path, env: dict[str, str] | None = None) -> list[str]:
    """The problem lines of a file that must not load, with the file's path taken off the front."""
    with pytest.raises(ConfigError) as info:
        load_settings(path, {} if env is None else env)
    prefix = f'{path}:'
    assert all(line.startswith(prefix) for line in info.value.lines), info.value.lines
    return [line.removeprefix(prefix) for line in info.value.lines]


def problems_in(tmp_path: Path, text: str, env: dict[str, str] | None = None) -> list[str]:
    return problems(write(tmp_path, text), env)


# --- valid files -------------------------------------------------------------------------------------------------


def test_base_file_loads(tmp_path: Path) -> None:
    path = write(tmp_path, BASE)
    settings = load_settings(path, {})
    assert isinstance(settings, Settings)
    assert settings.source == path
    assert [g.id for g in settings.games] == ['poker', 'chess']
    assert settings.games[0].players == PlayerCounts('simulated', 10, 20, 0.3, 0.8)
    assert settings.games[1].players == PlayerCounts('fixed', 0, 0, live_fixed=0)
    assert settings.games[1].status == 'maintenance'
    main = settings.get_list('main')
    assert main.games == ('poker', 'chess')  # "all", in file order
    assert main.ttl_s == 300.0
    assert main.namespaces == ('/', '/gameplay')
    assert settings.templates_for(main) == settings.games
    assert settings.get_namespace('/gameplay').list == 'main'
    assert settings.schedules[0].interval_s == 30.0
    assert settings.schedules[0].cron is None


def test_defaults_are_filled_in(tmp_path: Path) -> None:
    settings = load_settings(write(tmp_path, edit(('server:\n  port: 3000\n', 'server: {}\n'))), {})
    assert settings.server.host == '127.0.0.1'
    assert settings.server.port == 3000
    assert settings.server.cors_allowed_origins == ('http://localhost:3000', 'http://127.0.0.1:3000')
    assert settings.server.transports == ()  # not given: serve picks both, or websocket only with --workers N
    assert settings.server.ping_interval_s == 25.0
    assert settings.server.ping_timeout_s == 20.0
    assert settings.server.max_http_buffer_size == 65536
    assert settings.redis.url == 'embedded'
    assert settings.redis.embedded
    assert settings.redis.session_ttl_s == 3600.0
    assert settings.redis.user_ttl_s == 86400.0
    assert settings.redis.state_dir == Path('.gamelist')
    assert settings.redis.persistence is False
    assert settings.lists[0].event == 'game_list:updated'
    root = settings.get_namespace('/')
    assert root.list == 'main'  # the first list that broadcasts to it
    assert root.send_list_on_connect is False
    schedule = settings.schedules[0]
    assert (schedule.jitter_s, schedule.max_runs, schedule.run_at_start) == (0.0, None, True)
    assert re.fullmatch(r'\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ', settings.games[0].created_at)


def test_explicit_values_override_defaults(tmp_path: Path) -> None:
    text = edit(
        ('  port: 3000\n', '  port: 8080\n  host: 0.0.0.0\n  transports: [websocket]\n  ping_interval: 500ms\n'),
        ('  url: embedded\n', '  url: redis://cache:6379/2\n  session_ttl: 5m\n  embedded: {state_dir: /var/gl}\n'),
        ('    every: 30s\n', '    cron: "*/5 * * * *"\n    max_runs: 3\n    jitter: 2s\n'),
    )
    settings = load_settings(write(tmp_path, text), {})
    assert (settings.server.port, settings.server.host) == (8080, '0.0.0.0')
    assert settings.server.transports == ('websocket',)
    assert settings.server.ping_interval_s == 0.5
    assert settings.redis.url == 'redis://cache:6379/2'
    assert not settings.redis.embedded
    assert settings.redis.session_ttl_s == 300.0
    assert settings.redis.state_dir == Path('/var/gl')
    schedule = settings.schedules[0]
    assert (schedule.cron, schedule.interval_s, schedule.max_runs, schedule.jitter_s) == ('*/5 * * * *', None, 3, 2.0)
    assert schedule.run_at_start is False  # cron schedules wait for their first tick by default


def test_shipped_config_is_valid() -> None:
    settings = load_settings(SHIPPED_CONFIG, {})
    assert len(settings.games) == 5
    assert [lst.name for lst in settings.lists] == ['current']
    assert {ns.name for ns in settings.namespaces} == {'/', '/gameplay'}
    assert settings.server.host == '127.0.0.1'  # ${GAMELIST_HOST:-127.0.0.1}
    assert settings.redis.embedded
    assert settings.schedules[0].interval_s == 30.0


def test_shipped_config_names_the_schema_on_its_first_line() -> None:
    first = SHIPPED_CONFIG.read_text(encoding='utf-8').splitlines()[0]
    match = re.fullmatch(r'# yaml-language-server: \$schema=(\S+)', first)
    assert match, first
    target = (SHIPPED_CONFIG.parent / match.group(1)).resolve()
    assert target == (ROOT / 'schemas' / 'games.schema.json').resolve()
    assert target.is_file()
    assert json.loads(target.read_text(encoding='utf-8')) == schema()
    assert schema_text() == target.read_text(encoding='utf-8')


def test_shipped_data_round_trips_through_a_written_file(tmp_path: Path) -> None:
    data = shipped_data()
    data['server']['port'] = 4321
    settings = load_settings(write_config(tmp_path / 'games.yaml', data), {})
    assert settings.server.port == 4321
    assert len(settings.games) == 5


def test_settings_are_frozen(tmp_path: Path) -> None:
    settings = load_settings(write(tmp_path, BASE), {})
    with pytest.raises(dataclasses.FrozenInstanceError):
        settings.digest = 'x'  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        settings.server.port = 1  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        settings.games[0].players.active_max = 1  # type: ignore[misc]
    assert isinstance(settings.games, tuple)
    assert isinstance(settings.server.cors_allowed_origins, tuple)


def test_digest_is_the_sha256_of_the_file_bytes(tmp_path: Path) -> None:
    path = write(tmp_path, BASE)
    first = load_settings(path, {})
    assert first.digest == hashlib.sha256(path.read_bytes()).hexdigest()
    assert load_settings(path, {}).digest == first.digest
    path.write_text('# a comment changes the file\n' + BASE, encoding='utf-8')
    assert load_settings(path, {}).digest != first.digest


def test_path_may_be_a_string(tmp_path: Path) -> None:
    path = write(tmp_path, BASE)
    assert load_settings(str(path), {}).source == path


# --- durations ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ('written', 'seconds'),
    [('500ms', 0.5), ('30s', 30.0), ('5m', 300.0), ('1h', 3600.0), ('1.5m', 90.0), ('90', 90.0), ('0.25', 0.25)],
)
def test_durations_in_the_file(tmp_path: Path, written: str, seconds: float) -> None:
    text = edit(('    ttl: 300s\n', f'    ttl: {written}\n'), ('    every: 30s\n', f'    every: {written}\n'))
    settings = load_settings(write(tmp_path, text), {})
    assert settings.lists[0].ttl_s == seconds
    assert settings.schedules[0].interval_s == seconds


@pytest.mark.parametrize(
    ('written', 'shown'),
    [('0s', "'0s'"), ('0', '0'), ('-5', '-5'), ('5 minutes', "'5 minutes'"), ('1d', "'1d'"), ('"30"', "'30'")],
)
def test_ttl_must_be_a_positive_duration(tmp_path: Path, written: str, shown: str) -> None:
    text = edit(('    ttl: 300s\n', f'    ttl: {written}\n'))
    assert problems_in(tmp_path, text) == [f'27:10: lists.main.ttl: {shown} is not a valid duration: {DURATION_HELP}']


def test_duration_of_the_wrong_type(tmp_path: Path) -> None:
    text = edit(('    ttl: 300s\n', '    ttl: true\n'))
    assert problems_in(tmp_path, text) == ["27:10: lists.main.ttl: True is not of type 'string', 'number'"]


def test_jitter_may_be_zero_but_not_negative(tmp_path: Path) -> None:
    assert load_settings(write(tmp_path, edit(('    every: 30s\n', '    every: 30s\n    jitter: 0\n'))), {})
    text = edit(('    every: 30s\n', '    every: 30s\n    jitter: -1s\n'))
    assert problems_in(tmp_path, text) == [
        "34:13: schedules[0].jitter: '-1s' is not a valid duration: A duration that may be zero."
    ]


# --- schema problems ---------------------------------------------------------------------------------------------


def test_misspelt_key_is_an_error_with_a_suggestion(tmp_path: Path) -> None:
    text = edit(('  port: 3000\n', '  port: 3000\n  ping_timeuot: 20s\n'))
    (problem,) = problems_in(tmp_path, text)
    head, allowed = problem.split('; allowed: ')
    assert head == "4:3: server.ping_timeuot: unknown key 'ping_timeuot' (did you mean 'ping_timeout'?)"
    assert allowed.split(', ') == sorted(schema()['properties']['server']['properties'])


def test_unknown_top_level_key(tmp_path: Path) -> None:
    (problem,) = problems_in(tmp_path, BASE + 'extras: 1\n')
    head, allowed = problem.split('; allowed: ')
    assert head == "34:1: extras: unknown key 'extras'"
    assert allowed.split(', ') == sorted(schema()['properties'])


def test_unknown_key_deep_inside_a_game(tmp_path: Path) -> None:
    text = edit(('{mode: fixed, active: 0, live: 0}', '{mode: fixed, active: 0, live: 0, lvie: 1}'))
    assert problems_in(tmp_path, text) == [
        "23:48: games[1].players.lvie: unknown key 'lvie' (did you mean 'live'?); allowed: active, live, mode"
    ]


@pytest.mark.parametrize(
    ('port', 'message'),
    [
        ('0', '0 is less than the minimum of 1'),
        ('65536', '65536 is greater than the maximum of 65535'),
        ('"3000"', "'3000' is not of type 'integer'"),
        ('3000.5', "3000.5 is not of type 'integer'"),
    ],
)
def test_port_must_be_in_range(tmp_path: Path, port: str, message: str) -> None:
    text = edit(('  port: 3000\n', f'  port: {port}\n'))
    assert problems_in(tmp_path, text) == [f'3:9: server.port: {message}']


def test_ports_at_the_bounds_are_valid(tmp_path: Path) -> None:
    for port in (1, 65535):
        settings = load_settings(write(tmp_path, edit(('  port: 3000\n', f'  port: {port}\n'))), {})
        assert settings.server.port == port


def test_missing_required_key_is_reported_at_its_parent(tmp_path: Path) -> None:
    text = edit(('    name: Chess\n', ''))
    assert problems_in(tmp_path, text) == ["17:5: games[1]: 'name' is a required property"]


def test_missing_top_level_section(tmp_path: Path) -> None:
    assert problems_in(tmp_path, BASE.replace('version: 1\n', '')) == ["1:1: (root): 'version' is a required property"]


def test_version_must_be_1(tmp_path: Path) -> None:
    assert problems_in(tmp_path, edit(('version: 1\n', 'version: 2\n'))) == ['1:10: version: 1 was expected']


def test_bad_enum_value(tmp_path: Path) -> None:
    text = edit(('    status: maintenance\n', '    status: broken\n'))
    assert problems_in(tmp_path, text) == [
        "22:13: games[1].status: 'broken' is not one of ['active', 'maintenance', 'coming_soon']"
    ]


def test_redis_url_scheme(tmp_path: Path) -> None:
    text = edit(('  url: embedded\n', '  url: http://cache:6379\n'))
    assert problems_in(tmp_path, text) == [
        "5:8: redis.url: 'http://cache:6379' is not embedded, redis://, rediss://, redis+sentinel:// or unix://"
    ]


def test_namespace_names_must_start_with_a_slash(tmp_path: Path) -> None:
    text = edit(('  /gameplay: {list: main}\n', '  /gameplay: {list: main}\n  lobby: {list: main}\n'))
    assert problems_in(tmp_path, text) == ["9:3: namespaces: 'lobby' does not match '^/[A-Za-z0-9_\\\\-/]*$'"]


def test_list_games_must_be_all_or_a_non_empty_list_of_unique_ids(tmp_path: Path) -> None:
    assert problems_in(tmp_path, edit(('    games: all\n', '    games: []\n'))) == [
        '28:12: lists.main.games: [] should be non-empty'
    ]
    assert problems_in(tmp_path, edit(('    games: all\n', '    games: [poker, poker]\n'))) == [
        "28:12: lists.main.games: ['poker', 'poker'] has non-unique elements"
    ]
    # a string is not a list of one-letter ids: one problem, not one per letter
    assert problems_in(tmp_path, edit(('    games: all\n', '    games: poker\n'))) == [
        "28:12: lists.main.games: 'all' was expected"
    ]
    assert problems_in(tmp_path, edit(('    games: all\n', '    games: [poker, 7]\n'))) == [
        "28:20: lists.main.games[1]: 7 is not of type 'string'"
    ]


@pytest.mark.parametrize(
    'schedule',
    ['    every: 30s\n    cron: "* * * * *"\n', ''],
    ids=['both', 'neither'],
)
def test_schedule_needs_exactly_one_of_every_and_cron(tmp_path: Path, schedule: str) -> None:
    text = edit(('    every: 30s\n', schedule))
    assert problems_in(tmp_path, text) == [
        "31:5: schedules[0]: needs exactly one of 'every' (an interval) or 'cron' (an expression)"
    ]


# --- cross-field problems ----------------------------------------------------------------------------------------


def test_min_players_greater_than_max_players(tmp_path: Path) -> None:
    text = edit(('    min_players: 2\n    max_players: 8\n', '    min_players: 9\n    max_players: 8\n'))
    assert problems_in(tmp_path, text) == [
        '13:18: games[0].min_players: min_players (9) is greater than max_players (8)'
    ]


def test_min_players_equal_to_max_players_is_valid(tmp_path: Path) -> None:
    settings = load_settings(write(tmp_path, BASE), {})
    assert (settings.games[1].min_players, settings.games[1].max_players) == (2, 2)


def test_schedule_naming_a_list_that_does_not_exist(tmp_path: Path) -> None:
    text = edit(('    list: main\n', '    list: mian\n'))
    assert problems_in(tmp_path, text) == [
        "32:11: schedules[0].list: no list named 'mian' (did you mean 'main'?); known: main"
    ]


def test_duplicate_game_id(tmp_path: Path) -> None:
    text = edit(('  - id: chess\n', '  - id: poker\n'))
    assert problems_in(tmp_path, text) == ["17:9: games[1].id: duplicate game id 'poker'"]


def test_duplicate_schedule_name(tmp_path: Path) -> None:
    text = BASE + '  - name: refresh\n    list: main\n    every: 1m\n'
    assert problems_in(tmp_path, text) == ["34:11: schedules[1].name: duplicate schedule name 'refresh'"]


def test_two_lists_with_the_same_redis_key(tmp_path: Path) -> None:
    text = edit(
        (
            '    namespaces: [/, /gameplay]\n',
            (
                '    namespaces: [/, /gameplay]\n  other:\n    key: gamelist:main\n    ttl: 1m\n    games: [chess]\n'
                '    namespaces: [/]\n'
            ),
        )
    )
    assert problems_in(tmp_path, text) == [
        "31:10: lists.other.key: Redis key 'gamelist:main' is already used by list 'main'"
    ]


@pytest.mark.parametrize(
    ('cron', 'column'),
    [('"61 * * * *"', 11), ('"* * * * * *"', 11), ('"every five minutes"', 11), ("'@daily'", 11)],
)
def test_cron_expression_must_parse(tmp_path: Path, cron: str, column: int) -> None:
    text = edit(('    every: 30s\n', f'    cron: {cron}\n'))
    shown = repr(cron[1:-1])
    assert problems_in(tmp_path, text) == [
        (
            f'33:{column}: schedules[0].cron: {shown} is not a valid cron expression '
            '(five fields: minute hour day month weekday)'
        )
    ]


def test_valid_cron_expression(tmp_path: Path) -> None:
    settings = load_settings(write(tmp_path, edit(('    every: 30s\n', '    cron: "0 */2 * * 1-5"\n'))), {})
    assert settings.schedules[0].cron == '0 */2 * * 1-5'


def test_list_naming_an_unknown_game(tmp_path: Path) -> None:
    text = edit(('    games: all\n', '    games: [poker, chesss]\n'))
    assert problems_in(tmp_path, text) == [
        "28:20: lists.main.games[1]: no game named 'chesss' (did you mean 'chess'?); known: chess, poker"
    ]


def test_list_naming_an_unknown_namespace(tmp_path: Path) -> None:
    text = edit(('    namespaces: [/, /gameplay]\n', '    namespaces: [/, /gameplay, /lobby]\n'))
    assert problems_in(tmp_path, text) == [
        "29:32: lists.main.namespaces[2]: no namespace named '/lobby'; known: /, /gameplay"
    ]


def test_namespace_naming_an_unknown_list(tmp_path: Path) -> None:
    text = edit(('  /gameplay: {list: main}\n', '  /gameplay: {list: man}\n'))
    assert problems_in(tmp_path, text) == [
        """8:21: namespaces["/gameplay"].list: no list named 'man' (did you mean 'main'?); known: main"""
    ]


def test_namespace_that_no_list_broadcasts_to(tmp_path: Path) -> None:
    text = edit(('  /: {}\n', '  /: {}\n  /lobby: {}\n'))
    assert problems_in(tmp_path, text) == [
        '8:11: namespaces["/lobby"]: no list broadcasts to this namespace; name one with list: or add it to a list'
    ]


def test_fixed_live_players_above_active(tmp_path: Path) -> None:
    text = edit(('{mode: fixed, active: 0, live: 0}', '{mode: fixed, active: 3, live: 5}'))
    assert problems_in(tmp_path, text) == ['23:45: games[1].players.live: live (5) is greater than active (3)']


def test_simulated_ranges_must_be_ordered(tmp_path: Path) -> None:
    text = edit(('active: [10, 20]}', 'active: [20, 10], live_ratio: [0.9, 0.1]}'))
    assert problems_in(tmp_path, text) == [
        '16:40: games[0].players.active: range minimum 20 is greater than its maximum 10',
        '16:62: games[0].players.live_ratio: range minimum 0.9 is greater than its maximum 0.1',
    ]


# --- every problem at once ---------------------------------------------------------------------------------------


def test_every_problem_is_listed_in_file_order(tmp_path: Path) -> None:
    text = edit(
        ('  port: 3000\n', '  port: 70000\n'),
        ('    min_players: 2\n    max_players: 8\n', '    min_players: 9\n    max_players: 8\n'),
        ('  - id: chess\n', '  - id: poker\n'),
        ('    ttl: 300s\n', '    ttl: 0s\n'),
        ('    list: main\n', '    list: nope\n'),
    )
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_settings(path, {})
    assert info.value.lines == (
        f'{path}:3:9: server.port: 70000 is greater than the maximum of 65535',
        f'{path}:13:18: games[0].min_players: min_players (9) is greater than max_players (8)',
        f"{path}:17:9: games[1].id: duplicate game id 'poker'",
        f"{path}:27:10: lists.main.ttl: '0s' is not a valid duration: {DURATION_HELP}",
        f"{path}:32:11: schedules[0].list: no list named 'nope'; known: main",
    )
    assert info.value.path == str(path)
    assert info.value.message.splitlines()[0] == f'{path}: 5 problems'
    assert isinstance(info.value, GamelistError)


def test_a_game_of_the_wrong_shape_does_not_hide_the_problems_of_the_others(tmp_path: Path) -> None:
    text = edit(
        ('    players: {mode: simulated, active: [10, 20]}\n', ''),
        ('    min_players: 2\n    max_players: 2\n', '    min_players: 3\n    max_players: 2\n'),
    )
    assert problems_in(tmp_path, text) == [
        "10:5: games[0]: 'players' is a required property",
        '19:18: games[1].min_players: min_players (3) is greater than max_players (2)',
    ]


def test_a_schedule_of_the_wrong_shape_does_not_hide_the_next_one(tmp_path: Path) -> None:
    text = edit(('    list: main\n', '')) + '  - name: nightly\n    list: mian\n    cron: "0 3 * * *"\n'
    assert problems_in(tmp_path, text) == [
        "31:5: schedules[0]: 'list' is a required property",
        "34:11: schedules[1].list: no list named 'mian' (did you mean 'main'?); known: main",
    ]


# --- YAML itself -------------------------------------------------------------------------------------------------


def test_yaml_syntax_error_has_its_position(tmp_path: Path) -> None:
    text = edit(('  port: 3000\n', '  port: 3000\n   host: x\n'))
    assert problems_in(tmp_path, text) == ['4:8: (root): YAML syntax error: mapping values are not allowed here']


def test_unclosed_flow_sequence(tmp_path: Path) -> None:
    lines = problems_in(tmp_path, 'version: 1\ngames: [a, b\n')
    assert len(lines) == 1
    assert lines[0].startswith('3:1: (root): YAML syntax error: ')
    assert "expected ',' or ']'" in lines[0]


def test_tab_indentation_is_a_syntax_error(tmp_path: Path) -> None:
    [line] = problems_in(tmp_path, 'version: 1\n\tserver: {}\n')
    assert line.startswith('2:1: (root): YAML syntax error: ')
    assert "'\\t'" in line


def test_two_documents_in_one_file(tmp_path: Path) -> None:
    [line] = problems_in(tmp_path, BASE + '---\nversion: 1\n')
    assert line.startswith('34:1: (root): YAML syntax error: ')


def test_duplicate_keys(tmp_path: Path) -> None:
    text = edit(('  port: 3000\n', '  port: 3000\n  port: 3001\n'), ('    ttl: 300s\n', '    ttl: 300s\n    ttl: 5m\n'))
    assert problems_in(tmp_path, text) == [
        "4:3: server.port: duplicate key 'port'",
        "29:5: lists.main.ttl: duplicate key 'ttl'",
    ]


def test_mapping_key_that_is_not_a_scalar(tmp_path: Path) -> None:
    assert problems_in(tmp_path, '? [a, b]\n: 1\n' + BASE) == ['1:3: (root): mapping keys must be plain strings']


@pytest.mark.parametrize('text', ['', '\n\n', '# only a comment\n', '---\n'])
def test_empty_file(tmp_path: Path, text: str) -> None:
    assert problems_in(tmp_path, text) == [
        '1:1: (root): the file is empty; it must be a mapping (see gamelist-service schema)'
    ]


@pytest.mark.parametrize(
    ('text', 'message'),
    [
        ('- version\n- 1\n', "['version', 1] is not of type 'object'"),
        ('just words\n', "'just words' is not of type 'object'"),
        ('42\n', "42 is not of type 'object'"),
    ],
)
def test_root_that_is_not_a_mapping(tmp_path: Path, text: str, message: str) -> None:
    assert problems_in(tmp_path, text) == [f'1:1: (root): {message}']


def test_bad_explicit_tag_is_a_problem_not_a_traceback(tmp_path: Path) -> None:
    text = edit(('  port: 3000\n', '  port: !!int three\n'))
    assert problems_in(tmp_path, text) == ["3:9: server.port: invalid literal for int() with base 10: 'three'"]


def test_alias_cycle_is_a_problem_not_a_traceback(tmp_path: Path) -> None:
    text = edit(('    namespaces: [/, /gameplay]\n', '    namespaces: &ns [/, *ns]\n'))
    # an alias has no position of its own in PyYAML: the problem points at the anchored value
    assert problems_in(tmp_path, text) == [
        '29:17: lists.main.namespaces[1]: an alias refers to a value that contains it (a cycle)'
    ]


def test_merge_keys_fill_in_what_the_mapping_does_not_set(tmp_path: Path) -> None:
    text = edit(
        ('  - id: poker\n', '  - &poker\n    id: poker\n'),
        (
            (
                '  - id: chess\n    name: Chess\n    type: board\n    min_players: 2\n    max_players: 2\n'
                '    status: maintenance\n    players: {mode: fixed, active: 0, live: 0}\n'
            ),
            '  - <<: *poker\n    id: blackjack\n    name: Blackjack\n    max_players: 7\n',
        ),
    )
    settings = load_settings(write(tmp_path, text), {})
    blackjack = settings.games[1]
    assert (blackjack.id, blackjack.name, blackjack.max_players) == ('blackjack', 'Blackjack', 7)
    assert (blackjack.type, blackjack.min_players, blackjack.status) == ('card', 2, 'active')
    assert blackjack.players == settings.games[0].players


def test_merging_a_scalar_is_a_problem(tmp_path: Path) -> None:
    text = edit(('  /: {}\n', '  /: {<<: 5}\n'))
    assert problems_in(tmp_path, text) == ['7:11: namespaces["/"]: "<<" must merge a mapping or a list of mappings']


def test_unquoted_timestamp_stays_a_string(tmp_path: Path) -> None:
    text = edit(('    status: active\n', '    status: active\n    created_at: 2024-05-01T12:00:00Z\n'))
    assert load_settings(write(tmp_path, text), {}).games[0].created_at == '2024-05-01T12:00:00Z'
    text = edit(('    status: active\n', '    status: active\n    created_at: 2024-05-01\n'))
    assert problems_in(tmp_path, text) == [
        (
            "16:17: games[0].created_at: '2024-05-01' does not match "
            "'^[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}(\\\\.[0-9]+)?Z$'"
        )
    ]


def test_crlf_line_endings_keep_positions(tmp_path: Path) -> None:
    path = tmp_path / 'games.yaml'
    path.write_bytes(edit(('    ttl: 300s\n', '    ttl: 0s\n')).replace('\n', '\r\n').encode())
    assert problems(path) == [f"27:10: lists.main.ttl: '0s' is not a valid duration: {DURATION_HELP}"]


# --- files that cannot be read -----------------------------------------------------------------------------------


def test_missing_file(tmp_path: Path) -> None:
    path = tmp_path / 'nope.yaml'
    assert problems(path) == ['1:1: (root): cannot read the file: No such file or directory']


def test_directory_instead_of_a_file(tmp_path: Path) -> None:
    assert problems(tmp_path) == ['1:1: (root): cannot read the file: Is a directory']


def test_unreadable_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = write(tmp_path, BASE)

    def denied(self: Path) -> bytes:
        raise PermissionError(13, 'Permission denied', str(self))

    monkeypatch.setattr(Path, 'read_bytes', denied)
    assert problems(path) == ['1:1: (root): cannot read the file: Permission denied']


def test_file_that_is_not_utf8_points_at_the_bad_byte(tmp_path: Path) -> None:
    path = tmp_path / 'games.yaml'
    path.write_bytes(BASE.replace('name: Chess', 'name: Ch\xe8ss').encode('latin-1'))
    [line] = problems(path)
    assert line.startswith("18:13: (root): cannot read the file: 'utf-8' codec can't decode byte 0xe8 in position ")


def test_utf8_byte_order_mark_is_accepted(tmp_path: Path) -> None:
    path = tmp_path / 'games.yaml'
    path.write_bytes(b'\xef\xbb\xbf' + BASE.encode())
    assert load_settings(path, {}).games[0].id == 'poker'


# --- environment -------------------------------------------------------------------------------------------------


def test_env_variable_is_expanded(tmp_path: Path) -> None:
    text = edit(('    key: gamelist:main\n', '    key: gamelist:${STAGE}:main\n'))
    assert load_settings(write(tmp_path, text), {'STAGE': 'prod'}).lists[0].key == 'gamelist:prod:main'


def test_env_default_is_used_when_unset_or_empty(tmp_path: Path) -> None:
    path = write(tmp_path, edit(('    key: gamelist:main\n', '    key: gamelist:${STAGE:-dev}:main\n')))
    assert load_settings(path, {}).lists[0].key == 'gamelist:dev:main'
    assert load_settings(path, {'STAGE': ''}).lists[0].key == 'gamelist:dev:main'
    assert load_settings(path, {'STAGE': 'qa'}).lists[0].key == 'gamelist:qa:main'


def test_plain_env_value_is_typed_like_an_inline_one(tmp_path: Path) -> None:
    path = write(tmp_path, edit(('  port: 3000\n', '  port: ${P:-3000}\n'), ('  url: embedded\n', '  url: ${URL}\n')))
    settings = load_settings(path, {'URL': 'redis://h:1/0'})
    assert settings.server.port == 3000
    assert isinstance(settings.server.port, int)
    assert load_settings(path, {'P': '4000', 'URL': 'embedded'}).server.port == 4000
    text = edit(
        ('  /gameplay: {list: main}\n', '  /gameplay:\n    list: main\n    send_list_on_connect: ${SEND:-false}\n'),
        ('    ttl: 300s\n', '    ttl: ${TTL}\n'),
    )
    settings = load_settings(write(tmp_path, text), {'SEND': 'true', 'TTL': '90'})
    assert settings.get_namespace('/gameplay').send_list_on_connect is True
    assert load_settings(write(tmp_path, text), {'TTL': '90'}).get_namespace('/gameplay').send_list_on_connect is False
    assert settings.lists[0].ttl_s == 90.0


def test_quoted_env_value_stays_a_string(tmp_path: Path) -> None:
    text = edit(('  port: 3000\n', '  port: "${P:-3000}"\n'))
    assert problems_in(tmp_path, text) == ["3:9: server.port: '3000' is not of type 'integer'"]
    text = edit(('    name: Poker\n', "    name: '${NAME:-123}'\n"))
    assert load_settings(write(tmp_path, text), {}).games[0].name == '123'


def test_unset_env_variable_without_default_is_one_problem(tmp_path: Path) -> None:
    text = edit(
        ('  port: 3000\n', '  port: ${PORT_FROM_ENV}\n'),
        ('    min_players: 2\n    max_players: 8\n', '    min_players: ${MIN}\n    max_players: 8\n'),
    )
    assert problems_in(tmp_path, text) == [
        '3:9: server.port: environment variable PORT_FROM_ENV is not set (use ${PORT_FROM_ENV:-default})',
        '13:18: games[0].min_players: environment variable MIN is not set (use ${MIN:-default})',
    ]


def test_double_dollar_is_a_literal_dollar(tmp_path: Path) -> None:
    text = edit(('    key: gamelist:main\n', '    key: "$${HOME}:cost$$5"\n'))
    assert load_settings(write(tmp_path, text), {'HOME': '/root'}).lists[0].key == '${HOME}:cost$5'


def test_environment_is_read_from_os_environ_by_default(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = write(tmp_path, edit(('    key: gamelist:main\n', '    key: ${LIST_KEY}\n')))
    monkeypatch.setenv('LIST_KEY', 'from:environ')
    monkeypatch.setenv('GAMELIST_PORT', '5123')
    settings = load_settings(path)
    assert settings.lists[0].key == 'from:environ'
    assert settings.server.port == 5123


def test_gamelist_port_and_redis_url_override_the_file(tmp_path: Path) -> None:
    path = write(tmp_path, BASE)
    env = {'GAMELIST_PORT': '8081', 'GAMELIST_REDIS_URL': 'rediss://secure:6380/1', 'GAMELIST_STATE_DIR': '/tmp/gl'}
    settings = load_settings(path, env)
    assert settings.server.port == 8081
    assert settings.redis.url == 'rediss://secure:6380/1'
    assert not settings.redis.embedded
    assert settings.redis.state_dir == Path('/tmp/gl')
    # empty means not set
    settings = load_settings(path, {'GAMELIST_PORT': '', 'GAMELIST_REDIS_URL': ''})
    assert (settings.server.port, settings.redis.url) == (3000, 'embedded')


@pytest.mark.parametrize('port', ['abc', '0', '65536', '-1', ' 80', '3.5', '\u00b2'])
def test_gamelist_port_is_validated(tmp_path: Path, port: str) -> None:
    assert problems_in(tmp_path, BASE, {'GAMELIST_PORT': port}) == [
        f'3:9: server.port: GAMELIST_PORT={port!r} from the environment is not a port (1-65535)'
    ]


@pytest.mark.parametrize('url', ['http://cache:6379', 'localhost:6379', 'redis://'])
def test_gamelist_redis_url_is_validated(tmp_path: Path, url: str) -> None:
    assert problems_in(tmp_path, BASE, {'GAMELIST_REDIS_URL': url}) == [
        (
            f'5:8: redis.url: GAMELIST_REDIS_URL={url!r} from the environment is not embedded, redis://, rediss://, '
            'redis+sentinel:// or unix://'
        )
    ]


def test_env_problems_are_listed_with_the_file_problems(tmp_path: Path) -> None:
    text = edit(('    ttl: 300s\n', '    ttl: 0s\n'))
    assert problems_in(tmp_path, text, {'GAMELIST_PORT': 'x', 'GAMELIST_REDIS_URL': 'x'}) == [
        "3:9: server.port: GAMELIST_PORT='x' from the environment is not a port (1-65535)",
        (
            "5:8: redis.url: GAMELIST_REDIS_URL='x' from the environment is not embedded, redis://, rediss://, "
            'redis+sentinel:// or unix://'
        ),
        f"27:10: lists.main.ttl: '0s' is not a valid duration: {DURATION_HELP}",
    ]
