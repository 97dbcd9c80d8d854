"""HTTP routes: liveness, readiness, metrics, and the one error answer every route gives."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from sanic import Blueprint, Request
from sanic.exceptions import SanicException
from sanic.response import HTTPResponse, json, raw

from .. import metrics
from ..config.settings import Settings
from ..core.service import GamelistService
from ..errors import GamelistError, error_body
from .auth import secrets_equal

logger = logging.getLogger('gamelist_service.web.routes')

bp = Blueprint('gamelist')

READY_TIMEOUT_S = 2.0


def _service(request: Request) -> GamelistService:
    service: GamelistService = request.app.ctx.service
    return service


@bp.get('/health')
async def health(request: Request) -> HTTPResponse:
    """Alive: the process answers."""
    return json({'status': 'ok'})


def is_admin(request: Request, settings: Settings) -> bool:
    """The request carries the admin token (server.admin_token_env) as a bearer token."""
    expected = settings.server.admin_token
    scheme, _, token = request.headers.get('authorization', '').partition(' ')
    return bool(expected) and scheme.lower() == 'bearer' and secrets_equal(token.strip(), expected)


@bp.get('/ready')
async def ready(request: Request) -> HTTPResponse:
    """Ready: configuration loaded, Redis answering, subscribed to updates; 503 otherwise.

    Anyone gets the status; the details (config, leader, process, schedules, the reason) need the admin token.
    """
    service = _service(request)
    settings = service.settings
    admin = is_admin(request, settings)
    body: dict[str, object] = {
        'config': {'path': str(settings.source), **request.app.ctx.reload_status.as_dict()},
        'leader': service.leadership.leading,
        'process': service.leadership.identity,
        'schedules': {
            name: {'runs': st.runs, 'failures': st.failures, 'last_error': st.last_error}
            for name, st in service.scheduler.state.items()
        },
    }
    reason = None
    try:
        latency = await asyncio.wait_for(service.store.ping(), READY_TIMEOUT_S)
        body['redis'] = {'status': 'ok', 'latency_ms': round(latency * 1000, 3)}
    except (GamelistError, TimeoutError) as exc:
        reason = f'Redis is not answering: {exc}' if isinstance(exc, GamelistError) else 'Redis did not answer in time'
        body['redis'] = {'status': 'error'}
    if reason is None and not service.listening.is_set():
        reason = f'not subscribed to updates: {service.redis_error or "starting"}'
    if reason:
        return json({'status': 'not ready', 'reason': reason, **body} if admin else {'status': 'not ready'}, status=503)
    return json({'status': 'ready', **body} if admin else {'status': 'ready'})


@bp.get('/metrics')
async def prometheus_metrics(request: Request) -> HTTPResponse:
    """Prometheus text format; with several workers, the sum of what each wrote. 404 with server.metrics_listen."""
    if _service(request).settings.server.metrics_listen is not None:
        return error_json(404, 'metrics are served on server.metrics_listen')
    return raw(metrics.generate_latest(), content_type=metrics.CONTENT_TYPE_LATEST)


def error_json(status: int, message: str, headers: dict[str, str] | None = None, **extra: Any) -> HTTPResponse:
    """An HTTP error answer: {"status": "error", "message": ...} (errors.error_body), never a traceback."""
    return json(error_body(message, **extra), status=status, headers=headers)


def error_response(request: Request, exc: Exception) -> HTTPResponse:
    """Every error of every route: a JSON body with a short message, never a traceback."""
    if isinstance(exc, GamelistError):
        logger.error('%s %s failed: %s', request.method, request.path, exc)
        message = exc.message if exc.status_code < 500 else 'the game list is unavailable right now'
        return error_json(exc.status_code, message)
    if isinstance(exc, SanicException):
        return error_json(exc.status_code, str(exc) or exc.__class__.__name__)
    if _after_websocket(request, exc):
        logger.debug('%s %s: no HTTP answer after its websocket session (%s)', request.method, request.path, exc)
        return error_json(500, 'connection closed')
    logger.error('%s %s failed unexpectedly', request.method, request.path, exc_info=exc)
    return error_json(500, 'internal error')


def _after_websocket(request: Request, exc: Exception) -> bool:
    """A write that failed because the request's websocket session had ended and Sanic had half-closed the connection.

    python-engineio's Sanic driver returns an HTTP 200 once a websocket session ends; when Sanic's websocket closer has
    already half-closed the TCP connection (write_eof), writing it fails. Nothing is lost: the session is over.
    """
    headers = getattr(request, 'headers', None) or {}
    upgrade = str(headers.get('upgrade', '')).lower()
    return upgrade == 'websocket' and isinstance(exc, (RuntimeError, ConnectionError))
