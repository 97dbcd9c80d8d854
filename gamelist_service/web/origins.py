"""Which browser origins may open a Socket.IO connection: the service's own, and the ones the config lists.

python-engineio checks the Origin header of every handshake and request against cors_allowed_origins. Given a list,
it accepts only what the list names, so the service's own page was refused as soon as it was served on another port
or address than the shipped list's (http://127.0.0.1:3000). OriginPolicy is the callable python-engineio accepts
instead: an Origin equal to the scheme, host and port the request was sent to (its Host header) is always accepted,
as python-engineio does when no list is given; the list is for the other origins. Behind a proxy that rewrites Host,
X-Forwarded-Host and X-Forwarded-Proto stand for it, but only with server.trust_forwarded_for: otherwise any client
could name the origin it wants accepted. A refused origin is logged at WARNING, once a minute per origin.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from typing import Any

from ..logs import RateLimitedLog

logger = logging.getLogger('gamelist_service.web.origins')

_SCHEMES = {'http': 'http', 'ws': 'http', 'https': 'https', 'wss': 'https'}
_refused = RateLimitedLog(logger, interval_s=60.0)


class OriginPolicy:
    """cors_allowed_origins for python-engineio: called with (origin, environ), True when the origin may connect."""

    def __init__(self, allowed: Iterable[str], trust_forwarded: bool = False) -> None:
        self.allowed = frozenset(allowed)
        self.any = '*' in self.allowed
        self.trust_forwarded = trust_forwarded

    def __call__(self, origin: str | None, environ: Mapping[str, Any] | None = None) -> bool:
        if origin is None or self.any or origin in self.allowed:
            return True
        if environ is not None and origin in self.own_origins(environ):
            return True
        _refused.warning(
            origin,
            '%s is not an accepted origin: its page may not open a Socket.IO connection here. To allow it, add it to '
            'server.cors_allowed_origins (the service accepts its own origin, %s, without it)',
            origin,
            ', '.join(sorted(self.own_origins(environ or {}))) or 'unknown',
        )
        return False

    def own_origins(self, environ: Mapping[str, Any]) -> set[str]:
        """The origins this request was sent to: its Host with its scheme, and with trust, the proxy's."""
        own = set()
        request = environ.get('sanic.request')
        scheme = _SCHEMES.get(str(getattr(request, 'scheme', '') or environ.get('wsgi.url_scheme', 'http')), 'http')
        host = environ.get('HTTP_HOST')
        if isinstance(host, str) and host:
            own.add(f'{scheme}://{host.strip().lower()}')
        if self.trust_forwarded:
            forwarded_host = _last(environ.get('HTTP_X_FORWARDED_HOST'))
            if forwarded_host:
                forwarded_scheme = _SCHEMES.get(_last(environ.get('HTTP_X_FORWARDED_PROTO')) or scheme, scheme)
                own.add(f'{forwarded_scheme}://{forwarded_host.lower()}')
        return own


def _last(value: Any) -> str:
    """The last entry of a comma-separated header: the one the (trusted) proxy in front of us wrote."""
    return value.rsplit(',', 1)[-1].strip() if isinstance(value, str) else ''


class _EngineioOriginLine(logging.Filter):
    """python-engineio logs every refused origin at ERROR once (then INFO); OriginPolicy says it better, once."""

    def filter(self, record: logging.LogRecord) -> bool:
        return ' is not an accepted origin.' not in record.getMessage()


def quiet_engineio(engineio_logger: logging.Logger) -> None:
    """Keep python-engineio's own line about a refused origin out of the log (OriginPolicy logs it)."""
    if not any(isinstance(f, _EngineioOriginLine) for f in engineio_logger.filters):
        engineio_logger.addFilter(_EngineioOriginLine())
