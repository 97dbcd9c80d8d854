"""Namespaces that require a token: a shared secret or a JWT, from the config, checked on connect."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jwt
import pytest
import socketio
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from gamelist_service.config.loader import load_settings
from gamelist_service.config.settings import AuthSettings, JwtSettings
from gamelist_service.errors import ConfigError
from gamelist_service.web import auth
from gamelist_service.web.auth import AuthRefused, authenticate, token_from

from .browser import CHROMIUM, CHROMIUM_ARGS, WAIT_MS, wait_for_log
from .helpers import Recorder, Serve, hourly_data, serve_in, serving, shipped_data, write_config
from .jwt_tokens import AUDIENCE, HMAC_KEY, ISSUER, SHARED, claims, hs_token

GAMEPLAY = 'namespaces["/gameplay"]'  # how problems name the namespace's path


@pytest.fixture(scope='module')
def rsa_keys() -> tuple[str, str]:
    private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    private_pem = private.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()
    public_pem = (
        private.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )
    return private_pem, public_pem


# --- the checks themselves ---------------------------------------------------------------------------------------

TOKEN_AUTH = AuthSettings('token', token_env='GAMEPLAY_TOKEN', token=SHARED)
JWT_AUTH = AuthSettings('jwt', jwt=JwtSettings(issuer=ISSUER, audience=AUDIENCE, key_env='JWT_SECRET', key=HMAC_KEY))


def test_no_auth_accepts_anyone() -> None:
    assert authenticate(AuthSettings(), {}, None) == {}


def test_token_from_auth_payload_or_bearer_header() -> None:
    assert token_from({}, {'token': 'abc'}) == 'abc'
    assert token_from({'HTTP_AUTHORIZATION': 'Bearer xyz'}, None) == 'xyz'
    assert token_from({'HTTP_AUTHORIZATION': 'bearer  xyz '}, {'since': 3}) == 'xyz'
    assert token_from({'HTTP_AUTHORIZATION': 'Basic dXNlcg=='}, {'token': ''}) is None
    assert token_from({}, {'token': 42}) is None
    assert token_from({}, 'not a dict') is None


@pytest.mark.parametrize(
    ('environ', 'payload', 'message'),
    [
        ({}, None, auth.AUTH_REQUIRED),
        ({}, {'since': 4}, auth.AUTH_REQUIRED),
        ({}, {'token': 'wrong'}, auth.INVALID_TOKEN),
        ({}, {'token': SHARED + 'x'}, auth.INVALID_TOKEN),
        ({}, {'token': 'ünïcode'}, auth.INVALID_TOKEN),
        ({'HTTP_AUTHORIZATION': 'Bearer wrong'}, None, auth.INVALID_TOKEN),
    ],
)
def test_shared_token_refusals(environ: dict[str, str], payload: Any, message: str) -> None:
    with pytest.raises(AuthRefused) as caught:
        authenticate(TOKEN_AUTH, environ, payload)
    assert caught.value.message == message
    assert SHARED not in caught.value.message and SHARED not in caught.value.reason


def test_shared_token_accepted_from_payload_or_header() -> None:
    assert authenticate(TOKEN_AUTH, {}, {'token': SHARED, 'since': 3}) == {}
    assert authenticate(TOKEN_AUTH, {'HTTP_AUTHORIZATION': f'Bearer {SHARED}'}, None) == {}


def test_jwt_accepted_returns_its_claims() -> None:
    assert authenticate(JWT_AUTH, {}, {'token': hs_token()})['sub'] == 'player-1'


@pytest.mark.parametrize(
    ('token', 'message'),
    [
        (lambda: hs_token(exp=int(time.time()) - 60), auth.TOKEN_EXPIRED),
        (lambda: hs_token(iss='https://elsewhere.example'), auth.WRONG_ISSUER),
        (lambda: hs_token(aud='another-service'), auth.WRONG_AUDIENCE),
        (lambda: hs_token(exp=None), auth.MISSING_CLAIM),
        (lambda: hs_token(iss=None), auth.MISSING_CLAIM),
        (lambda: hs_token(aud=None), auth.MISSING_CLAIM),
        (lambda: hs_token(nbf=int(time.time()) + 600), auth.TOKEN_NOT_YET_VALID),
        (lambda: hs_token(key='another-secret-that-is-also-32-bytes-long'), auth.INVALID_TOKEN),
        (lambda: jwt.encode(claims(), '', algorithm='none'), auth.INVALID_TOKEN),
        (lambda: 'not.a.jwt', auth.INVALID_TOKEN),
    ],
)
def test_jwt_refusals(token: Any, message: str) -> None:
    with pytest.raises(AuthRefused) as caught:
        authenticate(JWT_AUTH, {}, {'token': token()})
    assert caught.value.message == message


def test_jwt_leeway_accepts_a_just_expired_token() -> None:
    lenient = AuthSettings('jwt', jwt=JwtSettings(ISSUER, AUDIENCE, leeway_s=120, key=HMAC_KEY))
    assert authenticate(lenient, {}, {'token': hs_token(exp=int(time.time()) - 60)})['sub'] == 'player-1'


def test_rs256_with_a_public_key(rsa_keys: tuple[str, str]) -> None:
    private_pem, public_pem = rsa_keys
    settings = AuthSettings('jwt', jwt=JwtSettings(ISSUER, AUDIENCE, algorithms=('RS256',), key=public_pem))
    token = jwt.encode(claims(), private_pem, algorithm='RS256')
    assert authenticate(settings, {}, {'token': token})['iss'] == ISSUER
    # only RS256 is accepted: an HS256 token (e.g. one "signed" with the public key's text) is refused
    forged = jwt.encode(claims(), 'x' * 64, algorithm='HS256')
    with pytest.raises(AuthRefused) as caught:
        authenticate(settings, {}, {'token': forged})
    assert caught.value.message == auth.INVALID_TOKEN


def test_secrets_never_show_in_a_repr() -> None:
    assert SHARED not in repr(TOKEN_AUTH)
    assert HMAC_KEY not in repr(JWT_AUTH)


# --- the config ---------------------------------------------------------------------------------------------------


def auth_config(tmp_path: Path, gameplay: dict[str, Any], **namespaces: dict[str, Any]) -> Path:
    data = shipped_data()
    data['namespaces']['/gameplay']['auth'] = gameplay
    for name, conf in namespaces.items():
        data['namespaces'][name] = conf
    return write_config(tmp_path / 'games.yaml', data)


def config_problems(path: Path, env: dict[str, str]) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        load_settings(path, env)
    return [line.split(': ', 1)[1] for line in caught.value.lines]


def test_config_builds_auth_settings_with_secrets_from_the_environment(tmp_path: Path) -> None:
    path = auth_config(
        tmp_path,
        {'mode': 'token', 'token_env': 'GAMEPLAY_TOKEN'},
        **{
            '/vip': {
                'list': 'current',
                'auth': {
                    'mode': 'jwt',
                    'jwt': {'secret_env': 'JWT_SECRET', 'issuer': ISSUER, 'audience': AUDIENCE, 'leeway': '30s'},
                },
            }
        },
    )
    settings = load_settings(path, {'GAMEPLAY_TOKEN': SHARED, 'JWT_SECRET': HMAC_KEY})
    assert settings.get_namespace('/').auth == AuthSettings()
    assert settings.get_namespace('/gameplay').auth == TOKEN_AUTH
    vip = settings.get_namespace('/vip').auth
    assert vip.mode == 'jwt' and vip.jwt is not None
    assert (vip.jwt.algorithms, vip.jwt.leeway_s, vip.jwt.key_env, vip.jwt.key) == (
        ('HS256',),
        30.0,
        'JWT_SECRET',
        HMAC_KEY,
    )
    assert SHARED not in repr(settings) and HMAC_KEY not in repr(settings)


def test_missing_secret_is_a_problem_naming_the_field(tmp_path: Path) -> None:
    path = auth_config(tmp_path, {'mode': 'token', 'token_env': 'GAMEPLAY_TOKEN'})
    for env in ({}, {'GAMEPLAY_TOKEN': ''}):
        assert config_problems(path, env) == [
            (
                f'{GAMEPLAY}.auth.token_env: environment variable GAMEPLAY_TOKEN is not set (or empty); '
                'it must hold the shared secret of namespace /gameplay'
            )
        ]


def test_jwt_config_problems(tmp_path: Path, rsa_keys: tuple[str, str]) -> None:
    base = {'issuer': ISSUER, 'audience': AUDIENCE}
    path = auth_config(tmp_path, {'mode': 'jwt', 'jwt': {'secret_env': 'JWT_SECRET', **base}})
    (problem,) = config_problems(path, {'JWT_SECRET': 'tiny-XYZ'})
    assert problem.startswith(f'{GAMEPLAY}.auth.jwt.secret_env: JWT_SECRET is too short for HS256')
    assert 'tiny-XYZ' not in problem  # the key itself is never quoted

    path = auth_config(
        tmp_path, {'mode': 'jwt', 'jwt': {'public_key_env': 'JWT_PUBLIC', 'algorithms': ['RS256'], **base}}
    )
    (problem,) = config_problems(path, {'JWT_PUBLIC': 'not a pem'})
    assert problem.startswith(f'{GAMEPLAY}.auth.jwt.public_key_env: JWT_PUBLIC does not hold a key usable')
    assert 'not a pem' not in problem
    jwt_settings = load_settings(path, {'JWT_PUBLIC': rsa_keys[1]}).get_namespace('/gameplay').auth.jwt
    assert jwt_settings is not None and jwt_settings.key == rsa_keys[1]

    path = auth_config(
        tmp_path, {'mode': 'jwt', 'jwt': {'public_key_env': 'JWT_PUBLIC', 'algorithms': ['HS256', 'RS256'], **base}}
    )
    assert config_problems(path, {'JWT_PUBLIC': rsa_keys[1]}) == [
        f'{GAMEPLAY}.auth.jwt.public_key_env: public_key_env holds a public key: HS256 needs secret_env'
    ]
    path = auth_config(tmp_path, {'mode': 'jwt', 'jwt': {'secret_env': 'S', 'public_key_env': 'P', **base}})
    assert config_problems(path, {'S': HMAC_KEY, 'P': rsa_keys[1]})[0] == (
        f"{GAMEPLAY}.auth.jwt: needs exactly one of 'secret_env' (an HMAC secret) or 'public_key_env' (a public key)"
    )
    path = auth_config(tmp_path, {'mode': 'jwt'})
    assert config_problems(path, {}) == [f"{GAMEPLAY}.auth: 'jwt' is a required property"]
    path = auth_config(tmp_path, {'mode': 'token', 'token_env': 'not a name'})
    assert config_problems(path, {})[0].startswith(f"{GAMEPLAY}.auth.token_env: 'not a name' does not match")


# --- end to end: serve with a token namespace and a JWT namespace --------------------------------------------------


@pytest.fixture(scope='module')
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Serve]:
    data = hourly_data()
    data['namespaces']['/gameplay']['auth'] = {'mode': 'token', 'token_env': 'GAMEPLAY_TOKEN'}
    data['namespaces']['/vip'] = {
        'list': 'current',
        'auth': {'mode': 'jwt', 'jwt': {'secret_env': 'VIP_JWT_SECRET', 'issuer': ISSUER, 'audience': AUDIENCE}},
    }
    env = {'GAMEPLAY_TOKEN': SHARED, 'VIP_JWT_SECRET': HMAC_KEY}
    with serving(tmp_path_factory.mktemp('auth'), data, env=env) as serve:
        yield serve
    log = serve.log()
    assert SHARED not in log and HMAC_KEY not in log


async def connect_error(url: str, namespace: str, transport: str = 'websocket', **kwargs: Any) -> Any:
    """Connect to one namespace and expect a refusal: returns the connect_error data the client got."""
    client = Recorder(url, transport, namespaces=(namespace,), **kwargs)
    errors: list[Any] = []

    async def on_error(data: Any = None) -> None:
        errors.append(data)

    client.sio.on('connect_error', on_error, namespace=namespace)
    with pytest.raises(socketio.exceptions.ConnectionError):
        await client.connect()
    assert len(errors) == 1
    return errors[0]


@pytest.mark.parametrize('transport', ['websocket', 'polling'])
async def test_token_namespace_refuses_without_or_with_a_wrong_token(served: Serve, transport: str) -> None:
    assert await connect_error(served.url, '/gameplay', transport) == {'message': auth.AUTH_REQUIRED}
    assert await connect_error(served.url, '/gameplay', transport, auth={'token': 'guess'}) == {
        'message': auth.INVALID_TOKEN
    }
    # the open namespace still takes anyone, and the right token gets in, with since handled as before
    client = await Recorder(served.url, transport, auth={'token': SHARED, 'since': 0}).connect()
    try:
        assert (await client.call('main:screen', namespace='/gameplay'))['status'] == 'success'
        assert (await client.wait_for('game_list:updated', '/gameplay'))[0]['status'] == 'success'
    finally:
        await client.close()
    assert 'wrong token' in served.log() and 'no token' in served.log()


async def test_bearer_header_is_accepted(served: Serve) -> None:
    client = await Recorder(
        served.url, 'polling', namespaces=('/gameplay',), headers={'Authorization': f'Bearer {SHARED}'}
    ).connect()
    try:
        assert (await client.call('main:screen', namespace='/gameplay'))['status'] == 'success'
    finally:
        await client.close()


@pytest.mark.parametrize(
    ('token', 'message'),
    [
        (None, auth.AUTH_REQUIRED),
        (lambda: hs_token(exp=int(time.time()) - 60), auth.TOKEN_EXPIRED),
        (lambda: hs_token(iss='https://elsewhere.example'), auth.WRONG_ISSUER),
        (lambda: hs_token(aud='another-service'), auth.WRONG_AUDIENCE),
        (lambda: hs_token(key='another-secret-that-is-also-32-bytes-long'), auth.INVALID_TOKEN),
    ],
)
async def test_jwt_namespace_refusals(served: Serve, token: Any, message: str) -> None:
    kwargs: dict[str, Any] = {} if token is None else {'auth': {'token': token()}}
    assert await connect_error(served.url, '/vip', **kwargs) == {'message': message}


async def test_jwt_namespace_accepts_a_valid_token(served: Serve) -> None:
    client = await Recorder(served.url, namespaces=('/vip',), auth={'token': hs_token()}).connect()
    try:
        reply = await client.call('main:screen', namespace='/vip')
        assert reply['status'] == 'success' and reply['data']['total_games'] == 5
    finally:
        await client.close()


@pytest.mark.timeout(30)
def test_the_live_page_sends_its_token(tmp_path: Path) -> None:
    """The page's token field: a wrong token shows the connect_error, the right one connects to /gameplay."""
    from playwright.sync_api import sync_playwright  # noqa: PLC0415 - only this test drives a browser

    if not CHROMIUM.exists():
        pytest.skip(f'{CHROMIUM} is missing (test_page.py says how to get it)')
    data = shipped_data()
    data['schedules'][0]['every'] = '1h'
    data['namespaces']['/gameplay']['auth'] = {'mode': 'token', 'token_env': 'GAMEPLAY_TOKEN'}
    serve = serve_in(tmp_path, data, env={'GAMEPLAY_TOKEN': SHARED})
    try:
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS)
            try:
                page = browser.new_page()
                page.goto(serve.url + '/?ns=/gameplay')  # it connects at once, without a token: refused
                wait_for_log(page, f'connect_error: {auth.AUTH_REQUIRED}', 1)
                page.fill('#token', 'not-the-token')
                page.click('#btn-connect')
                wait_for_log(page, f'connect_error: {auth.INVALID_TOKEN}', 1)
                assert page.inner_text('#conn-state') != 'connected'
                page.fill('#token', SHARED)
                page.click('#btn-connect')
                page.wait_for_function(
                    "() => document.querySelector('#conn-state').textContent === 'connected'", timeout=WAIT_MS
                )
                page.wait_for_function("() => document.querySelectorAll('#games tbody tr').length === 5")
            finally:
                browser.close()
    finally:
        assert serve.stop() == 0
    assert SHARED not in serve.log()
