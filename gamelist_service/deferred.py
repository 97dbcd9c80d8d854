"""Modules imported only when first used: what `serve` is made to load but never runs.

python-engineio imports the libraries of its clients (aiohttp, requests, websocket-client) whenever it is imported,
and python-socketio imports python-engineio: every serve process held them, about 9 MB of heap and 700 modules' worth
of 980, while serve runs no Socket.IO or Engine.IO client (bench/BASELINE.md). defer() makes the first `import
aiohttp` bind a module whose real import runs the first time anything is read from it (importlib.util.LazyLoader):
python-engineio only keeps the name until a client is made, and a client, if one is ever made, works as before.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import importlib.util
import sys
from collections.abc import Iterable, Sequence
from types import ModuleType

# python-engineio's client.py (requests, websocket-client) and async_client.py (aiohttp); serve runs neither
CLIENT_LIBRARIES = ('aiohttp', 'requests', 'websocket')


class DeferringFinder(importlib.abc.MetaPathFinder):
    """First on sys.meta_path: the named top-level modules get their usual spec with its loader made lazy."""

    def __init__(self, names: Iterable[str]) -> None:
        self.names = set(names)

    def find_spec(
        self, fullname: str, path: Sequence[str] | None, target: ModuleType | None = None
    ) -> importlib.machinery.ModuleSpec | None:
        if fullname not in self.names:
            return None
        spec = importlib.machinery.PathFinder.find_spec(fullname, path)
        if spec is None or spec.loader is None or not hasattr(spec.loader, 'exec_module'):
            return None  # not installed, or not loadable lazily: the usual finders decide (ImportError, eager)
        spec.loader = importlib.util.LazyLoader(spec.loader)
        return spec


def defer(names: Iterable[str] = CLIENT_LIBRARIES) -> DeferringFinder:
    """From now on in this process (and its forked children), import these top-level modules lazily; one already
    imported stays as it is."""
    for finder in sys.meta_path:
        if isinstance(finder, DeferringFinder):
            finder.names.update(names)
            return finder
    finder = DeferringFinder(names)
    sys.meta_path.insert(0, finder)
    return finder


def loaded(name: str) -> bool:
    """Whether the module has really been imported (False for a deferred one nothing has read from yet)."""
    module = sys.modules.get(name)
    # type() reads the object's type without an attribute access, which would load a deferred module
    return module is not None and type(module).__name__ != '_LazyModule'
