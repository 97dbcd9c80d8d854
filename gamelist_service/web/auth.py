"""Who may connect to a namespace: a shared secret or a JWT, checked on connect. Secrets never reach a log."""

from __future__ import annotations

import hmac
from collections.abc import Mapping
from typing import Any

from ..config.settings import AuthSettings, JwtSettings
from ..errors import GamelistError

HMAC_ALGORITHMS = frozenset({'HS256', 'HS384', 'HS512'})
REQUIRED_CLAIMS = ('exp', 'iss', 'aud')

# What a refused client reads in its connect_error ({"message": ...}); short and free of any secret or internal detail.
AUTH_REQUIRED = 'auth required: send {"token": ...} in the connect auth payload'
INVALID_TOKEN = 'invalid token'
TOKEN_EXPIRED = 'token expired'
TOKEN_NOT_YET_VALID = 'token not valid yet'
WRONG_ISSUER = 'token issuer not accepted'
WRONG_AUDIENCE = 'token audience not accepted'
MISSING_CLAIM = 'token lacks a required claim (exp, iss and aud are required)'


class AuthRefused(GamelistError):
    """A connect the namespace does not accept; message is what the client gets, reason what the log says."""

    status_code = 401

    def __init__(self, message: str, reason: str | None = None) -> None:
        super().__init__(message)
        self.reason = reason or message

    def __repr__(self) -> str:
        return f'AuthRefused(message={self.message!r}, reason={self.reason!r})'


def token_from(environ: Mapping[str, Any], auth: Any) -> str | None:
    """The token a client presents: auth payload {"token": ...}, else an Authorization: Bearer header."""
    if isinstance(auth, dict):
        token = auth.get('token')
        if isinstance(token, str) and token:
            return token
    header = environ.get('HTTP_AUTHORIZATION')
    if isinstance(header, str):
        scheme, _, value = header.strip().partition(' ')
        if scheme.lower() == 'bearer' and value.strip():
            return value.strip()
    return None


def secrets_equal(given: str, expected: str) -> bool:
    """Compare a presented secret with the expected one in constant time, whatever text was presented.

    compare_digest on bytes: no TypeError for non-ASCII text; 'surrogatepass' encodes even a lone surrogate (JSON's
    "\\ud800" decodes to one), which a plain encode() would raise on.
    """
    return hmac.compare_digest(given.encode('utf-8', 'surrogatepass'), expected.encode('utf-8', 'surrogatepass'))


def authenticate(settings: AuthSettings, environ: Mapping[str, Any], auth: Any) -> dict[str, Any]:
    """Check a connect against a namespace's auth; returns the JWT's claims ({} for none or token), else raises."""
    if settings.mode == 'none':
        return {}
    token = token_from(environ, auth)
    if token is None:
        raise AuthRefused(AUTH_REQUIRED, 'no token')
    if settings.mode == 'token':
        if not settings.token or not secrets_equal(token, settings.token):
            raise AuthRefused(INVALID_TOKEN, 'wrong token')
        return {}
    assert settings.jwt is not None  # the schema requires jwt with mode jwt
    return verify_jwt(settings.jwt, token)


def verify_jwt(settings: JwtSettings, token: str) -> dict[str, Any]:
    """Decode and verify a JWT: signature with one of the configured algorithms, exp, iss and aud all required."""
    import jwt  # noqa: PLC0415 - PyJWT is imported where it is used, see key_problem

    try:
        claims: dict[str, Any] = jwt.decode(
            token,
            settings.key,
            algorithms=list(settings.algorithms),
            issuer=settings.issuer,
            audience=settings.audience,
            leeway=settings.leeway_s,
            options={'require': list(REQUIRED_CLAIMS), 'enforce_minimum_key_length': True},
        )
    except jwt.ExpiredSignatureError as exc:
        raise AuthRefused(TOKEN_EXPIRED, 'expired JWT') from exc
    except jwt.ImmatureSignatureError as exc:
        raise AuthRefused(TOKEN_NOT_YET_VALID, 'JWT not valid yet (nbf/iat)') from exc
    except jwt.InvalidIssuerError as exc:
        raise AuthRefused(WRONG_ISSUER, 'JWT with another issuer') from exc
    except jwt.InvalidAudienceError as exc:
        raise AuthRefused(WRONG_AUDIENCE, 'JWT for another audience') from exc
    except jwt.MissingRequiredClaimError as exc:
        raise AuthRefused(MISSING_CLAIM, f'JWT without the {exc.claim} claim') from exc
    except jwt.PyJWTError as exc:  # bad signature, not a JWT, an algorithm not accepted, ...
        raise AuthRefused(INVALID_TOKEN, f'invalid JWT ({type(exc).__name__})') from exc
    return claims


def key_problem(algorithms: tuple[str, ...], key: str, key_field: str) -> str | None:
    """Why a configured key cannot verify tokens with these algorithms (never quoting the key), or None."""
    hmac_wanted = [alg for alg in algorithms if alg in HMAC_ALGORITHMS]
    if key_field == 'secret_env' and len(hmac_wanted) != len(algorithms):
        return 'secret_env holds an HMAC secret: algorithms may only be HS256, HS384 or HS512 (use public_key_env)'
    if key_field == 'public_key_env' and hmac_wanted:
        return f'public_key_env holds a public key: {", ".join(hmac_wanted)} needs secret_env'
    # PyJWT only where JWT auth is configured: it brings cryptography (about 3 MB of heap and 6 MB of mapped library
    # per process). Loading a file with JWT auth calls this for each key, so no connect waits for the import.
    import jwt  # noqa: PLC0415

    for name in algorithms:
        algorithm = jwt.get_algorithm_by_name(name)
        try:
            prepared = algorithm.prepare_key(key)
        except (jwt.InvalidKeyError, ValueError, TypeError) as exc:
            return f'does not hold a key usable with {name} ({type(exc).__name__})'
        short = algorithm.check_key_length(prepared)
        if short:
            return f'is too short for {name}: {short.split(".")[0]}'
    return None
