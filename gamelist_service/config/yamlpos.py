"""Load YAML into plain data while remembering where every value came from, and expand ${VAR}."""

from __future__ import annotations

import json
import math
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import yaml
from yaml.constructor import SafeConstructor
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode
from yaml.resolver import Resolver

# ${NAME} or ${NAME:-default}; $${...} is a literal "${...}".
_ENV_RE = re.compile(r'\$\$|\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}')

JsonPath = tuple[str | int, ...]
_MERGE = 'tag:yaml.org,2002:merge'
# Bounds on what a file may make the loader build: aliases of aliases expand exponentially ("billion laughs"),
# and nesting recurses. The shipped file has a few hundred values and is 5 levels deep.
MAX_VALUES = 100_000
MAX_DEPTH = 64


@dataclass(frozen=True, slots=True)
class Problem:
    """One problem found in a file, at a position (1-based line and column)."""

    line: int
    column: int
    path: JsonPath
    message: str


@dataclass(slots=True)
class Document:
    """Plain data from a YAML file, with the position of each value and each mapping key."""

    data: Any
    value_marks: dict[JsonPath, tuple[int, int]] = field(default_factory=dict)
    key_marks: dict[JsonPath, tuple[int, int]] = field(default_factory=dict)
    problems: list[Problem] = field(default_factory=list)

    def position(self, path: JsonPath, *, key: bool = False) -> tuple[int, int]:
        """The position of the value (or its key) at path, else of its closest ancestor."""
        marks = (self.key_marks, self.value_marks) if key else (self.value_marks,)
        probe = path
        while True:
            for table in marks:
                if probe in table:
                    return table[probe]
            if not probe:
                return (1, 1)
            probe = probe[:-1]


def _mark(node: Node) -> tuple[int, int]:
    return (node.start_mark.line + 1, node.start_mark.column + 1)


class _TooLarge(Exception):
    """The document expands past MAX_VALUES: building stops with this one problem."""

    def __init__(self, problem: Problem) -> None:
        super().__init__(problem.message)
        self.problem = problem


class _Builder:
    def __init__(self, env: Mapping[str, str]) -> None:
        self.env = env
        self.doc = Document(data=None)
        self.constructor = SafeConstructor()
        self.resolver = Resolver()
        self.building: set[int] = set()  # ids of the nodes being built: an alias to one of them is a cycle
        self.budget = MAX_VALUES

    def build(self, node: Node | None) -> Document:
        try:
            self.doc.data = None if node is None else self._value(node, ())
        except _TooLarge as exc:  # nothing half-built is checked further
            self.doc.data = None
            self.doc.problems.append(exc.problem)
        return self.doc

    def _spend(self, node: Node, path: JsonPath) -> None:
        self.budget -= 1
        if self.budget < 0:
            line, column = _mark(node)
            message = f'the file expands to more than {MAX_VALUES} values (aliases that repeat aliases?)'
            raise _TooLarge(Problem(line, column, path, message))

    def _value(self, node: Node, path: JsonPath) -> Any:
        self._spend(node, path)
        self.doc.value_marks[path] = _mark(node)
        if id(node) in self.building:
            self._problem(node, path, 'an alias refers to a value that contains it (a cycle)')
            return None
        if isinstance(node, ScalarNode):
            return self._scalar(node, path)
        if len(path) >= MAX_DEPTH:
            self._problem(node, path, f'nested more than {MAX_DEPTH} levels deep')
            return None
        self.building.add(id(node))
        try:
            if isinstance(node, MappingNode):
                return self._mapping(node, path)
            assert isinstance(node, SequenceNode)
            return [self._value(item, (*path, i)) for i, item in enumerate(node.value)]
        finally:
            self.building.discard(id(node))

    def _mapping(self, node: MappingNode, path: JsonPath) -> dict[str, Any]:
        result: dict[str, Any] = {}
        merged: dict[str, tuple[Node, Node]] = {}
        for key_node, value_node in node.value:
            if key_node.tag == _MERGE:
                for key, pair in self._merge(value_node, path, {id(node)}).items():
                    merged.setdefault(key, pair)
                continue
            name = self._key(key_node, path)
            if name is None:
                continue
            key = name
            if key in result:
                self._problem(key_node, (*path, key), f'duplicate key {key!r}')
                continue
            self.doc.key_marks[(*path, key)] = _mark(key_node)
            result[key] = self._value(value_node, (*path, key))
        for key, (key_node, value_node) in merged.items():  # "<<" fills in the keys the mapping does not set
            if key not in result:
                self.doc.key_marks[(*path, key)] = _mark(key_node)
                result[key] = self._value(value_node, (*path, key))
        return result

    def _merge(self, value_node: Node, path: JsonPath, inside: set[int]) -> dict[str, tuple[Node, Node]]:
        """The pairs "<<" brings in: earlier mappings win over later ones, a mapping's own keys over its merges."""
        pairs: dict[str, tuple[Node, Node]] = {}
        sources = value_node.value if isinstance(value_node, SequenceNode) else [value_node]
        for source in sources:
            self._spend(source, path)
            if not isinstance(source, MappingNode) or id(source) in inside:
                self._problem(source, path, '"<<" must merge a mapping or a list of mappings')
                continue
            own: dict[str, tuple[Node, Node]] = {}
            from_merges: dict[str, tuple[Node, Node]] = {}
            for key_node, item_node in source.value:
                if key_node.tag == _MERGE:
                    for key, pair in self._merge(item_node, path, inside | {id(source)}).items():
                        from_merges.setdefault(key, pair)
                elif (name := self._key(key_node, path)) is not None:
                    own.setdefault(name, (key_node, item_node))
            for key, pair in (from_merges | own).items():
                pairs.setdefault(key, pair)
        return pairs

    def _key(self, key_node: Node, path: JsonPath) -> str | None:
        """A mapping key as a string, or None (and a problem) for one that is not a scalar or cannot be built."""
        if not isinstance(key_node, ScalarNode):
            self._problem(key_node, path, 'mapping keys must be plain strings')
            return None
        try:
            return str(self.constructor.construct_object(key_node))
        except (yaml.YAMLError, ValueError) as exc:  # "!!int abc: 1", "!!python/name:x : 1"
            self._problem(key_node, path, f'bad mapping key: {str(exc).splitlines()[0]}')
            return None

    def _scalar(self, node: ScalarNode, path: JsonPath) -> Any:
        if node.tag == 'tag:yaml.org,2002:str' and '$' in node.value:
            expanded = self._expand(node, path)
            if node.style is None:  # plain scalar: "${PORT:-3000}" becomes an int, as if written inline
                tag = self.resolver.resolve(ScalarNode, expanded, (True, False))  # type: ignore[no-untyped-call]
                node = ScalarNode(tag, expanded, node.start_mark, node.end_mark, style=None)
            else:
                return expanded
        if node.tag == 'tag:yaml.org,2002:timestamp':
            return node.value  # JSON has no dates: 2024-01-01T00:00:00Z stays the string the schema checks
        try:
            value = self.constructor.construct_object(node, deep=True)
        except (yaml.YAMLError, ValueError) as exc:  # ValueError: "!!int abc"
            self._problem(node, path, str(exc).splitlines()[0])
            return node.value
        if isinstance(value, float) and not math.isfinite(value):
            self._problem(node, path, f'{node.value!r} is not a finite number (JSON has no .inf or .nan)')
            return node.value
        return value

    def _expand(self, node: ScalarNode, path: JsonPath) -> str:
        def replace(match: re.Match[str]) -> str:
            if match.group(0) == '$$':
                return '$'
            name, default = match.group(1), match.group(2)
            value = self.env.get(name)
            if value is None or (value == '' and default is not None):
                if default is None:
                    self._problem(node, path, f'environment variable {name} is not set (use ${{{name}:-default}})')
                    return ''
                return default
            return value

        return _ENV_RE.sub(replace, str(node.value))

    def _problem(self, node: Node, path: JsonPath, message: str) -> None:
        line, column = _mark(node)
        self.doc.problems.append(Problem(line, column, path, message))


