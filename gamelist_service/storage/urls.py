"""Redis URLs: what the config accepts (redis://, rediss://, unix://, redis+sentinel://), a client for each, and
their redaction: a URL never reaches a log or an error message with its password."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import unquote

from redis.asyncio import Redis
from redis.asyncio.connection import parse_url
from redis.asyncio.sentinel import Sentinel

# the password of a URL's credentials (scheme://user:PASSWORD@host), and of a password= option: for logs.redact too
URL_PASSWORD_RE = re.compile(r'(\b(?:rediss?(?:\+sentinel)?|unix)://[^:@/\s]*:)[^@\s]+@', re.IGNORECASE)
PASSWORD_ARG_RE = re.compile(r'((?:^|&|\b)(?:sentinel_)?password=)[^&\s]*', re.IGNORECASE)
SENTINEL_SCHEMES = ('redis+sentinel', 'rediss+sentinel')
DEFAULT_SENTINEL_PORT = 26379


def redact_url(url: str) -> str:
    """A Redis URL fit for logs: the password (before the @ or as ?password=, which redis-py accepts) is replaced."""
    base, sep, query = url.partition('?')
    query = PASSWORD_ARG_RE.sub(r'\1***', query)
    if '@' not in base or '://' not in base:
        return base + sep + query
    scheme, rest = base.split('://', 1)
    creds, host = rest.rsplit('@', 1)
    user = creds.split(':', 1)[0] if ':' in creds else ''
    return f'{scheme}://{user}:***@{host}{sep}{query}'


@dataclass(frozen=True, slots=True)
class SentinelUrl:
    """redis+sentinel://[user:password@]host1:26379,host2:26379/master_name[/db][?options], parsed.

    The credentials are the master's; ?sentinel_username= and ?sentinel_password= are the sentinels' own, if they
    need any. rediss+sentinel:// speaks TLS to the master. Other options (ssl_cert_reqs=, socket_timeout=, ...) are
    redis-py's URL options.
    """

    sentinels: tuple[tuple[str, int], ...]
    service_name: str
    db: int = 0
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    ssl: bool = False
    sentinel_auth: dict[str, Any] = field(default_factory=dict, repr=False)
    options: dict[str, Any] = field(default_factory=dict)


def is_sentinel_url(url: str) -> bool:
    return url.partition('://')[0].lower() in SENTINEL_SCHEMES


def parse_sentinel_url(url: str) -> SentinelUrl:
    """Parse a Sentinel URL; ValueError (never quoting a password) when it is not one."""
    scheme, sep, rest = url.partition('://')
    if not sep or scheme.lower() not in SENTINEL_SCHEMES:
        raise ValueError(f'{redact_url(url)} is not a redis+sentinel:// URL')
    base, _, query = rest.partition('?')
    netloc, _, path = base.partition('/')
    creds, at, hostlist = netloc.rpartition('@')
    username = password = None
    if at:
        user, colon, secret = creds.partition(':')
        username = unquote(user) or None
        password = unquote(secret) if colon and secret else None
    sentinels = tuple(_host_port(item, url) for item in hostlist.split(',') if item)
    parts = [unquote(part) for part in path.split('/') if part]
    if not sentinels or not parts or len(parts) > 2 or (len(parts) == 2 and not parts[1].isdecimal()):
        raise ValueError(
            f'{redact_url(url)}: expected redis+sentinel://[user:password@]host:port[,host:port...]/master_name[/db]'
        )
    options: dict[str, Any] = dict(parse_url('redis://?' + query)) if query else {}
    sentinel_auth = {
        key.removeprefix('sentinel_'): options.pop(key)
        for key in ('sentinel_username', 'sentinel_password')
        if key in options
    }
    return SentinelUrl(
        sentinels=sentinels,
        service_name=parts[0],
        db=int(parts[1]) if len(parts) == 2 else 0,
        username=username,
        password=password,
        ssl=scheme.lower() == 'rediss+sentinel',
        sentinel_auth=sentinel_auth,
        options=options,
    )


def _host_port(item: str, url: str) -> tuple[str, int]:
    if item.startswith('['):  # [ipv6]:port
        host, _, port = item[1:].partition(']')
        port = port.removeprefix(':')
    else:
        host, _, port = item.rpartition(':') if ':' in item else (item, '', '')
    if not host or (port and not port.isdecimal()):
        raise ValueError(f'{redact_url(url)}: {item!r} is not host:port')
    return host, int(port) if port else DEFAULT_SENTINEL_PORT


def connect(url: str, **kwargs: Any) -> Redis:
    """A client for any URL the config accepts: redis://, rediss://, unix://, or the master behind Sentinels."""
    if not is_sentinel_url(url):
        return Redis.from_url(url, **kwargs)
    parsed = parse_sentinel_url(url)
    sentinel_kwargs = {key: value for key, value in kwargs.items() if key.startswith('socket_')}
    sentinel = Sentinel(  # type: ignore[no-untyped-call]
        list(parsed.sentinels), sentinel_kwargs={**sentinel_kwargs, **parsed.sentinel_auth}
    )
    master_kwargs: dict[str, Any] = {**kwargs, **parsed.options, 'db': parsed.db}
    if parsed.username:
        master_kwargs['username'] = parsed.username
    if parsed.password:
        master_kwargs['password'] = parsed.password
    if parsed.ssl:
        master_kwargs['ssl'] = True
    client: Redis = sentinel.master_for(parsed.service_name, redis_class=Redis, **master_kwargs)
    return client
