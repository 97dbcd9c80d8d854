"""The service's own origin is always accepted; other origins only when server.cors_allowed_origins lists them."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import socketio

from gamelist_service.web.origins import OriginPolicy

from .helpers import Recorder, Serve, hourly_data, serving, shipped_data, write_config

SHIPPED = ('http://localhost:3000', 'http://127.0.0.1:3000')


def environ(host: str, scheme: str = 'http', **headers: str) -> dict[str, Any]:
    return {'HTTP_HOST': host, 'sanic.request': SimpleNamespace(scheme=scheme), **headers}


def test_the_origin_a_request_was_sent_to_is_accepted() -> None:
    policy = OriginPolicy(SHIPPED)
    assert policy('http://127.0.0.1:29012', environ('127.0.0.1:29012'))
    assert policy('http://192.168.1.20:3000', environ('192.168.1.20:3000', 'ws'))  # a websocket handshake
    assert policy('https://lobby.example', environ('lobby.example', 'wss'))
    assert policy('http://localhost:3000', environ('elsewhere:1'))  # listed
    assert policy(None, environ('x'))  # no Origin: not a browser's cross-origin request


def test_other_origins_are_refused_with_one_warning_per_origin(caplog: pytest.LogCaptureFixture) -> None:
    policy = OriginPolicy(SHIPPED)
    with caplog.at_level(logging.WARNING, 'gamelist_service.web.origins'):
        for _ in range(5):
            assert not policy('http://evil.example', environ('127.0.0.1:29012'))
        assert not policy('http://127.0.0.1:29012', environ('127.0.0.1:29013'))  # another port is another origin
        assert not policy('https://127.0.0.1:29012', environ('127.0.0.1:29012'))  # and another scheme
    lines = [r.getMessage() for r in caplog.records]
    assert sum('http://evil.example is not an accepted origin' in line for line in lines) == 1
    assert 'add it to server.cors_allowed_origins' in lines[0]
    assert OriginPolicy(('*',))('http://evil.example', environ('x'))


def test_forwarded_host_counts_only_when_trusted() -> None:
    behind_proxy = environ('10.0.0.5:3000', HTTP_X_FORWARDED_HOST='lobby.example', HTTP_X_FORWARDED_PROTO='https')
    assert not OriginPolicy(SHIPPED)('https://lobby.example', behind_proxy)  # a client could name any host
    assert OriginPolicy(SHIPPED, trust_forwarded=True)('https://lobby.example', behind_proxy)
    spoofed = environ('10.0.0.5:3000', HTTP_X_FORWARDED_HOST='evil.example, lobby.example')
    assert not OriginPolicy(SHIPPED, trust_forwarded=True)('http://evil.example', spoofed)  # the proxy's entry counts


@pytest.fixture(scope='module')
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Serve]:
    """The shipped CORS list (port 3000 only), on another port."""
    with serving(tmp_path_factory.mktemp('origins'), hourly_data()) as serve:
        yield serve


@pytest.mark.parametrize('transport', ['websocket', 'polling'])
async def test_a_client_from_the_services_own_origin_connects_on_any_port(served: Serve, transport: str) -> None:
    client = await Recorder(served.url, transport, headers={'Origin': served.url}).connect()
    try:
        assert (await client.call('main:screen'))['status'] == 'success'
    finally:
        await client.close()


@pytest.mark.parametrize(
    'headers',
    [
        {'Origin': 'http://evil.example'},
        {'Origin': 'http://evil.example', 'X-Forwarded-Host': 'evil.example'},  # not trusted: no door
        {'Origin': 'http://127.0.0.1:1', 'X-Forwarded-Proto': 'http', 'X-Forwarded-Host': '127.0.0.1:1'},
    ],
)
async def test_a_client_from_another_origin_is_refused(served: Serve, headers: dict[str, str]) -> None:
    refused = Recorder(served.url, 'websocket', headers=headers)
    with pytest.raises(socketio.exceptions.ConnectionError):
        await refused.connect()
    log = served.log()
    assert f'{headers["Origin"]} is not an accepted origin' in log and 'server.cors_allowed_origins' in log
    assert 'ERROR' not in log


def test_reload_keeps_the_policy(tmp_path: Path) -> None:
    """cors_allowed_origins is a restart-only setting: a reload says so, the policy in force stays."""
    from gamelist_service.config.loader import load_settings  # noqa: PLC0415
    from gamelist_service.config.reload import restart_only_changes  # noqa: PLC0415

    data = shipped_data()
    old = load_settings(write_config(tmp_path / 'a.yaml', data), {})
    data['server']['cors_allowed_origins'] = ['http://example.com']
    new = load_settings(write_config(tmp_path / 'b.yaml', data), {})
    assert any(change.startswith('server.cors_allowed_origins') for change in restart_only_changes(old, new))
