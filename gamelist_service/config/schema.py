"""The configuration's JSON Schema as shipped in the package, and its defaults: the one place a default is stated."""

from __future__ import annotations

import json
from functools import cache
from importlib import resources
from typing import Any

from .durations import parse_duration

SCHEMA_FILE = 'games.schema.json'


@cache
def schema_text(name: str = SCHEMA_FILE) -> str:
    """A JSON Schema as shipped inside the package (gamelist_service/schemas): the configuration file's by default."""
    return resources.files('gamelist_service').joinpath('schemas').joinpath(name).read_text(encoding='utf-8')


@cache
def schema(name: str = SCHEMA_FILE) -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(schema_text(name))
    return loaded


def _node(*path: str) -> dict[str, Any]:
    node = schema()
    for name in path:
        node = node['properties'][name] if name in node.get('properties', {}) else node[name]
    return node


def defaults(*path: str) -> dict[str, Any]:
    """The defaults of one object of the schema: defaults('redis', 'embedded') for a section, defaults('$defs', 'jwt')
    for a definition, defaults('$defs', 'players', 'else') for a branch."""
    return {key: value['default'] for key, value in _node(*path)['properties'].items() if 'default' in value}


def default(*path: str) -> Any:
    """One field's default, e.g. default('server', 'port'); a list comes back as a tuple (settings are frozen)."""
    value = _node(*path)['default']
    return tuple(value) if isinstance(value, list) else value


def default_s(*path: str) -> float:
    """One duration field's default, in seconds."""
    return parse_duration(_node(*path)['default'])
