"""The publish API (PUT a list with a bearer token) and the OpenAPI document, against `serve` on the session Redis."""

from __future__ import annotations

import json
import re
import socket
import urllib.error
import urllib.request
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from sanic import Sanic

from gamelist_service.config.loader import load_settings
from gamelist_service.config.schema import schema
from gamelist_service.web.app import create_app
from gamelist_service.web.lists_api import openapi_document

from .conftest import free_port
from .helpers import (
    CONTRACT_GAME,
    SHIPPED_CONFIG,
    Recorder,
    Serve,
    http_get,
    serve_in,
    shipped_data,
    wait_until,
    write_config,
)

TOKEN = 'test-token-7f3a9c'
LIMIT = 1024 * 1024
GAME = CONTRACT_GAME


def start_api_serve(tmp_path: Path, redis_url: str, env: dict[str, str], *, wait_ready: bool = True) -> Serve:
    data = shipped_data()
    data['schedules'] = []  # only the API writes
    data['lists']['side'] = {'key': 'gamelist:side', 'ttl': '60s', 'games': ['game_1'], 'namespaces': ['/gameplay']}
    return serve_in(tmp_path, data, '--redis-url', redis_url, env=env, wait_ready=wait_ready)


@pytest.fixture
def served(tmp_path: Path, redis_url: str, flushed: redis.Redis) -> Iterator[Serve]:
    serve = start_api_serve(tmp_path, redis_url, {'GAMELIST_API_TOKEN': TOKEN})
    yield serve
    assert serve.stop() == 0


def put(url: str, body: Any, token: str | None = TOKEN, *, raw: bytes | None = None) -> tuple[int, Any, Any]:
    """PUT a JSON body; returns (status, decoded JSON answer, headers)."""
    headers = {'Content-Type': 'application/json'}
    if token is not None:
        headers['Authorization'] = f'Bearer {token}'
    data = raw if raw is not None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, method='PUT', headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, json.loads(response.read()), response.headers
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read()), exc.headers


def raw_exchange(port: int, head: str, body: Iterable[bytes] = ()) -> tuple[int, Any]:
    """Send a request byte by byte as given (no client-side limits), then read the status and JSON answer."""
    with socket.create_connection(('127.0.0.1', port), timeout=10) as sock:
        sock.sendall(head.encode('latin-1'))
        for part in body:
            sock.sendall(part)
        received = b''
        while b'\r\n\r\n' not in received:
            chunk = sock.recv(65536)
            assert chunk, f'connection closed before an answer: {received!r}'
            received += chunk
        header, _, rest = received.partition(b'\r\n\r\n')
        status = int(header.split(b' ', 2)[1])
        length = int(
            next(line.split(b':', 1)[1] for line in header.split(b'\r\n') if line.lower().startswith(b'content-length'))
        )
        while len(rest) < length:
            chunk = sock.recv(65536)
            assert chunk, 'connection closed in the middle of the answer'
            rest += chunk
        return status, json.loads(rest[:length])


def put_head(token: str = TOKEN, **headers: str) -> str:
    lines = ['PUT /api/v1/gamelist HTTP/1.1', 'Host: 127.0.0.1', f'Authorization: Bearer {token}']
    lines += [f'{name.replace("_", "-")}: {value}' for name, value in headers.items()]
    return '\r\n'.join(lines) + '\r\n\r\n'


async def test_put_stores_fills_computes_and_broadcasts(served: Serve, flushed: redis.Redis) -> None:
    client = await Recorder(served.url).connect()
    try:
        body = {'gamelist': [GAME, {'game_name': 'Chess', 'game_type': 'board', 'status': 'maintenance'}]}
        status, data, _ = put(served.url + '/api/v1/gamelist', body)
        assert status == 200, data
        raw = flushed.get('gamelist:current')
        assert raw is not None and json.loads(raw) == data
        assert 295 <= flushed.ttl('gamelist:current') <= 300
        assert data['version'] == 1 and data['cache_duration'] == '300 seconds'
        assert (data['total_games'], data['active_games'], data['total_players']) == (2, 1, 15000)
        assert data['updated_at'].endswith('Z')
        assert data['gamelist'][0] == GAME
        chess = data['gamelist'][1]
        assert chess['game_id'].startswith('game_2_') and (chess['min_players'], chess['max_players']) == (1, 10)
        for namespace in ('/', '/gameplay'):
            (message,) = await client.wait_for('game_list:updated', namespace)
            assert message['event'] == 'game_list:updated' and message['data'] == data
        assert http_get(served.url + '/api/v1/gamelist') == (200, data)
    finally:
        await client.close()
    assert TOKEN not in served.log()


