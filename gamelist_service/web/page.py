"""The live page: `GET /` and its few static files, all shipped inside the package (no CDN, no third-party code)."""

from __future__ import annotations

import re
from pathlib import Path

from sanic import Blueprint, Request
from sanic.exceptions import NotFound
from sanic.response import HTTPResponse, raw

bp = Blueprint('page')

STATIC_DIR = Path(__file__).resolve().parent / 'static'
CONTENT_TYPES = {
    '.html': 'text/html; charset=utf-8',
    '.js': 'text/javascript; charset=utf-8',
    '.css': 'text/css; charset=utf-8',
    '.svg': 'image/svg+xml',
    '.png': 'image/png',
    '.ico': 'image/x-icon',
}
# one plain file name: no separators, no leading dot, so nothing outside STATIC_DIR can be named
_SAFE_NAME = re.compile(r'[A-Za-z0-9][A-Za-z0-9_.-]{0,99}')
# the page needs nothing but its own files and a WebSocket back to the same host ('self' covers ws: and wss: to it)
_CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)


def _file_response(name: str) -> HTTPResponse:
    suffix = Path(name).suffix
    if not _SAFE_NAME.fullmatch(name) or '..' in name or suffix not in CONTENT_TYPES:
        raise NotFound(f'no static file {name[:64]!r}')
    path = STATIC_DIR / name
    try:
        body = path.read_bytes()  # a few KB each; read per request so an edited file shows on reload
    except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
        raise NotFound(f'no static file {name[:64]!r}') from None
    headers = {'Cache-Control': 'no-cache', 'X-Content-Type-Options': 'nosniff'}
    if suffix == '.html':
        headers['Content-Security-Policy'] = _CSP
    return raw(body, content_type=CONTENT_TYPES[suffix], headers=headers)


@bp.get('/')
async def index(request: Request) -> HTTPResponse:
    """The live page (it replaces the prototype's test_client.html)."""
    return _file_response('index.html')


@bp.get('/static/<name:str>')
async def static(request: Request, name: str) -> HTTPResponse:
    """The page's own scripts and stylesheet."""
    return _file_response(name)
