"""Settings from a configuration that validated: the file's values, the schema's defaults (schema.defaults) for
what it leaves out, and the environment's secrets and overrides."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from .durations import parse_duration
from .schema import defaults
from .settings import (
    ENV_PORT,
    ENV_REDIS_URL,
    ENV_STATE_DIR,
    AuthSettings,
    GameTemplate,
    JwtSettings,
    LimitSettings,
    ListSettings,
    NamespaceSettings,
    PlayerCounts,
    ProducerSettings,
    RedisSettings,
    ScheduleSettings,
    ServerSettings,
    Settings,
)


def _host_port(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(':')
    return host.strip('[]'), int(port)


def build(path: Path, data: dict[str, Any], env: Mapping[str, str]) -> Settings:
    """The Settings of a configuration that passed every check (loader.check_text)."""
    server = defaults('server') | data.get('server', {})
    redis = defaults('redis') | data['redis']
    embedded = defaults('redis', 'embedded') | redis.get('embedded', {})
    now = datetime.now(UTC).strftime('%Y-%m-%dT%H:%M:%SZ')
    games = tuple(_game(game, now) for game in data['games'])
    all_ids = tuple(game.id for game in games)
    lists = tuple(
        ListSettings(
            name=name,
            key=lst['key'],
            ttl_s=parse_duration(lst['ttl']),
            games=all_ids if lst.get('games') == 'all' else tuple(lst.get('games', ())),
            event=lst['event'],
            namespaces=tuple(lst['namespaces']),
            fed_by=lst['fed_by'],
        )
        for name, lst in ((name, defaults('$defs', 'list') | given) for name, given in data['lists'].items())
    )
    namespaces = tuple(
        NamespaceSettings(
            name=name,
            list=conf.get('list') or next(lst.name for lst in lists if name in lst.namespaces),
            send_list_on_connect=conf['send_list_on_connect'],
            auth=_auth(conf.get('auth') or {}, env),
        )
        for name, conf in (
            (name, defaults('$defs', 'namespace') | (given or {})) for name, given in data['namespaces'].items()
        )
    )
    schedules = tuple(
        ScheduleSettings(
            name=sched['name'],
            list=sched['list'],
            interval_s=parse_duration(sched['every']) if 'every' in sched else None,
            cron=sched.get('cron'),
            max_runs=sched.get('max_runs'),
            jitter_s=parse_duration(sched['jitter']),
            run_at_start=sched.get('run_at_start', 'cron' not in sched),  # its default depends on the kind
        )
        for sched in (defaults('$defs', 'schedule') | given for given in data['schedules'])
    )
    return Settings(
        source=path,
        server=ServerSettings(
            host=server['host'],
            port=int(env.get(ENV_PORT) or server['port']),
            cors_allowed_origins=tuple(server['cors_allowed_origins']),
            transports=tuple(data.get('server', {}).get('transports', ())),  # () = not given: chosen at serve
            ping_interval_s=parse_duration(server['ping_interval']),
            ping_timeout_s=parse_duration(server['ping_timeout']),
            max_http_buffer_size=server['max_http_buffer_size'],
            sticky_sessions=server['sticky_sessions'],
            fast_path=server['fast_path'],
            trust_forwarded_for=server['trust_forwarded_for'],
            connect_timeout_s=parse_duration(server['connect_timeout']),
            handshake_timeout_s=parse_duration(server['handshake_timeout']),
            backlog=server['backlog'],
            reuse_port=server['reuse_port'],
            compression=server['compression'],
            compression_threshold=server['compression_threshold'],
            admin_token_env=server.get('admin_token_env', ''),
            admin_token=env.get(server['admin_token_env'], '') if 'admin_token_env' in server else '',
            metrics_listen=_host_port(server['metrics_listen']) if 'metrics_listen' in server else None,
        ),
        redis=RedisSettings(
            url=env.get(ENV_REDIS_URL) or redis['url'],
            session_ttl_s=parse_duration(redis['session_ttl']),
            user_ttl_s=parse_duration(redis['user_ttl']),
            state_dir=Path(env.get(ENV_STATE_DIR) or embedded['state_dir']),
            persistence=embedded['persistence'],
            maxmemory=embedded['maxmemory'],
            maxmemory_policy=embedded['maxmemory_policy'],
        ),
        namespaces=namespaces,
        games=games,
        lists=lists,
        schedules=schedules,
        leader_lease_s=parse_duration((defaults('leader') | data.get('leader', {}))['lease']),
        limits=_limits(defaults('limits') | data.get('limits', {})),
        producers=_producers(data.get('producers') or {}, env),
    )


def _producers(conf: dict[str, Any], env: Mapping[str, str]) -> ProducerSettings:
    claim = conf.get('jwt_claim')
    return ProducerSettings(
        token_env=conf.get('token_env', ''),
        token=env.get(conf['token_env'], '') if 'token_env' in conf else '',
        jwt_claim=(claim['name'], claim['value']) if claim else None,
    )


def _limits(limits: dict[str, Any]) -> LimitSettings:
    return LimitSettings(
        events_per_second=float(limits['events_per_second']),
        burst=limits['burst'],
        max_connections_per_ip=limits['max_connections_per_ip'],
        over_limit=limits['over_limit'],
        max_refused_connects=limits['max_refused_connects'],
    )


def _auth(auth: dict[str, Any], env: Mapping[str, str]) -> AuthSettings:
    """A namespace's auth with its secret read from the environment (checked to be there by _auth_problems)."""
    if auth.get('mode') == 'token':
        return AuthSettings('token', token_env=auth['token_env'], token=env.get(auth['token_env'], ''))
    if auth.get('mode') == 'jwt':
        conf = defaults('$defs', 'jwt') | auth['jwt']
        key_env = conf.get('secret_env') or conf['public_key_env']
        jwt = JwtSettings(
            issuer=conf['issuer'],
            audience=conf['audience'],
            algorithms=tuple(conf['algorithms']),
            leeway_s=parse_duration(conf['leeway']),
            key_env=key_env,
            key=env.get(key_env, ''),
            user_claim=conf['user_claim'],
        )
        return AuthSettings('jwt', jwt=jwt)
    return AuthSettings()


def _game(game: dict[str, Any], now: str) -> GameTemplate:
    players = game['players']
    if players['mode'] == 'fixed':
        counts = PlayerCounts('fixed', players['active'], players['active'], live_fixed=players['live'])
    else:
        ratio = (defaults('$defs', 'players', 'else') | players)['live_ratio']
        counts = PlayerCounts('simulated', players['active'][0], players['active'][1], ratio[0], ratio[1])
    return GameTemplate(
        id=game['id'],
        name=game['name'],
        type=game['type'],
        min_players=game['min_players'],
        max_players=game['max_players'],
        status=game['status'],
        players=counts,
        created_at=game.get('created_at', now),
    )
