"""How much one client may do, in this process: an event rate per connection, connections per client address."""

from __future__ import annotations

import ipaddress
import resource
import time
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from ..config.settings import LimitSettings
from ..errors import RATE_LIMITED, TOO_MANY_CONNECTIONS

__all__ = ['RATE_LIMITED', 'TOO_MANY_CONNECTIONS', 'ConnectionLimiter', 'address_key', 'client_ip']

UNKNOWN_ADDRESS = 'unknown'
SOCKETS_PER_SESSION = 2  # open sockets an address may hold per session of its cap (a poll and a post, or an upgrade)


def address_key(ip: str) -> str:
    """What a per-address cap counts: the address itself, or for IPv6 its /64 (one subscriber's whole prefix)."""
    if ':' not in ip:
        return ip
    try:
        address = ipaddress.IPv6Address(ip.split('%', 1)[0])
    except ValueError:
        return ip
    if address.ipv4_mapped is not None:
        return str(address.ipv4_mapped)
    return str(ipaddress.IPv6Network((int(address) >> 64 << 64, 64)))


def client_ip(environ: Mapping[str, Any], trust_forwarded_for: bool) -> str:
    """The client's address: the peer of the HTTP request, or what the proxy appended to X-Forwarded-For if trusted.

    python-engineio's Sanic driver always sets REMOTE_ADDR to 127.0.0.1, so the peer comes from the Sanic request.
    """
    if trust_forwarded_for:
        forwarded = environ.get('HTTP_X_FORWARDED_FOR')
        if isinstance(forwarded, str):
            # the last entry is the one the (trusted) proxy added; earlier ones are whatever the client sent
            last = forwarded.rsplit(',', 1)[-1].strip()
            if last:
                return last[:64]
    request = environ.get('sanic.request')
    ip = getattr(request, 'ip', None) if request is not None else None
    if isinstance(ip, str) and ip:
        return ip
    remote = environ.get('REMOTE_ADDR')
    return remote if isinstance(remote, str) and remote else UNKNOWN_ADDRESS


@dataclass(slots=True)
class TokenBucket:
    """Holds up to burst tokens, refilled at rate per second; each event takes one."""

    tokens: float
    stamp: float

    def take(self, now: float, rate: float, burst: int) -> bool:
        self.tokens = min(float(burst), self.tokens + (now - self.stamp) * rate)
        self.stamp = now
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return True
        return False


class ConnectionLimiter:
    """Engine.IO sessions and open sockets by client address, and an event bucket per session.

    Limits are read live from the settings (a reload applies at once). Addresses are counted by address_key.
    """

    def __init__(
        self,
        limits: Callable[[], LimitSettings] = LimitSettings,
        trust_forwarded_for: bool = False,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.limits = limits
        self.trust_forwarded_for = trust_forwarded_for
        self.clock = clock
        self.address: dict[str, str] = {}  # eio sid -> client address key
        self.per_address: Counter[str] = Counter()
        self.sockets: Counter[str] = Counter()  # open sockets (TCP connections) by address key
        self.buckets: dict[str, TokenBucket] = {}
        self.tripped: set[str] = set()  # eio sids already over their rate (logged and handled once)
        self.refused: Counter[str] = Counter()  # eio sid -> namespace connects refused so far
        self.open_sockets = 0  # every socket this process holds for clients, whatever its address
        self.socket_ceiling = 0  # refuse new sockets (503) at this many; 0: no ceiling (set from the file limit)

    def client_ip(self, environ: Mapping[str, Any]) -> str:
        return client_ip(environ, self.trust_forwarded_for)

    def opened(self, eio_sid: str, ip: str) -> None:
        """A new Engine.IO session from ip."""
        key = address_key(ip)
        self.address[eio_sid] = key
        self.per_address[key] += 1

    def closed(self, eio_sid: str) -> None:
        key = self.address.pop(eio_sid, None)
        if key is not None:
            _decrement(self.per_address, key)
        self.buckets.pop(eio_sid, None)
        self.tripped.discard(eio_sid)
        self.refused.pop(eio_sid, None)

    def at_ceiling(self) -> bool:
        """True when this process holds as many client sockets as its open-file limit leaves room for."""
        return 0 < self.socket_ceiling <= self.open_sockets

    def socket_opened(self, ip: str) -> bool:
        """A new socket from ip: counted and True, or False (not counted) when its address holds its share already.

        An empty ip (behind a trusted proxy every socket comes from it) counts towards the process's total only.
        """
        if ip:
            key = address_key(ip)
            cap = self.limits().max_connections_per_ip
            if cap > 0 and self.sockets[key] >= SOCKETS_PER_SESSION * cap:
                return False
            self.sockets[key] += 1
        self.open_sockets += 1
        return True

    def socket_closed(self, ip: str) -> None:
        self.open_sockets = max(0, self.open_sockets - 1)
        if ip:
            _decrement(self.sockets, address_key(ip))

    def connect_refused(self, eio_sid: str) -> bool:
        """Count a refused namespace connect of a session; True when it has had its share (close the session)."""
        self.refused[eio_sid] += 1
        return self.refused[eio_sid] >= self.limits().max_refused_connects

    def connections(self, eio_sid: str) -> int:
        """How many sessions the address of this session holds, this one included."""
        ip = self.address.get(eio_sid)
        return self.per_address[ip] if ip is not None else 0

    def over_cap(self, eio_sid: str) -> bool:
        """True when this session's address holds more sessions than max_connections_per_ip (0: no cap)."""
        cap = self.limits().max_connections_per_ip
        return cap > 0 and self.connections(eio_sid) > cap

    def refuse_handshake(self, ip: str) -> bool:
        """True when an address already holds twice its cap: refuse new sessions before they open.

        Up to that, a session over the cap opens and is refused at the namespace with a clear connect_error; a
        client that keeps such refused sessions open instead of closing them is then stopped at the handshake.
        """
        cap = self.limits().max_connections_per_ip
        return cap > 0 and self.per_address[address_key(ip)] >= 2 * cap

    def allow_event(self, eio_sid: str) -> bool:
        """Take a token for one client event; False when the connection is over its rate."""
        limits = self.limits()
        now = self.clock()
        bucket = self.buckets.get(eio_sid)
        if bucket is None:
            bucket = self.buckets[eio_sid] = TokenBucket(float(limits.burst), now)
        return bucket.take(now, limits.events_per_second, limits.burst)

    def trip(self, eio_sid: str) -> bool:
        """Mark a session as over its rate; True the first time (log it and act once)."""
        if eio_sid in self.tripped:
            return False
        self.tripped.add(eio_sid)
        return True


FD_RESERVE = 128  # descriptors kept for what is not a client socket: Redis connections, logs, listeners, pipes


def socket_ceiling(reserve: int = FD_RESERVE) -> int:
    """The client sockets this process can hold: its open-file limit (soft) less a reserve; 0 when unlimited."""
    soft, _hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        return 0
    return max(1, soft - reserve)


def raise_file_limit() -> tuple[int, int]:
    """Raise this process's open-file limit to its hard limit (children inherit it); returns (before, now)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and soft < hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        except (OSError, ValueError):
            return soft, soft
        return soft, hard
    return soft, soft


def _decrement(counter: Counter[str], key: str) -> None:
    counter[key] -= 1
    if counter[key] <= 0:
        del counter[key]
