"""Hostile configuration files: hypothesis breaks the shipped file (its data and its text) and writes random YAML.

Whatever the file, `load_settings` raises nothing but ConfigError, `validate` prints one `PATH:LINE:COL: field: message`
line per problem and exits 1, and a reload keeps the running settings and records the same lines.
"""

from __future__ import annotations

import copy
import re
import time
import tracemalloc
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gamelist_service.cli import main
from gamelist_service.config.loader import load_settings
from gamelist_service.config.reload import Launch, ReloadStatus, load_for_reload
from gamelist_service.config.settings import Settings
from gamelist_service.config.yamlpos import MAX_DEPTH, MAX_VALUES
from gamelist_service.errors import ConfigError

from .helpers import SHIPPED_CONFIG

pytestmark = pytest.mark.usefixtures('clean_env')

FUZZ = settings(
    max_examples=100,
    deadline=None,
    derandomize=True,  # the same examples on every run: CI stays stable, a failure reproduces
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow, HealthCheck.data_too_large],
)

# A field path as format_path writes it: (root), or games[2].max_players, namespaces["/gameplay"].list, ...
_SEGMENT = r'(?:[A-Za-z_][A-Za-z0-9_]*|\[\d+\]|\["(?:[^"\\]|\\.)*"\])'
_PATH = rf'(?:\(root\)|{_SEGMENT}(?:\.[A-Za-z_][A-Za-z0-9_]*|\[\d+\]|\["(?:[^"\\]|\\.)*"\])*)'
PROBLEM = re.compile(rf'(?P<line>\d+):(?P<column>\d+): (?P<path>{_PATH}): (?P<message>\S.*)')

SHIPPED_TEXT = SHIPPED_CONFIG.read_text(encoding='utf-8')
SHIPPED_DATA: dict[str, Any] = yaml.safe_load(SHIPPED_TEXT)


pytestmark = pytest.mark.usefixtures('restore_logging')


@pytest.fixture(scope='module')
def running() -> Settings:
    """The settings a serve would be running with when the broken file is reloaded."""
    return load_settings(SHIPPED_CONFIG, {})


def assert_problem_lines(path: Path, text: str, lines: tuple[str, ...] | list[str]) -> None:
    """Every line names the file, a line and column inside it, a field path and a message, on one line."""
    assert lines, 'a rejected file must list at least one problem'
    last_line = text.count('\n') + 2  # a problem at the end of a file without a final newline
    prefix = f'{path}:'
    for line in lines:
        assert line.startswith(prefix), line
        assert len(line.splitlines()) == 1, repr(line)
        match = PROBLEM.fullmatch(line[len(prefix) :])
        assert match is not None, repr(line)
        assert 1 <= int(match['line']) <= last_line, line
        assert int(match['column']) >= 1, line


def check_file(
    path: Path, text: str, running: Settings, capsys: pytest.CaptureFixture[str], *, binary: bytes | None = None
) -> tuple[str, ...]:
    """Write the file, then load, validate and reload it; returns its problem lines (empty when it is valid)."""
    if binary is None:
        path.write_text(text, encoding='utf-8', errors='surrogatepass')
    else:
        path.write_bytes(binary)
    try:
        load_settings(path, {})
    except ConfigError as exc:  # any other exception fails the test: that is the property
        lines = exc.lines
        assert_problem_lines(path, text, lines)
    else:
        lines = ()

    capsys.readouterr()
    code = main('validate', str(path))
    out, err = capsys.readouterr()
    if lines:
        assert code == 1
        assert out == ''
        printed = err.splitlines()
        assert_problem_lines(path, text, printed)
        assert len(printed) == len(lines)
    else:
        assert code == 0, err
        assert out.startswith(f'{path}: OK (')

    status = ReloadStatus(digest=running.digest)
    reloaded = load_for_reload(running, Launch(path, {}), status)
    capsys.readouterr()  # what the reload logged
    if lines:
        assert reloaded is None
        assert status.last_attempt_ok is False
        assert status.generation == 1  # still running the first generation
        assert_problem_lines(path, text, status.last_errors)
    else:
        assert reloaded is not None and status.last_attempt_ok
    return lines


# --- strategies -------------------------------------------------------------------------------------------------

