"""Logging setup; only the CLI calls it. Human-readable lines by default, JSON lines with --log-format json."""

from __future__ import annotations

import json
import logging
import logging.config
import re
import time
from datetime import UTC, datetime
from typing import Any

from .storage.urls import PASSWORD_ARG_RE, URL_PASSWORD_RE

_STANDARD = frozenset(vars(logging.LogRecord('', 0, '', 0, '', None, None))) | {'message', 'asctime', 'taskName'}

# A last line of defence: whatever a message quotes, these never reach a log (the code redacts them itself too).
_SECRETS = (
    (URL_PASSWORD_RE, r'\1***@'),  # the same patterns redact_url uses (storage/urls.py): one definition
    (PASSWORD_ARG_RE, r'\1***'),
    (re.compile(r'(\bBearer\s+)[^\s\'",]+', re.IGNORECASE), r'\1***'),
)


def redact(text: str) -> str:
    """text without Redis passwords (in URLs or password=) and bearer tokens."""
    for pattern, replacement in _SECRETS:
        text = pattern.sub(replacement, text)
    return text


class RedactSecrets(logging.Filter):
    """Masks secrets in every record's message before any handler formats it."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        redacted = redact(message)
        if redacted != message:
            record.msg, record.args = redacted, None
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, and any extra fields."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            'time': datetime.fromtimestamp(record.created, UTC).strftime('%Y-%m-%dT%H:%M:%S.%fZ'),
            'level': record.levelname,
            'pid': record.process,
            'logger': record.name,
            'message': record.getMessage(),
        }
        entry.update({k: v for k, v in vars(record).items() if k not in _STANDARD})
        if record.exc_info:
            entry['exception'] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


class RateLimitedLog:
    """At most one line per key every interval_s seconds (a client that repeats itself is logged, not echoed)."""

    MAX_KEYS = 10_000  # forgotten all at once beyond this: a flood of keys costs memory only up to here

    def __init__(self, logger: logging.Logger, interval_s: float = 10.0) -> None:
        self.logger = logger
        self.interval_s = interval_s
        self._last: dict[str, float] = {}

    def log(self, level: int, key: str, message: str, *args: object) -> None:
        now = time.monotonic()
        last = self._last.get(key)
        if last is not None and now - last < self.interval_s:
            return
        if len(self._last) >= self.MAX_KEYS:
            self._last.clear()
        self._last[key] = now
        self.logger.log(level, message, *args)

    def warning(self, key: str, message: str, *args: object) -> None:
        self.log(logging.WARNING, key, message, *args)

    def info(self, key: str, message: str, *args: object) -> None:
        self.log(logging.INFO, key, message, *args)


def default_log_config(verbose: bool = False, log_format: str = 'text') -> dict[str, Any]:
    level = 'DEBUG' if verbose else 'INFO'
    formatter = (
        {'()': JsonFormatter}
        if log_format == 'json'
        else {
            'format': '%(asctime)s %(levelname)-7s [%(process)d] %(name)s: %(message)s',
            'datefmt': '%Y-%m-%dT%H:%M:%S',
        }
    )
    return {
        'version': 1,
        'disable_existing_loggers': False,
        'formatters': {'default': formatter},
        'filters': {'redact': {'()': RedactSecrets}},
        'handlers': {
            'default': {
                'class': 'logging.StreamHandler',
                'formatter': 'default',
                'stream': 'ext://sys.stderr',
                'filters': ['redact'],
            }
        },
        'loggers': {
            'gamelist_service': {'handlers': ['default'], 'level': level, 'propagate': False},
            'sanic.root': {'handlers': ['default'], 'level': 'INFO', 'propagate': False},
            'sanic.error': {'handlers': ['default'], 'level': 'INFO', 'propagate': False},
            'sanic.server': {'handlers': ['default'], 'level': 'INFO', 'propagate': False},
            'sanic.access': {'handlers': ['default'], 'level': 'WARNING', 'propagate': False},
        },
        'root': {'handlers': ['default'], 'level': 'WARNING'},
    }


def setup_logging(verbose: bool = False, log_format: str = 'text') -> None:
    logging.config.dictConfig(default_log_config(verbose, log_format))
