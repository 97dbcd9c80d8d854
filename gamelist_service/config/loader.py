"""Configuration: YAML -> JSON Schema -> cross-field checks -> Settings. Nothing else reads the YAML."""

from __future__ import annotations

import difflib
import hashlib
import os
from collections.abc import Iterator, Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

import jsonschema

from ..errors import ConfigError
from ..storage.store import redact_url
from ..web.auth import key_problem
from .build import build
from .schema import (
    defaults,
    schema,
    schema_text,  # noqa: F401 - re-exported for the tests, until they import .schema
)
from .settings import ENV_PORT, ENV_REDIS_URL, Settings
from .yamlpos import Document, JsonPath, Problem, format_path, load_document, printable

DEFAULT_CONFIG_PATH = Path('config/games.yaml')
MIN_SECRET_BYTES = 16  # shared secrets (namespace tokens, the admin token) shorter than this are refused
_REDIS_URL_KINDS = 'embedded, redis://, rediss://, redis+sentinel:// or unix://'


def _validator() -> jsonschema.Draft202012Validator:
    return jsonschema.Draft202012Validator(schema(), format_checker=jsonschema.Draft202012Validator.FORMAT_CHECKER)


def _schema_problems(doc: Document) -> Iterator[Problem]:
    for error in sorted(_validator().iter_errors(doc.data), key=lambda e: [str(p) for p in e.absolute_path]):
        yield from _explain(doc, error)


def _explain(doc: Document, error: jsonschema.ValidationError) -> Iterator[Problem]:
    path: JsonPath = tuple(error.absolute_path)
    sub = error.schema if isinstance(error.schema, dict) else {}
    if error.validator == 'additionalProperties' and isinstance(error.instance, dict):
        known = set(sub.get('properties', {}))
        for key in error.instance:
            if key not in known:
                hint = difflib.get_close_matches(key, sorted(known), n=1)
                extra = f" (did you mean '{hint[0]}'?)" if hint else ''
                allowed = ', '.join(sorted(known))
                line, col = doc.position((*path, key), key=True)
                yield Problem(line, col, (*path, key), f'unknown key {key!r}{extra}; allowed: {allowed}')
        return
    line, col = doc.position(path)
    if error.validator == 'oneOf' and set(sub.get('properties', {})) >= {'every', 'cron'}:
        yield Problem(line, col, path, "needs exactly one of 'every' (an interval) or 'cron' (an expression)")
        return
    if path == ('redis', 'url') and error.validator == 'pattern':  # a URL may carry a password: never echo it
        yield Problem(line, col, path, f'{redact_url(str(error.instance))!r} is not {_REDIS_URL_KINDS}')
        return
    if error.validator == 'oneOf' and set(sub.get('properties', {})) >= {'secret_env', 'public_key_env'}:
        yield Problem(
            line, col, path, "needs exactly one of 'secret_env' (an HMAC secret) or 'public_key_env' (a public key)"
        )
        return
    if error.validator in ('oneOf', 'anyOf') and error.context:
        # the branch the value has the shape of says more than "'all' was expected" for [] or a repeated id
        fitting = [e for e in error.context if e.relative_path or e.validator not in ('const', 'enum', 'type')]
        best = jsonschema.exceptions.best_match(fitting or error.context)
        assert best is not None
        best_path: JsonPath = tuple(best.absolute_path)
        line, col = doc.position(best_path)
        yield Problem(line, col, best_path, _short(best.message))
        return
    if 'duration' in str(sub.get('description', '')) and error.validator != 'type':
        yield Problem(line, col, path, f'{error.instance!r} is not a valid duration: {sub["description"]}')
        return
    if error.validator == 'required':
        yield Problem(line, col, path, _short(error.message))
        return
    if error.validator == 'not' and error.validator_value == {'required': ['games']}:
        line, col = doc.position((*path, 'games'), key=True)
        yield Problem(line, col, (*path, 'games'), 'a list fed by producers is never built from games: remove games')
        return
    if 'propertyNames' in error.schema_path:  # the error is the name's own (pattern): point at that key
        line, col = doc.position((*path, str(error.instance)), key=True)
    yield Problem(line, col, path, _short(error.message))


def _short(message: str, limit: int = 200) -> str:
    return message if len(message) <= limit else message[: limit - 3] + '...'