SCALARS = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(10**6), max_value=10**6)
    | st.integers(min_value=-(10**80), max_value=10**80)  # huge numbers
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=40)  # any unicode
    | st.sampled_from(['', 'all', '30s', '0s', '-1s', '5m', 'embedded', '/', '* * * * *', 'x' * 300, '${UNSET}'])
)
VALUES = st.recursive(
    SCALARS,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=12), children, max_size=4),
    max_leaves=12,
)


def paths_of(data: Any, path: tuple[Any, ...] = ()) -> Iterator[tuple[Any, ...]]:
    yield path
    if isinstance(data, dict):
        for key, value in data.items():
            yield from paths_of(value, (*path, key))
    elif isinstance(data, list):
        for i, value in enumerate(data):
            yield from paths_of(value, (*path, i))


def nested(value: Any, depth: int, as_map: bool) -> Any:
    for _ in range(depth):
        value = {'k': value} if as_map else [value]
    return value


def mutate(draw: st.DrawFn, data: dict[str, Any]) -> dict[str, Any]:
    """One change at one place of the data: delete, replace, nest, rename, add a key or repeat an item."""
    data = copy.deepcopy(data)
    path = draw(st.sampled_from(sorted(paths_of(data), key=repr)))
    if not path:
        return data
    *head, last = path
    parent: Any = data
    for part in head:
        parent = parent[part]
    op = draw(st.sampled_from(['delete', 'replace', 'nest', 'rename', 'add', 'repeat']))
    if op == 'delete':
        del parent[last]
    elif op == 'replace':
        parent[last] = draw(VALUES)
    elif op == 'nest':
        depth = draw(st.integers(min_value=1, max_value=MAX_DEPTH + 20))
        parent[last] = nested(parent[last], depth, draw(st.booleans()))
    elif op == 'rename' and isinstance(parent, dict):
        new = draw(st.text(max_size=12) | st.just(str(last)[:-1]) | st.just(str(last).upper()))
        parent[new] = parent.pop(last)
    elif op == 'add' and isinstance(parent, dict):
        parent[draw(st.text(max_size=12))] = draw(VALUES)
    elif isinstance(parent, list):  # repeat: a second game with the same id, a second schedule with the same name
        parent.insert(last, copy.deepcopy(parent[last]))
    else:
        parent[last] = draw(VALUES)
    return data


@st.composite
def broken_data(draw: st.DrawFn) -> str:
    data = SHIPPED_DATA
    for _ in range(draw(st.integers(min_value=1, max_value=3))):
        data = mutate(draw, data)
    return yaml.safe_dump(data, allow_unicode=draw(st.booleans()), sort_keys=False)


SNIPPETS = st.sampled_from(
    [
        '[', ']', '{', '}', ':', ': ', '- ', '"', "'", '&a ', '*a', '*nowhere', '!!int ', '!!float ', '!!binary ',
        '!!python/object/apply:os.system ', '!!set ', '<<: *a\n', '<<: 3\n', '%YAML 1.1\n', '---\n', '...\n', '? ',
        '|', '>', '#', '@', '`', '\t', '\x00', '\x07', '\x85', '\u2028', '\ufeff', 'é', '🎲', '${', '${NOPE}',
        '${X:-{a: 1}}', '$$', '.nan', '.inf', '1e400', '0x1F', '0o17', '1_000', '2024-01-01', '~', 'null', 'yes',
        '9' * 5000, '  ', '\n', '\n\n', '\r\n', '\r',
    ]
)  # fmt: skip


