"""Logging setup; only the CLI calls it. Human-readable lines by default, JSON lines with --log-format json."""

from __future__ import annotations

import json
import logging
import logging.config
from datetime import UTC, datetime
from typing import Any

_STANDARD = frozenset(vars(logging.LogRecord('', 0, '', 0, '', None, None))) | {'message', 'asctime', 'taskName'}


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
        'handlers': {
            'default': {'class': 'logging.StreamHandler', 'formatter': 'default', 'stream': 'ext://sys.stderr'}
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