def _at(doc: Document, path: JsonPath, message: str) -> Problem:
    line, col = doc.position(path)
    return Problem(line, col, path, message)


def _cross_field_problems(doc: Document) -> Iterator[Problem]:
    """What JSON Schema cannot say: ordering of bounds, references between sections, uniqueness, cron syntax."""
    for check in (_game_problems, _list_problems, _schedule_problems):
        yield from _tolerant(check(doc))


def _game_problems(doc: Document) -> Iterator[Problem]:
    data: dict[str, Any] = doc.data

    game_ids: set[str] = set()
    for i, game in enumerate(data['games']):  # one game of the wrong shape does not hide the others' problems
        yield from _tolerant(_one_game_problems(doc, i, game, game_ids))


def _one_game_problems(doc: Document, i: int, game: dict[str, Any], game_ids: set[str]) -> Iterator[Problem]:
    if 'id' in game:
        if game['id'] in game_ids:
            yield _at(doc, ('games', i, 'id'), f'duplicate game id {game["id"]!r}')
        game_ids.add(game['id'])
    if game['min_players'] > game['max_players']:
        yield _at(
            doc,
            ('games', i, 'min_players'),
            f'min_players ({game["min_players"]}) is greater than max_players ({game["max_players"]})',
        )
    players = game['players']
    if players['mode'] == 'fixed' and players['live'] > players['active']:
        yield _at(
            doc,
            ('games', i, 'players', 'live'),
            f'live ({players["live"]}) is greater than active ({players["active"]})',
        )
    if players['mode'] == 'simulated':
        low, high = players['active']
        if low > high:
            yield _at(doc, ('games', i, 'players', 'active'), f'range minimum {low} is greater than its maximum {high}')
        ratio = (defaults('$defs', 'players', 'else') | players)['live_ratio']
        if ratio[0] > ratio[1]:
            yield _at(
                doc,
                ('games', i, 'players', 'live_ratio'),
                f'range minimum {ratio[0]} is greater than its maximum {ratio[1]}',
            )


def _list_problems(doc: Document) -> Iterator[Problem]:
    data: dict[str, Any] = doc.data
    game_ids = {game['id'] for game in data['games'] if isinstance(game, dict) and 'id' in game}
    namespaces: dict[str, Any] = data['namespaces']
    keys: dict[str, str] = {}
    for name, lst in data['lists'].items():
        yield from _tolerant(_one_list_problems(doc, name, lst, keys, game_ids, namespaces))
    for ns, ns_conf in namespaces.items():
        yield from _tolerant(_namespace_problems(doc, ns, ns_conf))


def _one_list_problems(
    doc: Document, name: str, lst: dict[str, Any], keys: dict[str, str], game_ids: set[str], namespaces: dict[str, Any]
) -> Iterator[Problem]:
    if lst['key'] in keys:
        yield _at(doc, ('lists', name, 'key'), f'Redis key {lst["key"]!r} is already used by list {keys[lst["key"]]!r}')
    keys[lst['key']] = name
    if isinstance(lst.get('games'), list):  # not "all"; a string is a schema error, not a list of one-letter ids
        for j, game_id in enumerate(lst['games']):
            if game_id not in game_ids:
                yield _at(doc, ('lists', name, 'games', j), _unknown('game', game_id, game_ids))
    elif lst.get('games') == 'all' and not game_ids:
        yield _at(doc, ('lists', name, 'games'), 'no games to build this list from: add games, or fed_by: producers')
    if isinstance(lst['namespaces'], list):
        for j, ns in enumerate(lst['namespaces']):
            if ns not in namespaces:
                yield _at(doc, ('lists', name, 'namespaces', j), _unknown('namespace', ns, set(namespaces)))


def _namespace_problems(doc: Document, ns: str, ns_conf: dict[str, Any] | None) -> Iterator[Problem]:
    lists: dict[str, Any] = doc.data['lists']
    chosen = (ns_conf or {}).get('list')
    if chosen is not None and chosen not in lists:
        yield _at(doc, ('namespaces', ns, 'list'), _unknown('list', chosen, set(lists)))
    elif chosen is None and not any(ns in lst['namespaces'] for lst in lists.values()):
        yield _at(
            doc, ('namespaces', ns), 'no list broadcasts to this namespace; name one with list: or add it to a list'
        )


