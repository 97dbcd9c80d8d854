"""The contract of transport/: every internal it relies on is declared, resolves with the pinned libraries, is
documented, and is used nowhere else; a renamed internal switches a feature off without stopping the service."""

from __future__ import annotations

import re
import textwrap
from pathlib import Path

import pytest

from gamelist_service.transport import compat

from .helpers import ROOT, Recorder, serve_in, shipped_data, wait_until

PACKAGE = ROOT / 'gamelist_service'


def test_every_feature_runs_with_the_pinned_libraries() -> None:
    assert compat.check() == {feature: [] for feature in compat.FEATURES}
    assert {name: version for name, version in compat.versions().items()} == compat.TESTED


def test_every_static_internal_resolves() -> None:
    assert [i.path for i in compat.INTERNALS if not compat.static_check(i)] == []
    assert {i.feature for i in compat.INTERNALS} == set(compat.FEATURES)


def test_a_missing_internal_is_reported_for_its_feature(monkeypatch: pytest.MonkeyPatch) -> None:
    from sanic.http.http1 import Http  # noqa: PLC0415

    monkeypatch.setattr(Http, '__slots__', tuple(s for s in Http.__slots__ if s != 'keep_alive'))
    report = compat.check()
    assert report['lean'] and all(not missing for feature, missing in report.items() if feature != 'lean')


def test_docs_upgrading_lists_every_internal() -> None:
    doc = (ROOT / 'docs' / 'upgrading.md').read_text()
    assert [i.path for i in compat.INTERNALS if f'`{i.path}`' not in doc] == []


def private_names() -> set[str]:
    """The private names of the libraries that compat.py declares (the last part of each path that starts with _)."""
    names = {i.path.rsplit('.', 1)[-1] for i in compat.INTERNALS}
    return {name for name in names if name.startswith('_') and not name.startswith('__')}


def test_no_module_outside_transport_touches_a_library_internal() -> None:
    """ruff's banned-api rule keeps their modules out (pyproject.toml); this keeps their private names out."""
    pattern = re.compile(r'\.(' + '|'.join(sorted(map(re.escape, private_names()))) + r')\b')
    offenders = []
    for path in sorted(PACKAGE.rglob('*.py')):
        if 'transport' in path.relative_to(PACKAGE).parts:
            continue
        for number, line in enumerate(path.read_text().splitlines(), 1):
            if pattern.search(line.split('#', 1)[0]):
                offenders.append(f'{path.relative_to(ROOT)}:{number}: {line.strip()}')
    assert offenders == []
    assert '_handle_eio_connect' in private_names() and '_async' in private_names()  # the scan has teeth


async def test_a_renamed_internal_switches_its_feature_off_and_serve_still_serves(tmp_path: Path) -> None:
    """As after an upgrade that renamed something: python-engineio's websocket handler is gone at start."""
    site = tmp_path / 'site'
    site.mkdir()
    (site / 'sitecustomize.py').write_text(
        textwrap.dedent(
            """
            from engineio.async_socket import AsyncSocket
            del AsyncSocket._websocket_handler
            """
        )
    )
    data = shipped_data()
    data['schedules'][0]['every'] = '1h'
    serve = serve_in(tmp_path, data, env={'PYTHONPATH': str(site)})
    try:
        assert wait_until(lambda: 'transport feature fastpath off' in serve.log())
        assert 'engineio.async_socket.AsyncSocket._websocket_handler' in serve.log()
        client = await Recorder(serve.url, 'polling').connect()  # websockets need the handler: polling works
        try:
            assert (await client.call('main:screen'))['status'] == 'success'
        finally:
            await client.close()
    finally:
        assert serve.stop() == 0
