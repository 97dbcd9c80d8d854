"""The tests' own layout: what several test modules share lives in the shared modules (helpers.py, clients.py,
jwt_tokens.py, browser.py, conftest.py), never in a test module another one imports."""

from __future__ import annotations

import ast
from pathlib import Path

TESTS = Path(__file__).resolve().parent


def imported_test_modules(path: Path) -> list[str]:
    """The test_* modules path imports, however it names them (relative or absolute, module or names from it)."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            modules = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ''
            modules = [base, *(f'{base}.{alias.name}' if base else alias.name for alias in node.names)]
        else:
            continue
        found += [m for m in modules if m.rsplit('.', 1)[-1].startswith('test_')]
    return found


def test_no_module_of_the_tests_imports_a_test_module() -> None:
    modules = sorted(TESTS.glob('*.py'))
    assert TESTS / 'helpers.py' in modules and TESTS / 'test_fastpath.py' in modules
    imports = {path.name: imported_test_modules(path) for path in modules}
    assert {name: found for name, found in imports.items() if found} == {}


# ({t} for test_: a grep for test modules importing each other finds none in this file either)
EXAMPLE = """
from .{t}a import x
from . import {t}b
import tests.{t}c
from tests.{t}d import y
def f():
    from .{t}e import z
from .helpers import Serve, fixed_list
import testing
from .clients import {t}frames
"""


def test_the_check_sees_every_way_to_import_a_test_module(tmp_path: Path) -> None:
    """Also a name test_* from any module: pytest would collect an imported test function a second time."""
    source = tmp_path / 'example.py'
    source.write_text(EXAMPLE.format(t='test_'))
    assert sorted(imported_test_modules(source)) == [
        'clients.test_frames',
        'test_a',
        'test_b',
        'test_e',
        'tests.test_c',
        'tests.test_d',
    ]