def _schedule_problems(doc: Document) -> Iterator[Problem]:
    data: dict[str, Any] = doc.data
    names: set[str] = set()
    for i, sched in enumerate(data['schedules']):
        yield from _tolerant(_one_schedule_problems(doc, i, sched, names))


def _one_schedule_problems(doc: Document, i: int, sched: dict[str, Any], names: set[str]) -> Iterator[Problem]:
    lists: dict[str, Any] = doc.data['lists']
    if 'name' in sched:
        if sched['name'] in names:
            yield _at(doc, ('schedules', i, 'name'), f'duplicate schedule name {sched["name"]!r}')
        names.add(sched['name'])
    if 'cron' in sched and not _cron_ok(sched['cron']):
        yield _at(
            doc,
            ('schedules', i, 'cron'),
            f'{sched["cron"]!r} is not a valid cron expression (five fields: minute hour day month weekday)',
        )
    if sched['list'] not in lists:
        yield _at(doc, ('schedules', i, 'list'), _unknown('list', sched['list'], set(lists)))
    elif (lists[sched['list']] or {}).get('fed_by') == 'producers':
        yield _at(
            doc,
            ('schedules', i, 'list'),
            f'list {sched["list"]!r} is fed by producers: a schedule would build it from templates; remove the schedule',
        )


def _tolerant(problems: Iterator[Problem]) -> Iterator[Problem]:
    """Run cross-field checks on a file that may also have schema errors: stop quietly where its shape is wrong."""
    try:
        yield from problems
    except (KeyError, TypeError, AttributeError, IndexError, ValueError):
        return


def _cron_ok(expression: str) -> bool:
    from croniter import croniter  # noqa: PLC0415 - only files with a cron schedule need it (about 1 MB per process)

    return len(expression.split()) == 5 and bool(croniter.is_valid(expression))


def _unknown(kind: str, value: str, known: set[str]) -> str:
    hint = difflib.get_close_matches(value, sorted(known), n=1)
    extra = f" (did you mean '{hint[0]}'?)" if hint else ''
    return f'no {kind} named {value!r}{extra}; known: {", ".join(sorted(known)) or "none"}'


def _env_problems(doc: Document, env: Mapping[str, str]) -> Iterator[Problem]:
    """GAMELIST_PORT and GAMELIST_REDIS_URL replace values of the file; check them as strictly as the file."""
    port = env.get(ENV_PORT)
    if port and not (port.isdecimal() and 1 <= int(port) <= 65535):  # isdigit() lets '²' through to int()
        line, col = doc.position(('server', 'port'))
        yield Problem(
            line, col, ('server', 'port'), f'{ENV_PORT}={port!r} from the environment is not a port (1-65535)'
        )
    url = env.get(ENV_REDIS_URL)
    if url:
        props = schema()['properties']['redis']['properties']['url']
        if not jsonschema.Draft202012Validator(props).is_valid(url):
            line, col = doc.position(('redis', 'url'))
            yield Problem(
                line,
                col,
                ('redis', 'url'),
                f'{ENV_REDIS_URL}={redact_url(url)!r} from the environment is not {_REDIS_URL_KINDS}',
            )
    yield from _tolerant(_auth_problems(doc, env))
    yield from _tolerant(_server_problems(doc, env))


def _auth_problems(doc: Document, env: Mapping[str, str]) -> Iterator[Problem]:
    """Each namespace's secret is named in the file and held in the environment: it must be set, and fit its use."""
    for ns, conf in doc.data['namespaces'].items():
        auth = (conf or {}).get('auth')
        if not isinstance(auth, dict):
            continue
        if auth.get('mode') == 'token' and isinstance(auth.get('token_env'), str):
            path: JsonPath = ('namespaces', ns, 'auth', 'token_env')
            problem = _secret_problem(auth['token_env'], env, f'the shared secret of namespace {ns}')
            if problem:
                yield _at(doc, path, problem)
        jwt_conf = auth.get('jwt')
        if auth.get('mode') != 'jwt' or not isinstance(jwt_conf, dict):
            continue
        for key_field, what in (('secret_env', 'the JWT secret'), ('public_key_env', 'the JWT public key (PEM)')):
            name = jwt_conf.get(key_field)
            if not isinstance(name, str):
                continue
            path = ('namespaces', ns, 'auth', 'jwt', key_field)
            key = env.get(name)
            if not key:
                yield _at(doc, path, _unset(name, f'{what} of namespace {ns}'))
                continue
            problem = key_problem(tuple((defaults('$defs', 'jwt') | jwt_conf)['algorithms']), key, key_field)
            if problem:
                yield _at(doc, path, f'{name} {problem}' if problem.startswith(('does', 'is')) else problem)