async def test_put_by_list_name_and_404_for_an_unknown_list(served: Serve, flushed: redis.Redis) -> None:
    client = await Recorder(served.url).connect()
    try:
        status, data, _ = put(served.url + '/api/v1/lists/side', {'gamelist': [GAME]})
        assert status == 200, data
        assert 55 <= flushed.ttl('gamelist:side') <= 60 and data['cache_duration'] == '60 seconds'
        (message,) = await client.wait_for('game_list:updated', '/gameplay')  # the list broadcasts to /gameplay only
        assert message['data'] == data
        assert client.received('game_list:updated', '/') == []
    finally:
        await client.close()
    status, answer, _ = put(served.url + '/api/v1/lists/nope', {'gamelist': [GAME]})
    assert (status, answer) == (404, {'status': 'error', 'message': "no list named 'nope'"})
    assert flushed.exists('gamelist:current') == 0


@pytest.mark.parametrize(
    ('token', 'status'),
    [(None, 401), ('', 401), ('wrong-token', 403), (TOKEN + 'x', 403), (TOKEN[:-1], 403), ('t\u00e9st', 403)],
)
def test_missing_token_is_401_and_a_wrong_one_403(
    served: Serve, flushed: redis.Redis, token: str | None, status: int
) -> None:
    got, answer, headers = put(served.url + '/api/v1/gamelist', {'gamelist': [GAME]}, token)
    assert got == status
    assert answer['status'] == 'error'
    if status == 401:
        assert 'bearer token is required' in answer['message']
        assert headers['WWW-Authenticate'].startswith('Bearer')
    else:
        assert answer['message'] == 'the bearer token is not valid'
    assert flushed.exists('gamelist:current') == 0


def test_other_auth_schemes_are_401(served: Serve) -> None:
    request = urllib.request.Request(
        served.url + '/api/v1/gamelist', data=b'{}', method='PUT', headers={'Authorization': f'Basic {TOKEN}'}
    )
    with pytest.raises(urllib.error.HTTPError) as caught:
        urllib.request.urlopen(request, timeout=10)
    assert caught.value.code == 401
    caught.value.close()


def test_invalid_body_is_422_with_the_path_of_each_bad_field(served: Serve, flushed: redis.Redis) -> None:
    body = {
        'gamelist': [
            GAME,
            {**GAME, 'game_id': 'g2', 'min_players': 9, 'max_players': 2},
            {**GAME, 'game_id': 'g3', 'max_players': '8', 'status': 'closed', 'colour': 'red'},
            {'game_type': 'card'},
            {**GAME},
        ],
        'total_games': 5,
    }
    status, answer, _ = put(served.url + '/api/v1/gamelist', body)
    assert status == 422
    assert answer['status'] == 'error' and answer['message'] == 'invalid game list: 7 problems'
    assert [e['path'] for e in answer['errors']] == [
        'total_games',
        'gamelist[1].min_players',
        'gamelist[2].colour',
        'gamelist[2].max_players',
        'gamelist[2].status',
        'gamelist[3].game_name',
        'gamelist[4].game_id',
    ]
    by_path = {e['path']: e['message'] for e in answer['errors']}
    assert by_path['gamelist[1].min_players'] == 'min_players (9) is greater than max_players (2)'
    assert by_path['gamelist[2].max_players'] == "'8' is not of type 'integer'"
    assert by_path['gamelist[3].game_name'] == 'is required'
    assert by_path['gamelist[4].game_id'] == "duplicate game_id 'game_1_1234567890' (also gamelist[0])"
    assert flushed.exists('gamelist:current') == 0


