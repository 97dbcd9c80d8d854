"""Durations as the configuration writes them: 500ms, 30s, 5m, 1h or a number of seconds."""

from __future__ import annotations

import pytest

from gamelist_service.config.durations import format_duration, parse_duration


@pytest.mark.parametrize(
    ('value', 'seconds'),
    [
        ('500ms', 0.5),
        ('30s', 30.0),
        ('5m', 300.0),
        ('1h', 3600.0),
        ('24h', 86400.0),
        ('1.5m', 90.0),
        ('0s', 0.0),
        (' 30s ', 30.0),
        (45, 45.0),
        (2.5, 2.5),
        (0, 0.0),
    ],
)
def test_parse_duration(value: str | float, seconds: float) -> None:
    result = parse_duration(value)
    assert result == seconds
    assert isinstance(result, float)


@pytest.mark.parametrize('value', ['30', '5 minutes', '', '1d', '-5s', 'ms', '1.s', '5M', '1h30m'])
def test_parse_duration_rejects_what_is_not_a_duration(value: str) -> None:
    with pytest.raises(ValueError, match='is not a duration'):
        parse_duration(value)


def test_parse_duration_rejects_booleans() -> None:
    with pytest.raises(TypeError, match='True is not a duration'):
        parse_duration(True)


@pytest.mark.parametrize(
    ('seconds', 'text'),
    [(0.5, '500ms'), (0.25, '250ms'), (45.0, '45s'), (90.0, '90s'), (300.0, '5m'), (3600.0, '1h'), (1.5, '1.5s')],
)
def test_format_duration_is_the_shortest_exact_form(seconds: float, text: str) -> None:
    assert format_duration(seconds) == text
    assert parse_duration(text) == seconds
