"""`gamelist-service validate` and `gamelist-service schema`, called in-process (and once as a real command)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from gamelist_service.cli import main
from gamelist_service.config.schema import schema

from .helpers import ROOT, SHIPPED_CONFIG, shipped_data, write_config

pytestmark = pytest.mark.usefixtures('clean_env')

SHIPPED_SUMMARY = 'OK (5 games, 1 list, 2 namespaces, 1 schedule)'


pytestmark = pytest.mark.usefixtures('restore_logging')


def lines(text: str) -> list[str]:
    return text.splitlines()


def valid_config(tmp_path: Path, name: str, games: int = 5) -> Path:
    data = shipped_data()
    data['games'] = data['games'][:games]
    return write_config(tmp_path / name, data)


def test_validate_the_shipped_file(capsys: pytest.CaptureFixture[str]) -> None:
    assert main('validate', str(SHIPPED_CONFIG)) == 0
    out, err = capsys.readouterr()
    assert lines(out) == [f'{SHIPPED_CONFIG}: {SHIPPED_SUMMARY}']
    assert err == ''


def test_validate_counts_in_the_summary(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = valid_config(tmp_path, 'one.yaml', games=1)
    assert main('validate', str(path)) == 0
    assert lines(capsys.readouterr().out) == [f'{path}: OK (1 game, 1 list, 2 namespaces, 1 schedule)']


def test_validate_an_invalid_file_lists_every_problem(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / 'bad.yaml'
    text = SHIPPED_CONFIG.read_text(encoding='utf-8')
    for old, new in [
        ('  port: 3000\n', '  port: 0\n'),
        ('  ping_timeout: 20s\n', '  ping_timout: 20s\n'),
        ('    min_players: 10\n', '    min_players: 101\n'),
        ('    ttl: 300s\n', '    ttl: 0s\n'),
        ('    list: current\n    every: 30s\n', '    list: curent\n    every: 30s\n'),
    ]:
        assert text.count(old) == 1, old
        text = text.replace(old, new)
    path.write_text(text, encoding='utf-8')
    assert main('validate', str(path)) == 1
    out, err = capsys.readouterr()
    assert out == ''
    assert lines(err) == [
        f'{path}:8:9: server.port: 0 is less than the minimum of 1',
        (
            f"{path}:14:3: server.ping_timout: unknown key 'ping_timout' (did you mean 'ping_timeout'?); allowed: "
            + ', '.join(sorted(schema()['properties']['server']['properties']))
        ),
        f'{path}:64:18: games[4].min_players: min_players (101) is greater than max_players (100)',
        (
            f"{path}:72:10: lists.current.ttl: '0s' is not a valid duration: A positive duration: a string with a unit "
            '(500ms, 30s, 5m, 1h) or a number of seconds.'
        ),
        f"{path}:79:11: schedules[0].list: no list named 'curent' (did you mean 'current'?); known: current",
    ]


def test_validate_a_yaml_syntax_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / 'broken.yaml'
    path.write_text('version: 1\nserver:\n  host: a\n   port: 3\n', encoding='utf-8')
    assert main('validate', str(path)) == 1
    assert lines(capsys.readouterr().err) == [
        f'{path}:4:8: (root): YAML syntax error: mapping values are not allowed here'
    ]


def test_validate_several_files_mixed(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    first = valid_config(tmp_path, 'first.yaml')
    empty = tmp_path / 'empty.yaml'
    empty.write_text('', encoding='utf-8')
    second = valid_config(tmp_path, 'second.yaml', games=2)
    missing = tmp_path / 'missing.yaml'
    dup = tmp_path / 'dup.yaml'
    data = shipped_data()
    data['games'][1]['id'] = 'game_1'
    write_config(dup, data)

    assert main('validate', str(first), str(empty), str(second), str(missing), str(dup)) == 1
    out, err = capsys.readouterr()
    assert lines(out) == [
        f'{first}: {SHIPPED_SUMMARY}',
        f'{second}: OK (2 games, 1 list, 2 namespaces, 1 schedule)',
    ]
    err_lines = lines(err)
    assert err_lines[0] == f'{empty}:1:1: (root): the file is empty; it must be a mapping (see gamelist-service schema)'
    assert err_lines[1] == f'{missing}:1:1: (root): cannot read the file: No such file or directory'
    assert len(err_lines) == 3
    assert err_lines[2].startswith(f'{dup}:')
    assert err_lines[2].endswith(": games[1].id: duplicate game id 'game_1'")


def test_validate_several_valid_files(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    paths = [valid_config(tmp_path, f'{n}.yaml', games=n) for n in (1, 3)]
    assert main('validate', *map(str, paths)) == 0
    out, err = capsys.readouterr()
    assert lines(out) == [
        f'{paths[0]}: OK (1 game, 1 list, 2 namespaces, 1 schedule)',
        f'{paths[1]}: OK (3 games, 1 list, 2 namespaces, 1 schedule)',
    ]
    assert err == ''


def test_validate_reports_bad_environment_overrides(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv('GAMELIST_PORT', '99999')
    monkeypatch.setenv('GAMELIST_REDIS_URL', 'http://nope')
    assert main('validate', str(SHIPPED_CONFIG)) == 1
    out, err = capsys.readouterr()
    assert out == ''
    assert lines(err) == [
        f"{SHIPPED_CONFIG}:8:9: server.port: GAMELIST_PORT='99999' from the environment is not a port (1-65535)",
        (
            f"{SHIPPED_CONFIG}:17:8: redis.url: GAMELIST_REDIS_URL='http://nope' from the environment is not embedded, "
            'redis://, rediss://, redis+sentinel:// or unix://'
        ),
    ]


def test_validate_uses_environment_variables_of_the_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / 'env.yaml'
    path.write_text(
        SHIPPED_CONFIG.read_text(encoding='utf-8').replace('  port: 3000\n', '  port: ${PORT_OF_TEST}\n'),
        encoding='utf-8',
    )
    assert main('validate', str(path)) == 1
    assert lines(capsys.readouterr().err) == [
        f'{path}:8:9: server.port: environment variable PORT_OF_TEST is not set (use ${{PORT_OF_TEST:-default}})'
    ]
    monkeypatch.setenv('PORT_OF_TEST', '3100')
    assert main('validate', str(path)) == 0
    assert lines(capsys.readouterr().out) == [f'{path}: {SHIPPED_SUMMARY}']


def test_validate_needs_a_path(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main('validate')
    assert info.value.code == 2
    assert 'PATH' in capsys.readouterr().err


def test_schema_prints_the_shipped_schema(capsys: pytest.CaptureFixture[str]) -> None:
    assert main('schema') == 0
    out, err = capsys.readouterr()
    schema_file = ROOT / 'schemas' / 'games.schema.json'
    assert out == schema_file.read_text(encoding='utf-8')
    assert json.loads(out) == json.loads(schema_file.read_text(encoding='utf-8'))
    assert json.loads(out)['$schema'] == 'https://json-schema.org/draft/2020-12/schema'
    assert err == ''


def test_validate_as_a_command() -> None:
    env = {name: value for name, value in os.environ.items() if not name.startswith('GAMELIST_')}
    result = subprocess.run(
        [sys.executable, '-m', 'gamelist_service', 'validate', 'config/games.yaml'],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [f'config/games.yaml: {SHIPPED_SUMMARY}']
    assert result.stderr == ''
