"""Debian's chromium driven by playwright, for the tests of the live page (tests/test_page.py, tests/test_auth.py)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # only the tests that drive a browser import playwright
    from playwright.sync_api import Page

CHROMIUM = Path(os.environ.get('GAMELIST_CHROMIUM', '/usr/bin/chromium'))
LOBBY_HOST = 'lobby.test'
CHROMIUM_ARGS = [
    '--no-sandbox',
    '--disable-gpu',
    '--disable-quic',
    '--no-first-run',
    '--disable-background-networking',
    '--disable-component-update',
    '--disable-sync',
    # a name that is not 127.0.0.1 for the page's origin and Host header; the traffic stays on loopback
    f'--host-resolver-rules=MAP {LOBBY_HOST} 127.0.0.1',
]
WAIT_MS = 15_000


def wait_for_log(page: Page, text: str, count: int) -> None:
    page.wait_for_function(
        "([text, count]) => [...document.querySelectorAll('#log .entry .title')]"
        '.filter(e => e.textContent.includes(text)).length >= count',
        arg=[text, count],
        timeout=WAIT_MS,
    )
