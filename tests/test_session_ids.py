"""Session ids keep python-engineio's shape (12 random bytes and a sequence number, URL-safe base64) while the
random bytes come from os.urandom in batches."""

from __future__ import annotations

import base64
import re

import engineio

from gamelist_service import transport
from gamelist_service.config.settings import LimitSettings
from gamelist_service.transport.server import SessionIds
from gamelist_service.web.limits import ConnectionLimiter


def test_ids_have_python_engineios_shape_and_never_repeat() -> None:
    ids = SessionIds()
    made = [ids() for _ in range(5 * SessionIds._BATCH // 12 + 7)]  # across several batches of random bytes
    reference = engineio.AsyncServer().generate_id()
    assert all(len(sid) == len(reference) == 20 for sid in made)
    assert all(re.fullmatch(r'[A-Za-z0-9_-]{20}', sid) for sid in made)
    assert len(set(made)) == len(made)
    raw = [base64.urlsafe_b64decode(sid) for sid in made]
    assert [int.from_bytes(r[12:], 'big') for r in raw[:3]] == [0, 1, 2]
    assert len({r[:12] for r in raw}) == len(raw)  # the random part alone differs too


def test_the_server_issues_them() -> None:
    sio = transport.create_server(
        fast_path=True, limiter=ConnectionLimiter(lambda: LimitSettings()), connect_timeout_s=45.0
    )
    assert isinstance(sio.eio.generate_id, SessionIds)