@pytest.mark.parametrize(
    ('raw', 'path', 'message'),
    [
        (b'{"gamelist": [', '(root)', 'the body is not JSON'),
        (b'\xff\xfe', '(root)', 'the body is not JSON'),
        (b'[' * 100_000 + b']' * 100_000, '(root)', 'the body is not JSON'),
        (b'', '(root)', 'the body is not JSON'),
        (b'[]', '(root)', 'expected an object {"gamelist": [...]}, got a list'),
        (b'{}', 'gamelist', 'is required'),
        (b'{"gamelist": {"game_name": "x"}}', 'gamelist', 'expected a list of games, got an object'),
        (b'{"gamelist": [null]}', 'gamelist[0]', 'expected a game object, got null'),
        (b'{"gamelist": [{"game_name": "x", "active_gamepalye": NaN}]}', 'gamelist[0].active_gamepalye', 'integer'),
    ],
)
def test_bodies_that_are_not_a_list_are_422(served: Serve, raw: bytes, path: str, message: str) -> None:
    status, answer, _ = put(served.url + '/api/v1/gamelist', None, raw=raw)
    assert status == 422
    (error,) = answer['errors']
    assert error['path'] == path and message in error['message']


def test_a_large_content_length_is_413_before_the_body_is_sent(served: Serve, flushed: redis.Redis) -> None:
    # no body follows the headers: the answer can only come from the declared length
    status, answer = raw_exchange(served.port, put_head(content_length=str(100 * LIMIT)))
    assert status == 413 and answer['message'] == f'the body is larger than the limit of {LIMIT} bytes'
    status, answer = raw_exchange(served.port, put_head(content_length=str(LIMIT + 1)))
    assert status == 413
    assert flushed.exists('gamelist:current') == 0
    assert http_get(served.url + '/health') == (200, {'status': 'ok'})


