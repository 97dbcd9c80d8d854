"""Durations as the config writes them: 500ms, 30s, 5m, 1h, or a bare number of seconds."""

from __future__ import annotations

import re

_DURATION_RE = re.compile(r'^([0-9]+(?:\.[0-9]+)?)(ms|s|m|h)$')
_UNIT_S = {'ms': 0.001, 's': 1.0, 'm': 60.0, 'h': 3600.0}


def parse_duration(value: str | float) -> float:
    """Seconds in a duration; raises ValueError for anything else."""
    if isinstance(value, bool):
        raise TypeError(f'{value!r} is not a duration')
    if isinstance(value, int | float):
        return float(value)
    match = _DURATION_RE.match(value.strip())
    if not match:
        raise ValueError(f'{value!r} is not a duration (use 500ms, 30s, 5m, 1h or a number of seconds)')
    return float(match.group(1)) * _UNIT_S[match.group(2)]


def format_duration(seconds: float) -> str:
    """The shortest exact way to write seconds: 0.5 -> 500ms, 300 -> 5m, 45 -> 45s."""
    for unit, size in (('h', 3600.0), ('m', 60.0), ('s', 1.0)):
        if seconds >= size and (seconds / size).is_integer():
            return f'{int(seconds / size)}{unit}'
    return f'{round(seconds * 1000):d}ms' if seconds < 1 else f'{seconds:g}s'
