"""The secrets and JWTs of the namespaces that require a token (tests/test_auth.py, and the modules that reuse them)."""

from __future__ import annotations

import time
from typing import Any

import jwt

SHARED = 'shared-secret-for-the-gameplay-namespace'
HMAC_KEY = 'a-jwt-signing-secret-of-at-least-32-bytes!'
ISSUER = 'https://login.example'
AUDIENCE = 'gamelist'


def claims(**overrides: Any) -> dict[str, Any]:
    now = int(time.time())
    return {'sub': 'player-1', 'iss': ISSUER, 'aud': AUDIENCE, 'iat': now, 'exp': now + 300} | overrides


def hs_token(key: str = HMAC_KEY, **overrides: Any) -> str:
    return jwt.encode({k: v for k, v in claims(**overrides).items() if v is not None}, key, algorithm='HS256')