def test_a_chunked_body_over_the_limit_is_413_while_it_is_read(served: Serve, flushed: redis.Redis) -> None:
    piece = b'x' * 65536
    chunks = [b'%x\r\n%s\r\n' % (len(piece), piece)] * (LIMIT // len(piece)) + [b'1\r\nx\r\n']  # LIMIT + 1 bytes
    # the terminating zero-size chunk is never sent: the server answers without waiting for the end
    status, answer = raw_exchange(served.port, put_head(transfer_encoding='chunked'), chunks)
    assert status == 413 and 'larger than the limit' in answer['message']
    assert flushed.exists('gamelist:current') == 0


def test_a_body_just_under_the_limit_is_accepted(served: Serve, flushed: redis.Redis) -> None:
    game = {'game_name': 'P' * 100}
    count = (LIMIT - 200) // len(json.dumps(game) + ', ')
    body = json.dumps({'gamelist': [game] * count}).encode()
    assert LIMIT - 1000 < len(body) <= LIMIT
    status, data, _ = put(served.url + '/api/v1/gamelist', None, raw=body)
    assert status == 200 and data['total_games'] == count
    assert flushed.exists('gamelist:current') == 1


def test_the_limit_is_configurable(tmp_path: Path, redis_url: str, flushed: redis.Redis) -> None:
    serve = start_api_serve(tmp_path, redis_url, {'GAMELIST_API_TOKEN': TOKEN, 'GAMELIST_API_MAX_BODY_BYTES': '200'})
    try:
        small = {'gamelist': [{'game_name': 'Poker'}]}
        assert put(serve.url + '/api/v1/gamelist', small)[0] == 200
        big = {'gamelist': [{'game_name': 'Poker' * 40}]}
        status, answer, _ = put(serve.url + '/api/v1/gamelist', big)
        assert (status, answer['message']) == (413, 'the body is larger than the limit of 200 bytes')
    finally:
        assert serve.stop() == 0


def test_without_a_token_configured_the_api_is_disabled(tmp_path: Path, redis_url: str, flushed: redis.Redis) -> None:
    serve = start_api_serve(tmp_path, redis_url, {})
    try:
        status, answer, _ = put(serve.url + '/api/v1/gamelist', {'gamelist': [GAME]}, token='anything')
        assert status == 503
        assert answer['message'] == 'the publish API is disabled: set GAMELIST_API_TOKEN on the service to enable it'
        assert flushed.exists('gamelist:current') == 0
        assert 'publish API (PUT /api/v1/gamelist, /api/v1/lists/<name>) disabled' in serve.log()
    finally:
        assert serve.stop() == 0


def test_redis_down_is_503_and_nothing_is_broadcast(tmp_path: Path) -> None:
    dead = f'redis://127.0.0.1:{free_port()}/0'
    serve = start_api_serve(tmp_path, dead, {'GAMELIST_API_TOKEN': TOKEN}, wait_ready=False)
    try:
        assert wait_until(lambda: _answers(serve.url + '/health'))
        status, answer, _ = put(serve.url + '/api/v1/gamelist', {'gamelist': [GAME]})
        assert (status, answer) == (503, {'status': 'error', 'message': 'the game list is unavailable right now'})
        assert f'Redis at {dead} failed to SET gamelist:current' in serve.log()
    finally:
        assert serve.stop() == 0


def _answers(url: str) -> bool:
    try:
        return http_get(url, timeout_s=1.0)[0] == 200
    except OSError:
        return False


def test_a_bad_limit_stops_the_start_with_its_message(tmp_path: Path, redis_url: str) -> None:
    serve = Serve(
        tmp_path,
        write_config(tmp_path / 'games.yaml', shipped_data()),
        free_port(),
        '--redis-url',
        redis_url,
        env={'GAMELIST_API_MAX_BODY_BYTES': '1MB'},
    )
    with pytest.raises(RuntimeError, match="GAMELIST_API_MAX_BODY_BYTES='1MB' from the environment is not a positive"):
        serve.start()
    assert serve.stop() != 0


def test_openapi_document_lists_every_route_and_the_game_schema(served: Serve) -> None:
    status, document = http_get(served.url + '/openapi.json')
    assert status == 200
    assert document['openapi'].startswith('3.1')
    paths = document['paths']
    assert set(paths) >= {'/health', '/ready', '/api/v1/gamelist', '/api/v1/lists/{name}', '/openapi.json'}
    assert set(paths['/api/v1/gamelist']) == {'get', 'put'}
    assert set(paths['/api/v1/lists/{name}']) == {'get', 'put', 'parameters'}
    for route in ('/api/v1/gamelist', '/api/v1/lists/{name}'):
        assert {'200', '401', '403', '413', '422'} <= set(paths[route]['put']['responses'])
        assert paths[route]['put']['security'] == [{'bearer': []}]
    assert document['components']['securitySchemes']['bearer'] == {
        'type': 'http',
        'scheme': 'bearer',
        'description': 'The token set in GAMELIST_API_TOKEN on the service.',
    }
    game = document['components']['schemas']['Game']
    shipped = schema('game.schema.json')
    assert game['properties'] == shipped['properties'] and game['required'] == ['game_name']
    refs = set(_refs(document))
    assert refs and all(ref.startswith('#/components/') for ref in refs)
    for ref in refs:  # every reference resolves inside the document
        node: Any = document
        for part in ref.removeprefix('#/').split('/'):
            node = node[part]


def test_openapi_document_describes_exactly_the_routes_the_app_has() -> None:
    # built, never run: nothing connects to Redis
    app = create_app(load_settings(SHIPPED_CONFIG, {}), 'redis://127.0.0.1:1/0', name='openapi_routes_test')
    try:
        routes = {
            (re.sub(r'<(\w+)(:\w+)?>', r'{\1}', '/' + route.path), method.lower())
            for route in app.router.routes
            for method in route.methods
            if not route.path.startswith('socket.io')  # Socket.IO is its own protocol, not part of the HTTP API
        }
    finally:
        Sanic.unregister_app(app)
    documented = {
        (path, method)
        for path, item in openapi_document()['paths'].items()
        for method in item
        if method != 'parameters'
    }
    assert routes == documented


def _refs(node: Any) -> Iterator[str]:
    if isinstance(node, dict):
        for key, value in node.items():
            if key == '$ref':
                yield value
            else:
                yield from _refs(value)
    elif isinstance(node, list):
        for item in node:
            yield from _refs(item)