@st.composite
def damaged_text(draw: st.DrawFn) -> str:
    """The shipped file's text with YAML damage: lines lost, repeated, re-indented, tabs, stray tokens, truncation."""
    lines = SHIPPED_TEXT.splitlines(keepends=True)
    for _ in range(draw(st.integers(min_value=1, max_value=4))):
        i = draw(st.integers(min_value=0, max_value=len(lines) - 1))
        op = draw(st.sampled_from(['delete', 'repeat', 'swap', 'indent', 'dedent', 'tab', 'insert', 'anchor', 'deep']))
        if op == 'delete' and len(lines) > 1:
            del lines[i]
        elif op == 'repeat':  # a duplicate key, or a duplicate list item
            lines.insert(i, lines[i])
        elif op == 'swap':
            j = draw(st.integers(min_value=0, max_value=len(lines) - 1))
            lines[i], lines[j] = lines[j], lines[i]
        elif op == 'indent':
            lines[i] = ' ' * draw(st.integers(min_value=1, max_value=5)) + lines[i]
        elif op == 'dedent':
            lines[i] = lines[i][draw(st.integers(min_value=1, max_value=4)) :]
        elif op == 'tab':
            lines[i] = '\t' + lines[i]
        elif op == 'insert':
            at = draw(st.integers(min_value=0, max_value=len(lines[i])))
            snippet = draw(SNIPPETS | st.text(max_size=8))
            lines[i] = lines[i][:at] + snippet + lines[i][at:]
        elif op == 'anchor':  # an anchor on one value, and an alias to it somewhere else
            name = draw(st.sampled_from(['a', 'b']))
            key, sep, value = lines[i].partition(': ')
            if sep:
                lines[i] = f'{key}: &{name} {value}'
            j = draw(st.integers(min_value=0, max_value=len(lines) - 1))
            key, sep, value = lines[j].partition(': ')
            if sep:
                lines[j] = f'{key}: *{name}\n'
        else:  # deep: flow nesting past MAX_DEPTH (past the parser's own limit: see the hostile inputs below)
            depth = draw(st.sampled_from([MAX_DEPTH - 1, MAX_DEPTH, MAX_DEPTH + 1, 200]))
            key, sep, _value = lines[i].partition(': ')
            if sep:
                lines[i] = f'{key}: {"[" * depth}1{"]" * depth}\n'
    text = ''.join(lines)
    if draw(st.booleans()):
        text = text[: draw(st.integers(min_value=0, max_value=len(text)))]
    return text


YAML_ALPHABET = st.sampled_from(list(' \n\t:-,[]{}&*!|>\'"#%@`?~.$<=abcxyz019_/\\') + ['\x00', 'é', '\u2028'])
RANDOM_TEXT = st.text(YAML_ALPHABET, max_size=200) | st.text(max_size=200)


# --- tests ------------------------------------------------------------------------------------------------------


def test_the_shipped_file_passes_the_same_checks(
    tmp_path: Path, running: Settings, capsys: pytest.CaptureFixture[str]
) -> None:
    """The harness itself: the unbroken file loads, validates and reloads."""
    assert check_file(tmp_path / 'games.yaml', SHIPPED_TEXT, running, capsys) == ()


@FUZZ
@given(text=broken_data())
@pytest.mark.timeout(30)
def test_broken_structures_are_reported_with_file_line_and_field(
    tmp_path: Path, running: Settings, capsys: pytest.CaptureFixture[str], text: str
) -> None:
    check_file(tmp_path / 'games.yaml', text, running, capsys)


@FUZZ
@given(text=damaged_text())
@pytest.mark.timeout(30)
def test_damaged_yaml_is_reported_with_file_line_and_field(
    tmp_path: Path, running: Settings, capsys: pytest.CaptureFixture[str], text: str
) -> None:
    check_file(tmp_path / 'games.yaml', text, running, capsys)


@FUZZ
@given(text=RANDOM_TEXT)
def test_random_text_is_reported_with_file_line_and_field(
    tmp_path: Path, running: Settings, capsys: pytest.CaptureFixture[str], text: str
) -> None:
    assert check_file(tmp_path / 'games.yaml', text, running, capsys)  # random text is never a valid config


@settings(FUZZ, max_examples=40)
@given(data=st.binary(max_size=200))
def test_bytes_that_are_not_utf8_are_reported(
    tmp_path: Path, running: Settings, capsys: pytest.CaptureFixture[str], data: bytes
) -> None:
    check_file(tmp_path / 'games.yaml', data.decode('utf-8', 'replace'), running, capsys, binary=b'version: 1\n' + data)


def laughs(width: int, depth: int) -> str:
    """Each level an alias list of the level before: width ** depth values once expanded."""
    lines = [f'l0: &l0 [{", ".join(["lol"] * width)}]']
    for level in range(1, depth + 1):
        lines.append(f'l{level}: &l{level} [{", ".join([f"*l{level - 1}"] * width)}]')
    return '\n'.join(lines) + '\n'


def expanded_values(width: int, depth: int) -> int:
    """How many values laughs(width, depth) is once every alias is expanded: the root, and each level's list."""
    level = 1 + width  # l0: the list and its strings
    total = 1 + level
    for _ in range(depth):
        level = 1 + width * level
        total += level
    return total