def _unset(name: str, what: str) -> str:
    return f'environment variable {name} is not set (or empty); it must hold {what}'


def _secret_problem(name: str, env: Mapping[str, str], what: str) -> str | None:
    """Why the shared secret in environment variable name cannot be used (never quoting it), or None."""
    value = env.get(name)
    if not value:
        return _unset(name, what)
    size = len(value.encode('utf-8', 'surrogatepass'))
    if size < MIN_SECRET_BYTES:
        return f'{name} holds {size} bytes; {what} must be at least {MIN_SECRET_BYTES} bytes (guessable otherwise)'
    return None


def _server_problems(doc: Document, env: Mapping[str, str]) -> Iterator[Problem]:
    """The admin token named in the file must be set and long enough; metrics_listen must name a port."""
    server = doc.data.get('server') or {}
    name = server.get('admin_token_env')
    if isinstance(name, str):
        problem = _secret_problem(name, env, 'the admin token')
        if problem:
            yield _at(doc, ('server', 'admin_token_env'), problem)
    producers = doc.data.get('producers') or {}
    if isinstance(producers.get('token_env'), str):
        problem = _secret_problem(producers['token_env'], env, "the producers' shared secret")
        if problem:
            yield _at(doc, ('producers', 'token_env'), problem)
    listen = server.get('metrics_listen')
    if isinstance(listen, str) and ':' in listen and not 1 <= int(listen.rsplit(':', 1)[1]) <= 65535:
        yield _at(doc, ('server', 'metrics_listen'), f'{listen!r}: the port must be 1-65535')


def check_text(text: str, env: Mapping[str, str]) -> tuple[Document, list[Problem]]:
    """Every problem in a configuration text, in file order; no exception for bad input."""
    doc = load_document(text, env)
    problems = list(doc.problems)
    if doc.data is None and not problems:
        problems.append(Problem(1, 1, (), 'the file is empty; it must be a mapping (see gamelist-service schema)'))
    if doc.data is None:
        return doc, sorted(problems, key=lambda p: (p.line, p.column))
    flagged = {p.path for p in problems}  # an unset ${VAR} is reported once, not again by the schema
    problems.extend(p for p in _schema_problems(doc) if p.path not in flagged)
    problems.extend(_cross_field_problems(doc))
    problems.extend(_env_problems(doc, env))
    return doc, sorted(problems, key=lambda p: (p.line, p.column))


def format_problem(path: Path | str, problem: Problem) -> str:
    # one line per problem: a key or value quoted into a message may hold a line break
    return f'{path}:{problem.line}:{problem.column}: {format_path(problem.path)}: {printable(problem.message)}'


def load_settings(path: Path | str, env: Mapping[str, str] | None = None) -> Settings:
    """Read, validate and build the settings of one file; raises ConfigError listing every problem."""
    env = os.environ if env is None else env
    path = Path(path)
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise ConfigError(path, [f'{path}:1:1: (root): cannot read the file: {exc.strerror or exc}']) from exc
    try:
        text = raw.decode('utf-8')
    except UnicodeDecodeError as exc:
        before = raw[: exc.start].decode('utf-8')  # valid up to the bad byte: point at it
        line, column = before.count('\n') + 1, len(before) - before.rfind('\n')
        raise ConfigError(path, [f'{path}:{line}:{column}: (root): cannot read the file: {exc}']) from exc
    doc, problems = check_text(text, env)
    if problems:
        raise ConfigError(path, [format_problem(path, p) for p in problems])
    settings = build(path, doc.data, env)
    return replace(settings, digest=hashlib.sha256(raw).hexdigest())


def summary(settings: Settings) -> str:
    """One line about a valid file, for validate."""

    def count(n: int, word: str) -> str:
        return f'{n} {word}{"" if n == 1 else "s"}'

    return (
        f'{settings.source}: OK ({count(len(settings.games), "game")}, {count(len(settings.lists), "list")}, '
        f'{count(len(settings.namespaces), "namespace")}, {count(len(settings.schedules), "schedule")})'
    )
