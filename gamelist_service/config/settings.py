"""The typed, frozen settings object; config.py builds it from a validated file and nothing else reads YAML."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

Status = Literal['active', 'maintenance', 'coming_soon']
AuthMode = Literal['none', 'token', 'jwt']
OverLimit = Literal['disconnect', 'error']
FedBy = Literal['templates', 'producers']
EMBEDDED = 'embedded'


@dataclass(frozen=True, slots=True)
class ServerSettings:
    """The listening side; a running process keeps these until it restarts."""

    host: str = '127.0.0.1'
    port: int = 3000
    cors_allowed_origins: tuple[str, ...] = ('http://localhost:3000', 'http://127.0.0.1:3000')
    transports: tuple[str, ...] = ()  # () when the file does not say: both, or websocket only with N workers
    ping_interval_s: float = 25.0
    ping_timeout_s: float = 20.0
    sticky_sessions: bool = False
    max_http_buffer_size: int = 65536
    fast_path: bool = True
    trust_forwarded_for: bool = False  # take the client address from X-Forwarded-For (only behind a proxy)
    connect_timeout_s: float = 45.0  # a session that joins no namespace in this time is closed
    handshake_timeout_s: float = 10.0  # the whole request head must arrive within this time
    backlog: int = 4096
    admin_token_env: str = ''
    admin_token: str = field(default='', repr=False)  # unlocks /ready's details: never in a repr or a log
    metrics_listen: tuple[str, int] | None = None  # a separate listener for /metrics


@dataclass(frozen=True, slots=True)
class RedisSettings:
    url: str = EMBEDDED
    session_ttl_s: float = 3600.0
    user_ttl_s: float = 86400.0
    state_dir: Path = Path('.gamelist')
    persistence: bool = False
    maxmemory: str = '256mb'
    maxmemory_policy: str = 'volatile-lfu'

    @property
    def embedded(self) -> bool:
        return self.url == EMBEDDED


@dataclass(frozen=True, slots=True)
class JwtSettings:
    """How a namespace verifies a JWT: the key (read from the environment variable key_env), issuer, audience."""

    issuer: str
    audience: str
    algorithms: tuple[str, ...] = ('HS256',)
    leeway_s: float = 0.0
    key_env: str = ''
    key: str = field(default='', repr=False)  # the secret or public key itself: never in a repr or a log
    user_claim: str = 'sub'  # device:info's user_id must equal this claim


@dataclass(frozen=True, slots=True)
class AuthSettings:
    """Who may connect to a namespace: anyone, holders of a shared secret, or holders of a valid JWT."""

    mode: AuthMode = 'none'
    token_env: str = ''
    token: str = field(default='', repr=False)  # the shared secret from token_env: never in a repr or a log
    jwt: JwtSettings | None = None


@dataclass(frozen=True, slots=True)
class LimitSettings:
    """Per-connection event rate (token bucket) and connections per client address, in this process."""

    events_per_second: float = 20.0
    burst: int = 100
    max_connections_per_ip: int = 100  # 0: no cap
    over_limit: OverLimit = 'disconnect'
    max_refused_connects: int = 3  # refused namespace connects before the Engine.IO session is closed


@dataclass(frozen=True, slots=True)
class NamespaceSettings:
    name: str
    list: str
    send_list_on_connect: bool = False
    auth: AuthSettings = AuthSettings()


@dataclass(frozen=True, slots=True)
class PlayerCounts:
    """Fixed counts (active == active_max, live fixed) or simulated ranges."""

    mode: Literal['simulated', 'fixed']
    active_min: int
    active_max: int
    live_ratio_min: float = 0.3
    live_ratio_max: float = 0.8
    live_fixed: int = 0


@dataclass(frozen=True, slots=True)
class GameTemplate:
    id: str
    name: str
    type: str
    min_players: int
    max_players: int
    status: Status
    players: PlayerCounts
    created_at: str


@dataclass(frozen=True, slots=True)
class ListSettings:
    name: str
    key: str
    ttl_s: float
    games: tuple[str, ...]
    event: str
    namespaces: tuple[str, ...]
    fed_by: FedBy = 'templates'  # producers: only what producers push, never built from templates

    @property
    def from_producers(self) -> bool:
        return self.fed_by == 'producers'


@dataclass(frozen=True, slots=True)
class ProducerSettings:
    """Who may send game_list:updated: holders of the producers' secret, or JWT clients with a claim."""

    token_env: str = ''
    token: str = field(default='', repr=False)  # the secret from token_env: never in a repr or a log
    jwt_claim: tuple[str, str] | None = None  # (name, value)


@dataclass(frozen=True, slots=True)
class ScheduleSettings:
    name: str
    list: str
    interval_s: float | None = None
    cron: str | None = None
    max_runs: int | None = None
    jitter_s: float = 0.0
    run_at_start: bool = True


@dataclass(frozen=True, slots=True)
class Settings:
    """Everything the service needs, as declared in one configuration file."""

    source: Path
    server: ServerSettings
    redis: RedisSettings
    namespaces: tuple[NamespaceSettings, ...]
    games: tuple[GameTemplate, ...]
    lists: tuple[ListSettings, ...]
    schedules: tuple[ScheduleSettings, ...]
    leader_lease_s: float = 5.0
    limits: LimitSettings = LimitSettings()
    producers: ProducerSettings = ProducerSettings()
    digest: str = ''

    def get_list(self, name: str) -> ListSettings:
        for item in self.lists:
            if item.name == name:
                return item
        raise KeyError(name)

    def get_namespace(self, name: str) -> NamespaceSettings:
        for item in self.namespaces:
            if item.name == name:
                return item
        raise KeyError(name)

    def templates_for(self, list_settings: ListSettings) -> tuple[GameTemplate, ...]:
        by_id = {game.id: game for game in self.games}
        return tuple(by_id[game_id] for game_id in list_settings.games)
