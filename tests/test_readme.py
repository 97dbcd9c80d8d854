"""The README's configuration reference and the schema cannot drift: every key is documented, nothing else is."""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

from gamelist_service.config.schema import schema

from .helpers import ROOT

README = ROOT / 'README.md'
REFERENCE = ROOT / 'docs' / 'configuration.md'  # the configuration reference


def _resolve(node: dict[str, Any]) -> dict[str, Any]:
    ref = node.get('$ref')
    if ref:
        target: dict[str, Any] = schema()
        for part in ref.removeprefix('#/').split('/'):
            target = target[part]
        return {**target, **{k: v for k, v in node.items() if k != '$ref'}}
    return node


def schema_keys(node: dict[str, Any] | None = None, prefix: str = '') -> Iterator[tuple[str, dict[str, Any]]]:
    """Every documented key path: maps as `<name>`, list items as `[]`, e.g. games[].players.active."""
    node = _resolve(node if node is not None else schema())
    branches = [node, *(node.get(k, {}) for k in ('then', 'else'))]
    seen: set[str] = set()
    for branch in branches:
        for key, sub in branch.get('properties', {}).items():
            path = f'{prefix}.{key}' if prefix else key
            if path in seen:
                continue
            seen.add(path)
            resolved = _resolve(sub)
            yield path, resolved
            yield from _children(resolved, path)
    extra = node.get('additionalProperties')
    if isinstance(extra, dict):
        yield from schema_keys(extra, f'{prefix}.<name>')


def _children(node: dict[str, Any], path: str) -> Iterator[tuple[str, dict[str, Any]]]:
    if node.get('type') == 'array' and isinstance(node.get('items'), dict) and '$ref' in node['items']:
        yield from schema_keys(node['items'], f'{path}[]')
    elif 'properties' in node or 'then' in node or isinstance(node.get('additionalProperties'), dict):
        yield from schema_keys(node, path)


def readme_reference() -> set[str]:
    text = REFERENCE.read_text()
    section = text.split('## Configuration reference', 1)[1].split('\n## ', 1)[0]
    return set(re.findall(r'^\| `([^`]+)` \|', section, flags=re.MULTILINE))


def test_every_schema_key_is_in_the_readme_and_nothing_else() -> None:
    documented = readme_reference()
    keys = {path for path, _ in schema_keys()}
    assert keys - documented == set(), 'keys missing from the README configuration reference'
    assert documented - keys == set(), 'README documents keys the schema does not have'


def test_readme_defaults_match_the_schema() -> None:
    text = REFERENCE.read_text()
    for path, node in schema_keys():
        if 'default' in node:
            row = re.search(rf'^\| `{re.escape(path)}` \|([^\n]*)$', text, flags=re.MULTILINE)
            assert row is not None
            default = str(node['default']).lower() if isinstance(node['default'], bool) else str(node['default'])
            default = default.replace("'", '"')
            assert default in row.group(1), f'{path}: default {default} not in {row.group(1)!r}'


def test_readme_shows_the_two_fresh_machine_commands_first() -> None:
    first_screen = '\n'.join(README.read_text().splitlines()[:40])
    assert 'pip install -e . && .venv/bin/gamelist-service serve' in first_screen
    assert "pip install -e '.[test]' && .venv/bin/python -m pytest" in first_screen
    ci = (ROOT / '.ci' / 'run').read_text()
    assert ".venv/bin/pip install --quiet -c constraints.txt -e '.[test]'" in ci and '.venv/bin/python -m pytest' in ci


if __name__ == '__main__':  # print a table skeleton for the README
    for key, node in schema_keys():
        kind = node.get('type') or ('enum' if 'enum' in node else 'const' if 'const' in node else 'one of')
        print(f'| `{key}` | {kind} | {node.get("default", "")} | {node.get("description", "")} |')
