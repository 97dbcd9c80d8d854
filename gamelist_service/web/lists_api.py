"""The lists over HTTP: GET them, PUT them (with a bearer token), and the OpenAPI document of every route."""

from __future__ import annotations

import copy
import json as jsonlib
import logging
import os
from collections.abc import AsyncIterable, Iterable, Mapping
from functools import cache
from typing import Any, cast

from sanic import Blueprint, Request
from sanic.response import HTTPResponse, json

from ..config.schema import schema
from ..core.lists import list_data
from ..core.service import GamelistService
from ..errors import GamelistError
from ..producers.validation import GAME_SCHEMA, FieldError, GameListInvalid, validate_push
from .auth import secrets_equal
from .routes import error_json

logger = logging.getLogger('gamelist_service.web.lists_api')

ENV_API_TOKEN = 'GAMELIST_API_TOKEN'
ENV_MAX_BODY = 'GAMELIST_API_MAX_BODY_BYTES'
DEFAULT_MAX_BODY_BYTES = 1024 * 1024
OPENAPI_FILE = 'openapi.json'

bp = Blueprint('gamelist_api')


def max_body_bytes(env: Mapping[str, str] | None = None) -> int:
    """The largest PUT body accepted: $GAMELIST_API_MAX_BODY_BYTES, else 1 MB."""
    raw = (os.environ if env is None else env).get(ENV_MAX_BODY, '').strip()
    if not raw:
        return DEFAULT_MAX_BODY_BYTES
    if not raw.isdecimal() or int(raw) < 1:
        raise GamelistError(f'{ENV_MAX_BODY}={raw!r} from the environment is not a positive number of bytes')
    return int(raw)


@bp.before_server_start
async def _announce(app: Any) -> None:
    limit = max_body_bytes()  # a bad value stops the start with its message, not the first PUT
    state = 'enabled' if os.environ.get(ENV_API_TOKEN) else f'disabled ({ENV_API_TOKEN} is not set: PUT answers 503)'
    logger.info('publish API (PUT /api/v1/gamelist, /api/v1/lists/<name>) %s; bodies up to %d bytes', state, limit)


@bp.get('/api/v1/gamelist')
async def current_list(request: Request) -> HTTPResponse:
    """The first list (gamelist:current in the shipped file) as stored in Redis; 404 when it has expired."""
    return await _list_response(request.app.ctx.service, request.app.ctx.service.settings.lists[0].name)


@bp.get('/api/v1/lists/<name:str>')
async def named_list(request: Request, name: str) -> HTTPResponse:
    """Any configured list by name."""
    return await _list_response(request.app.ctx.service, name)


async def _list_response(service: GamelistService, name: str) -> HTTPResponse:
    try:
        lst = service.settings.get_list(name)
    except KeyError:
        return json({'status': 'error', 'message': f'no list named {name[:64]!r}'}, status=404)
    data = await service.store.read_list(lst.key)
    if data is None:
        return json({'status': 'error', 'message': f'{lst.key} has expired or was never written'}, status=404)
    return json(data)


@bp.put('/api/v1/gamelist', stream=True)
async def put_current(request: Request) -> HTTPResponse:
    """Replace the first list (gamelist:current in the shipped file) and broadcast it."""
    return await _put(request, None)


@bp.put('/api/v1/lists/<name:str>', stream=True)
async def put_named(request: Request, name: str) -> HTTPResponse:
    """Replace any configured list by name and broadcast it."""
    return await _put(request, name)


@bp.get('/openapi.json')
async def openapi(request: Request) -> HTTPResponse:
    """The OpenAPI 3.1 document of the HTTP API."""
    return json(openapi_document())


async def _put(request: Request, name: str | None) -> HTTPResponse:
    # the token is checked before a byte of the body is read, and the size before it is read in full
    denied = _authorize(request)
    if denied is not None:
        return denied
    service: GamelistService = request.app.ctx.service
    try:
        lst = service.settings.get_list(name) if name is not None else service.settings.lists[0]
    except KeyError:
        return _error(404, f'no list named {(name or "")[:64]!r}')
    limit = max_body_bytes()
    raw = await _read_body(request, limit)
    if raw is None:
        logger.warning('PUT %s from %s refused: body over %d bytes', request.path, request.ip, limit)
        return _error(413, f'the body is larger than the limit of {limit} bytes')
    try:
        body = jsonlib.loads(raw)
    except (ValueError, RecursionError) as exc:  # UnicodeDecodeError is a ValueError; deep nesting recurses
        return _invalid([FieldError('(root)', f'the body is not JSON: {str(exc)[:200]}')])
    try:
        games = validate_push(body)
    except GameListInvalid as exc:
        return _invalid(exc.errors)
    stored = await service.write_and_announce(lst, list_data(games, lst.ttl_s))
    logger.info(
        'PUT %s from %s: list %s written to %s (version %d, %d games) and announced',
        request.path,
        request.ip,
        lst.name,
        lst.key,
        stored['version'],
        len(games),
    )
    return json(stored)


def _authorize(request: Request) -> HTTPResponse | None:
    expected = os.environ.get(ENV_API_TOKEN, '')
    if not expected:
        return _error(503, f'the publish API is disabled: set {ENV_API_TOKEN} on the service to enable it')
    scheme, _, token = request.headers.get('authorization', '').partition(' ')
    token = token.strip()
    if scheme.lower() != 'bearer' or not token:
        return _error(
            401,
            'a bearer token is required: Authorization: Bearer <token>',
            headers={'WWW-Authenticate': 'Bearer realm="gamelist-service"'},
        )
    if not secrets_equal(token, expected):
        logger.warning('PUT %s from %s refused: wrong bearer token', request.path, request.ip)
        return _error(403, 'the bearer token is not valid')
    return None


async def _read_body(request: Request, limit: int) -> bytes | None:
    """The body, or None as soon as it is known to be over limit (from Content-Length, or while reading chunks)."""
    length = request.headers.get('content-length')
    if length is not None and length.isdecimal() and int(length) > limit:
        return None
    chunks: list[bytes] = []
    size = 0
    if request.stream is not None:  # sanic's Http, typed as its base Stream; receive_body() iterates it the same way
        async for chunk in cast(AsyncIterable[bytes], request.stream):
            size += len(chunk)
            if size > limit:
                return None
            chunks.append(chunk)
    return b''.join(chunks)


def _error(status: int, message: str, headers: dict[str, str] | None = None) -> HTTPResponse:
    return error_json(status, message, headers)


def _invalid(errors: Iterable[FieldError]) -> HTTPResponse:
    found = [error.as_dict() for error in errors]
    count = len(found)
    return error_json(422, f'invalid game list: {count} problem{"s" if count != 1 else ""}', errors=found)


@cache
def _openapi_text() -> str:
    document = copy.deepcopy(schema(OPENAPI_FILE))
    game = {k: v for k, v in schema(GAME_SCHEMA).items() if k not in ('$schema', '$id')}
    document['components']['schemas']['Game'] = game  # one game schema: the file validation uses
    return jsonlib.dumps(document)


def openapi_document() -> dict[str, Any]:
    """The OpenAPI document as served: schemas/openapi.json with the game schema of schemas/game.schema.json."""
    document: dict[str, Any] = jsonlib.loads(_openapi_text())
    return document
