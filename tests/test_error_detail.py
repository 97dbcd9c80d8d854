"""No traceback or internal detail reaches a Socket.IO client or an HTTP response; it goes to the log instead."""

from __future__ import annotations

import logging
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import socketio
from redis.asyncio import Redis

from gamelist_service.config.settings import AuthSettings, NamespaceSettings
from gamelist_service.errors import StoreError
from gamelist_service.web import routes
from gamelist_service.web.sockets import GameNamespace

from .helpers import Recorder, http_get, serve_in, shipped_data

DETAIL = '/srv/internal/secret_module.py line 42: KeyError(hunter2)'


class BrokenService:
    """Enough of GamelistService for a namespace handler, with a list that fails in an unexpected way."""

    settings = SimpleNamespace(redis=SimpleNamespace(session_ttl_s=60.0, user_ttl_s=60.0))

    async def current(self, name: str) -> dict[str, Any]:
        raise RuntimeError(DETAIL)


async def test_an_unexpected_error_in_a_handler_gives_a_generic_ack(caplog: pytest.LogCaptureFixture) -> None:
    namespace = GameNamespace(NamespaceSettings('/', 'current'), BrokenService())  # type: ignore[arg-type]
    with caplog.at_level(logging.ERROR, logger='gamelist_service.web.sockets'):
        reply = await namespace.trigger_event('main:screen', 'sid-1')
    assert reply == {'status': 'error', 'message': 'internal error'}
    assert DETAIL in caplog.text and 'Traceback' in caplog.text  # the operator still gets everything


async def test_an_unexpected_error_on_connect_refuses_with_a_generic_message(caplog: pytest.LogCaptureFixture) -> None:
    # a crafted, impossible auth setting (jwt without its settings) makes the connect handler fail
    broken = NamespaceSettings('/', 'current', auth=AuthSettings('jwt'))
    namespace = GameNamespace(broken, BrokenService())  # type: ignore[arg-type]
    with (
        caplog.at_level(logging.ERROR, logger='gamelist_service.web.sockets'),
        pytest.raises(socketio.exceptions.ConnectionRefusedError) as caught,
    ):
        await namespace.trigger_event('connect', 'sid-1', {}, {'token': 'x'})
    assert caught.value.error_args == {'message': 'internal error'}  # refused, not let in
    assert namespace.clients == set()
    assert 'failed unexpectedly' in caplog.text
    # the same where transport/connect.py answers a CONNECT in place (admit, without awaiting)
    caplog.clear()
    with (
        caplog.at_level(logging.ERROR, logger='gamelist_service.web.sockets'),
        pytest.raises(socketio.exceptions.ConnectionRefusedError) as caught,
    ):
        namespace.admit('sid-2', {}, {'token': 'x'})
    assert caught.value.error_args == {'message': 'internal error'}
    assert namespace.clients == set()
    assert 'connect of sid-2 to / failed unexpectedly' in caplog.text and 'Traceback' in caplog.text


def test_an_unexpected_http_error_gives_a_generic_body(caplog: pytest.LogCaptureFixture) -> None:
    request: Any = SimpleNamespace(method='GET', path='/api/v1/gamelist')
    with caplog.at_level(logging.ERROR, logger='gamelist_service.web.routes'):
        response = routes.error_response(request, RuntimeError(DETAIL))
    assert response.status == 500
    assert response.body == b'{"status":"error","message":"internal error"}'
    assert DETAIL in caplog.text
    response = routes.error_response(request, StoreError(f'Redis at redis://:***@h failed: {DETAIL}'))
    assert response.status == 503 and response.body is not None
    assert DETAIL.encode() not in response.body and b'unavailable' in response.body


def test_the_answer_after_an_ended_websocket_session_is_no_error(caplog: pytest.LogCaptureFixture) -> None:
    # python-engineio's Sanic driver answers 200 after the session; the connection may be half-closed by then
    request: Any = SimpleNamespace(method='GET', path='/socket.io/', headers={'upgrade': 'websocket'})
    with caplog.at_level(logging.DEBUG, logger='gamelist_service.web.routes'):
        routes.error_response(request, RuntimeError('Cannot call write() after write_eof()'))
    assert [r.levelname for r in caplog.records] == ['DEBUG']
    assert 'no HTTP answer after its websocket session' in caplog.text
    caplog.clear()
    plain: Any = SimpleNamespace(method='GET', path='/socket.io/', headers={})  # not a websocket: an error as before
    with caplog.at_level(logging.ERROR, logger='gamelist_service.web.routes'):
        routes.error_response(plain, RuntimeError('Cannot call write() after write_eof()'))
    assert 'failed unexpectedly' in caplog.text


async def test_corrupt_data_in_redis_shows_no_detail(tmp_path: Path, redis_client: Redis, redis_url: str) -> None:
    data = shipped_data()
    data['schedules'] = []
    serve = serve_in(tmp_path, data, '--redis-url', redis_url)
    try:
        await redis_client.set('gamelist:current', b'\x80 not json {')
        status, body = http_get(serve.url + '/api/v1/gamelist')
        assert status == 503
        assert body == {'status': 'error', 'message': 'the game list is unavailable right now'}
        client = await Recorder(serve.url).connect()
        try:
            reply = await client.call('main:screen')
            assert reply['status'] == 'error' and 'JSON' not in reply['message'] and 'Traceback' not in str(reply)
            assert client.sio.connected
        finally:
            await client.close()
    finally:
        assert serve.stop() == 0
    assert 'does not hold JSON' in serve.log()  # the cause is logged for the operator
