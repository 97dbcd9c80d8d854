"""The typed, frozen settings object; loader.py builds it from a validated file and nothing else reads YAML.
Every default is the schema's (schema.default), stated there once."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from .schema import default, default_s

Status = Literal['active', 'maintenance', 'coming_soon']
AuthMode = Literal['none', 'token', 'jwt']
OverLimit = Literal['disconnect', 'error']
FedBy = Literal['templates', 'producers']
EMBEDDED = 'embedded'
# environment variables that override the file
ENV_REDIS_URL = 'GAMELIST_REDIS_URL'
ENV_PORT = 'GAMELIST_PORT'
ENV_STATE_DIR = 'GAMELIST_STATE_DIR'


@dataclass(frozen=True, slots=True)
class ServerSettings:
    """The listening side; a running process keeps these until it restarts."""

    host: str = default('server', 'host')
    port: int = default('server', 'port')
    cors_allowed_origins: tuple[str, ...] = default('server', 'cors_allowed_origins')
    transports: tuple[str, ...] = ()  # () when the file does not say: both, or websocket only with N workers
    ping_interval_s: float = default_s('server', 'ping_interval')
    ping_timeout_s: float = default_s('server', 'ping_timeout')
    sticky_sessions: bool = default('server', 'sticky_sessions')
    max_http_buffer_size: int = default('server', 'max_http_buffer_size')
    fast_path: bool = default('server', 'fast_path')
    trust_forwarded_for: bool = default(
        'server', 'trust_forwarded_for'
    )  # take the client address from X-Forwarded-For (only behind a proxy)
    connect_timeout_s: float = default_s(
        'server', 'connect_timeout'
    )  # a session that joins no namespace in this time is closed
    handshake_timeout_s: float = default_s(
        'server', 'handshake_timeout'
    )  # the whole request head must arrive within this time
    backlog: int = default('server', 'backlog')
    reuse_port: bool = default('server', 'reuse_port')  # a listening socket per worker (SO_REUSEPORT)
    compression: bool = default('server', 'compression')
    compression_threshold: int = default('server', 'compression_threshold')
    admin_token_env: str = ''
    admin_token: str = field(default='', repr=False)  # unlocks /ready's details: never in a repr or a log
    metrics_listen: tuple[str, int] | None = None  # a separate listener for /metrics


@dataclass(frozen=True, slots=True)
class RedisSettings:
    url: str = EMBEDDED
    session_ttl_s: float = default_s('redis', 'session_ttl')
    user_ttl_s: float = default_s('redis', 'user_ttl')
    state_dir: Path = Path(default('redis', 'embedded', 'state_dir'))
    persistence: bool = default('redis', 'embedded', 'persistence')
    maxmemory: str = default('redis', 'embedded', 'maxmemory')
    maxmemory_policy: str = default('redis', 'embedded', 'maxmemory_policy')

    @property
    def embedded(self) -> bool:
        return self.url == EMBEDDED


@dataclass(frozen=True, slots=True)
class JwtSettings:
    """How a namespace verifies a JWT: the key (read from the environment variable key_env), issuer, audience."""

    issuer: str
    audience: str
    algorithms: tuple[str, ...] = default('$defs', 'jwt', 'algorithms')
    leeway_s: float = default_s('$defs', 'jwt', 'leeway')
    key_env: str = ''
    key: str = field(default='', repr=False)  # the secret or public key itself: never in a repr or a log
    user_claim: str = default('$defs', 'jwt', 'user_claim')  # device:info's user_id must equal this claim


@dataclass(frozen=True, slots=True)
class AuthSettings:
    """Who may connect to a namespace: anyone, holders of a shared secret, or holders of a valid JWT."""

    mode: AuthMode = default('$defs', 'auth', 'mode')
    token_env: str = ''
    token: str = field(default='', repr=False)  # the shared secret from token_env: never in a repr or a log
    jwt: JwtSettings | None = None


@dataclass(frozen=True, slots=True)
class LimitSettings:
    """Per-connection event rate (token bucket) and connections per client address, in this process."""

    events_per_second: float = default('limits', 'events_per_second')
    burst: int = default('limits', 'burst')
    max_connections_per_ip: int = default('limits', 'max_connections_per_ip')  # 0: no cap
    over_limit: OverLimit = default('limits', 'over_limit')
    max_refused_connects: int = default(
        'limits', 'max_refused_connects'
    )  # refused namespace connects before the Engine.IO session is closed


@dataclass(frozen=True, slots=True)
class NamespaceSettings:
    name: str
    list: str
    send_list_on_connect: bool = default('$defs', 'namespace', 'send_list_on_connect')
    auth: AuthSettings = AuthSettings()


@dataclass(frozen=True, slots=True)
class PlayerCounts:
    """Fixed counts (active == active_max, live fixed) or simulated ranges."""

    mode: Literal['simulated', 'fixed']
    active_min: int
    active_max: int
    live_ratio_min: float = default('$defs', 'players', 'else', 'live_ratio')[0]
    live_ratio_max: float = default('$defs', 'players', 'else', 'live_ratio')[1]
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
    fed_by: FedBy = default(
        '$defs', 'list', 'fed_by'
    )  # producers: only what producers push, never built from templates

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
    jitter_s: float = default_s('$defs', 'schedule', 'jitter')
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
    leader_lease_s: float = default_s('leader', 'lease')
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