@settings(FUZZ, max_examples=25)
@given(width=st.integers(min_value=2, max_value=12), depth=st.integers(min_value=1, max_value=9))
@pytest.mark.timeout(30)
def test_alias_expansion_is_bounded(tmp_path: Path, width: int, depth: int) -> None:
    path = tmp_path / 'games.yaml'
    text = laughs(width, depth)
    path.write_text(text, encoding='utf-8')
    with pytest.raises(ConfigError) as info:
        load_settings(path, {})
    lines = info.value.lines
    assert_problem_lines(path, text, lines)
    too_large = [line for line in lines if f'expands to more than {MAX_VALUES} values' in line]
    assert bool(too_large) == (expanded_values(width, depth) > MAX_VALUES), lines[:3]
    if too_large:
        assert lines == tuple(too_large)  # one problem: nothing half-built is checked further


def test_billion_laughs_is_refused_quickly_and_in_little_memory(tmp_path: Path) -> None:
    """10 ** 9 values once expanded: without the budget this took ~50 s and over 2 GB before MemoryError."""
    path = tmp_path / 'games.yaml'
    path.write_text(laughs(10, 8), encoding='utf-8')
    tracemalloc.start()
    started = time.monotonic()
    try:
        with pytest.raises(ConfigError) as info:
            load_settings(path, {})
        elapsed = time.monotonic() - started
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    print(f'billion laughs refused in {elapsed:.2f}s, peak {peak / 1e6:.1f} MB of Python allocations')
    # the budget runs out inside l4 (l0-l3 are about 12,000 values), at the string of l0 it was expanding
    expected = f'{path}:1:55: l4[7][8][8][8][9]: the file expands to more than {MAX_VALUES} values'
    assert info.value.lines == (f'{expected} (aliases that repeat aliases?)',)
    assert elapsed < 10
    assert peak < 100e6


@pytest.mark.parametrize(
    ('text', 'expected'),
    [
        # PyYAML's parser recurses per level (RecursionError near 450) and scans flow nesting in quadratic time
        ('version: 1\nserver: ' + '[' * 700 + ']' * 700 + '\n', 'YAML error: the file is nested too deeply'),
        ('version: 1\nserver: ' + '[' * 100 + ']' * 100 + '\n', f'nested more than {MAX_DEPTH} levels deep'),
        ('version: 1\n!!int abc: x\n', "bad mapping key: invalid literal for int() with base 10: 'abc'"),
        ('version: 1\n!!python/name:os.system x: 1\n', 'bad mapping key: could not determine a constructor'),
        ('version: 1\nport: .nan\n', "'.nan' is not a finite number (JSON has no .inf or .nan)"),
        ('version: 1\x00\n', 'YAML error: unacceptable character #x0000: special characters are not allowed'),
        (SHIPPED_TEXT.replace('lists:\n  current:', 'lists:\n  "cur\\nrent":'), 'known: cur\\nrent'),
    ],
    ids=['parser-recursion', 'depth-limit', 'bad-int-key', 'python-tag-key', 'nan', 'nul', 'newline-in-key'],
)
def test_each_hostile_input_found_gets_one_clear_line(tmp_path: Path, text: str, expected: str) -> None:
    """The inputs that raised RecursionError, ValueError, ConstructorError or printed two-line problems before."""
    path = tmp_path / 'games.yaml'
    path.write_text(text, encoding='utf-8')
    with pytest.raises(ConfigError) as info:
        load_settings(path, {})
    assert_problem_lines(path, text, info.value.lines)
    assert any(expected in line for line in info.value.lines), info.value.lines


def test_keys_with_quotes_and_line_breaks_are_quoted_in_the_path(tmp_path: Path) -> None:
    path = tmp_path / 'games.yaml'
    text = SHIPPED_TEXT.replace('  port: 3000\n', '  "it\'s \\"x\\"\\n": 1\n')
    path.write_text(text, encoding='utf-8')
    with pytest.raises(ConfigError) as info:
        load_settings(path, {})
    (line,) = info.value.lines
    assert line.startswith(f'{path}:8:3: server["it\'s \\"x\\"\\n"]: unknown key ')
    assert_problem_lines(path, text, info.value.lines)