def load_document(text: str, env: Mapping[str, str] | None = None) -> Document:
    """Parse one YAML document; syntax errors come back as problems, never as exceptions."""
    loader: yaml.SafeLoader | None = None
    try:
        loader = yaml.SafeLoader(text)  # checks every character first (ReaderError)
        node = loader.get_single_node()
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line, column = (mark.line + 1, mark.column + 1) if mark else (1, 1)
        reason = ' '.join(part for part in (exc.context, exc.problem) if part)
        return Document(data=None, problems=[Problem(line, column, (), f'YAML syntax error: {reason}')])
    except yaml.YAMLError as exc:  # ReaderError: a character YAML does not allow, at a position in the text
        line, column = _position(text, getattr(exc, 'position', 0))
        return Document(data=None, problems=[Problem(line, column, (), f'YAML error: {str(exc).splitlines()[0]}')])
    except RecursionError:  # the parser recurses once per level of [[[...]]] or {a: {b: ...}}
        assert loader is not None
        mark = loader.get_mark()
        return Document(
            data=None,
            problems=[Problem(mark.line + 1, mark.column + 1, (), 'YAML error: the file is nested too deeply')],
        )
    finally:
        if loader is not None:
            loader.dispose()
    return _Builder(os.environ if env is None else env).build(node)


def _position(text: str, offset: int) -> tuple[int, int]:
    before = text[:offset]
    return before.count('\n') + 1, offset - before.rfind('\n')


def format_path(path: JsonPath) -> str:
    """games[2].max_players; keys that are not identifiers are quoted: namespaces["/gameplay"]."""
    out = ''
    for part in path:
        if isinstance(part, int):
            out += f'[{part}]'
        elif re.fullmatch(r'[A-Za-z_][A-Za-z0-9_]*', part):
            out += f'.{part}' if out else part
        else:
            out += f'[{printable(json.dumps(part, ensure_ascii=False))}]'
    return out or '(root)'


def printable(text: str) -> str:
    """text on one line: line breaks and other characters that do not print are escaped as in a Python string."""
    return ''.join(char if char.isprintable() else repr(char)[1:-1] for char in text)
