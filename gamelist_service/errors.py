"""One exception root for the service, as socketio has SocketIOError."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

# What a refused client reads (an error ack's message, a connect_error's): short, and free of internals.
RATE_LIMITED = 'rate limit exceeded'
TOO_MANY_CONNECTIONS = 'too many connections from your address'


def error_body(message: str, **extra: Any) -> dict[str, Any]:
    """Every error answer's body: an ack, an HTTP response, a main:screen envelope ({"status": "error", ...})."""
    return {'status': 'error', 'message': message, **extra}


class GamelistError(Exception):
    """Root of every error gamelist-service raises on purpose."""

    status_code = 500

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def __repr__(self) -> str:
        return f'{self.__class__.__name__}(message={self.message!r})'


class ConfigError(GamelistError):
    """A configuration file that cannot be used; lines holds one 'PATH:LINE:COL: json.path: message' per problem."""

    def __init__(self, path: Path | str, lines: Sequence[str]) -> None:
        self.path = str(path)
        self.lines = tuple(lines)
        count = len(self.lines)
        super().__init__(f'{self.path}: {count} problem{"s" if count != 1 else ""}\n' + '\n'.join(self.lines))

    def __repr__(self) -> str:
        return f'ConfigError(path={self.path!r}, lines={self.lines!r})'


class StoreError(GamelistError):
    """Redis did not do what was asked (unreachable, timed out, refused)."""

    status_code = 503

    def __init__(self, message: str, *, url: str = '') -> None:
        super().__init__(message)
        self.url = url

    def __repr__(self) -> str:
        return f'StoreError(message={self.message!r}, url={self.url!r})'


class FencedError(StoreError):
    """A write on a schedule was refused because this process no longer holds the scheduler lease."""


class EmbeddedRedisError(GamelistError):
    """The private redis-server could not be started or found."""


class PayloadError(GamelistError):
    """A client sent data that does not fit the contract; message says what is wrong."""

    status_code = 422


class ListExpired(GamelistError):
    """A list fed by producers has expired (or was never sent): the service does not invent one from templates."""

    status_code = 404


class NotFromTemplates(GamelistError):
    """A list fed by producers was asked to be built from templates (publish, a schedule)."""

    status_code = 409
