"""The live page at `GET /`: its static files over HTTP, and the page itself in a real headless Chromium."""

from __future__ import annotations

import json
import os
import re
import shutil
import statistics
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

import pytest
import redis
from playwright.sync_api import Browser, Page, sync_playwright

from gamelist_service.storage.instances import running
from gamelist_service.web.page import STATIC_DIR

from .browser import CHROMIUM, CHROMIUM_ARGS, LOBBY_HOST, WAIT_MS, wait_for_log
from .conftest import cli_command, free_port
from .helpers import Serve, hourly_data, http_get, metric, serving

API_TOKEN = 'page-test-token'
ROWS = '#games tbody tr'


def _in_ci() -> bool:
    return os.environ.get('CI', '').strip().lower() not in ('', '0', 'false', 'no')


@pytest.fixture(scope='module')
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Serve]:
    """One serve on a random port with the shipped CORS list (it names port 3000 only): the page's own origin,
    http://127.0.0.1:<port>, is accepted as the service's own."""
    workdir = tmp_path_factory.mktemp('page')
    port = free_port()
    data = hourly_data()  # runs once at start; every later change comes from the test's publish
    assert f'http://127.0.0.1:{port}' not in data['server']['cors_allowed_origins']
    with serving(workdir, data, env={'GAMELIST_API_TOKEN': API_TOKEN}, port=port) as serve:
        yield serve


@pytest.fixture(scope='module')
def browser() -> Iterator[Browser]:
    """Debian's chromium, headless. Missing: a skip on a developer's machine, a failure in CI."""
    if not CHROMIUM.exists():
        reason = f'{CHROMIUM} is missing (apt-get install chromium; .ci/run installs it)'
        if _in_ci():
            pytest.fail(f'CI is set but {reason}')
        pytest.skip(reason)
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS)
        yield launched
        launched.close()


@pytest.fixture
def page(browser: Browser, served: Serve) -> Iterator[Page]:
    context = browser.new_context(viewport={'width': 1280, 'height': 1000}, locale='en-US')
    opened = context.new_page()
    errors: list[str] = []
    opened.on('pageerror', lambda exc: errors.append(str(exc)))
    opened.on('console', lambda msg: errors.append(msg.text) if msg.type == 'error' else None)
    # the page must work offline: any request to another host fails the test
    opened.route(re.compile(r'^(?!(http|ws)://127\.0\.0\.1:\d+/).*'), lambda route: route.abort())
    opened.goto(served.url + '/')
    yield opened
    context.close()
    assert errors == []


def publish(serve: Serve) -> subprocess.CompletedProcess[str]:
    return subprocess.run(  # noqa: PLW1510 - the exit code is asserted
        cli_command('publish', '--config', str(serve.config)),
        cwd=serve.workdir,
        capture_output=True,
        text=True,
        timeout=30,
        env=serve.env,
    )


def published_version(result: subprocess.CompletedProcess[str]) -> int:
    assert result.returncode == 0, result.stderr
    found = re.search(r'version (\d+)', result.stdout)
    assert found, result.stdout
    return int(found.group(1))


def wait_connected(page: Page) -> None:
    page.wait_for_function("() => document.querySelector('#conn-state').textContent === 'connected'", timeout=WAIT_MS)


def connect(page: Page, namespace: str, token: str = '') -> None:
    """Connect the page to namespace (it is connected to / from the start: disconnect first)."""
    if page.inner_text('#conn-state') != 'disconnected':
        page.click('#btn-disconnect')
        page.wait_for_function("() => document.querySelector('#conn-state').textContent === 'disconnected'")
    page.select_option('#namespace', namespace)
    page.fill('#token', token)
    page.click('#btn-connect')
    page.wait_for_function("() => document.querySelector('#conn-state').textContent === 'connected'", timeout=WAIT_MS)


def wait_for_version_change(page: Page, old: str) -> None:
    page.wait_for_function(
        "old => { const v = document.querySelector('#version').textContent; return v !== old && v !== '–'; }",
        arg=old,
        timeout=WAIT_MS,
    )


def log_entries(page: Page, text: str) -> int:
    count: int = page.evaluate(
        "text => [...document.querySelectorAll('#log .entry .title')].filter(e => e.textContent.includes(text)).length",
        text,
    )
    return count


def table(page: Page) -> list[dict[str, str]]:
    rows: list[dict[str, str]] = page.evaluate(
        """() => [...document.querySelectorAll('#games tbody tr')].map(row => ({
            id: row.dataset.gameId,
            ...Object.fromEntries([...row.cells].map(c => [c.dataset.col, c.textContent])),
            badge: row.querySelector('.badge').className,
        }))"""
    )
    return rows


def assert_table_shows(page: Page, data: dict[str, object]) -> None:
    games = data['gamelist']
    assert isinstance(games, list)
    rows = table(page)
    assert [row['id'] for row in rows] == [game['game_id'] for game in games]
    for row, game in zip(rows, games, strict=True):
        assert row['name'] == game['game_name'] and row['type'] == game['game_type']
        assert row['active'] == f'{game["active_gamepalye"]:,}'
        assert row['live'] == f'{game["livegameplaye"]:,}'
        assert row['limits'] == f'{game["min_players"]:,}–{game["max_players"]:,}'
        assert f'badge-{game["status"]}' in row['badge']
    assert page.inner_text('#total-games') == f'{data["total_games"]:,}'
    assert page.inner_text('#active-games') == f'{data["active_games"]:,}'
    assert page.inner_text('#total-players') == f'{data["total_players"]:,}'
    assert page.inner_text('#version') == f'{data["version"]:,}'


def current_list(serve: Serve) -> dict[str, object]:
    status, data = http_get(serve.url + '/api/v1/gamelist')
    assert status == 200
    assert isinstance(data, dict)
    return data


def save_screenshot(page: Page, path: Path) -> None:
    page.screenshot(path=str(path), full_page=True)
    target = os.environ.get('GAMELIST_SCREENSHOT_DIR')
    if target:
        Path(target).mkdir(parents=True, exist_ok=True)
        shutil.copy(path, Path(target) / path.name)
    print(f'screenshot: {path}' + (f' (copied to {target})' if target else ''))


@pytest.mark.timeout(60)
def test_page_shows_the_list_and_updates_it_in_place_after_publish(page: Page, served: Serve, tmp_path: Path) -> None:
    assert page.title() == 'gamelist-service · live'
    wait_connected(page)  # the page connects to / as it opens, and shows the list at once
    assert page.input_value('#namespace') == '/'
    page.wait_for_function(f"() => document.querySelectorAll('{ROWS}').length === 5", timeout=WAIT_MS)
    connect(page, '/gameplay')
    page.wait_for_function(f"() => document.querySelectorAll('{ROWS}').length === 5", timeout=WAIT_MS)
    assert_table_shows(page, current_list(served))
    badges = {row['id']: row['badge'] for row in table(page)}
    assert 'badge-active' in badges['game_1']
    assert 'badge-maintenance' in badges['game_4']
    assert 'badge-coming_soon' in badges['game_5']

    # mark the rows and count the flashes, to see the next list land in the same rows
    page.evaluate(
        """() => {
            document.querySelectorAll('#games tbody tr').forEach(row => { row.dataset.marked = 'yes'; });
            window.flashes = 0;
            new MutationObserver(records => records.forEach(r => {
                if (r.target.classList.contains('flash')) window.flashes += 1;
            })).observe(document.querySelector('#games'), {subtree: true, attributeFilter: ['class']});
        }"""
    )
    latencies_ms = []
    for _ in range(3):
        old = page.inner_text('#version')
        started = time.time()
        result = publish(served)
        finished = time.time()
        version = published_version(result)
        wait_for_version_change(page, old)
        shown_at_ms: float = page.evaluate('window.gamelistPage.receivedAt')
        built_at = datetime.fromisoformat(page.evaluate('window.gamelistPage.updatedAt')).timestamp()
        latencies_ms.append((shown_at_ms - started * 1000, shown_at_ms - built_at * 1000))
        assert page.inner_text('#version') == f'{version:,}'
        print(
            f'publish -> table: {latencies_ms[-1][0]:.0f} ms from starting the CLI, '
            f'{latencies_ms[-1][1]:.1f} ms from the CLI building the list '
            f'(the CLI ran {(finished - started) * 1000:.0f} ms; the table changed '
            f'{shown_at_ms - finished * 1000:+.0f} ms relative to its exit)'
        )
    print(
        f'publish -> table, median of {len(latencies_ms)}: '
        f'{statistics.median(t[0] for t in latencies_ms):.0f} ms from starting the CLI, '
        f'{statistics.median(t[1] for t in latencies_ms):.1f} ms from the list being built'
    )
    assert_table_shows(page, current_list(served))
    # Chromium offers permessage-deflate: the lists it showed came compressed (server.compression is on)
    assert metric(served, 'gamelist_deflated_frames_total', '{kind="broadcast"}') >= 3
    assert page.evaluate("[...document.querySelectorAll('#games tbody tr')].every(r => r.dataset.marked === 'yes')")
    assert page.evaluate('window.flashes') > 0
    assert log_entries(page, 'game_list:updated') == 3

    acks = log_entries(page, 'ack main:screen: success')
    page.click('#btn-main-screen')
    wait_for_log(page, 'ack main:screen: success', acks + 1)

    page.fill('#device-form input[name="user_id"]', 'page-user')
    page.click('#btn-device')
    wait_for_log(page, 'ack device:info: success', 1)
    assert page.inner_text('#device-result') == 'stored'
    (instance,) = running(served.workdir / '.gamelist', served.config)
    client = redis.Redis.from_url(instance.redis_url)
    try:
        stored = json.loads(client.get('user:page-user') or b'{}')
    finally:
        client.close()
    assert stored['device']['platform'] == 'web' and stored['device']['screen'] == {'width': 1280, 'height': 1000}

    save_screenshot(page, tmp_path / 'page.png')


def put_list(serve: Serve, games: list[dict[str, object]]) -> dict[str, object]:
    request = urllib.request.Request(
        serve.url + '/api/v1/gamelist',
        data=json.dumps({'gamelist': games}).encode(),
        method='PUT',
        headers={'Authorization': f'Bearer {API_TOKEN}', 'Content-Type': 'application/json'},
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        assert response.status == 200
        stored: dict[str, object] = json.loads(response.read())
        return stored


@pytest.mark.timeout(60)
def test_put_reaches_the_table_and_its_latency(page: Page, served: Serve) -> None:
    connect(page, '/')
    page.wait_for_function(f"() => document.querySelectorAll('{ROWS}').length === 5", timeout=WAIT_MS)
    latencies_ms = []
    for i in range(7):
        old = page.inner_text('#version')
        games: list[dict[str, object]] = [
            {'game_id': 'put_1', 'game_name': f'Put Poker {i}', 'game_type': 'card', 'active_gamepalye': 1000 + i,
             'livegameplaye': 500, 'min_players': 2, 'max_players': 8, 'status': 'active'},
            {'game_id': 'put_2', 'game_name': 'Put Chess', 'status': 'maintenance'},
        ]  # fmt: skip
        started_ms = time.time() * 1000
        stored = put_list(served, games)
        wait_for_version_change(page, old)
        latencies_ms.append(float(page.evaluate('window.gamelistPage.receivedAt')) - started_ms)
        assert page.inner_text('#version') == f'{stored["version"]:,}'
        names = [row['name'] for row in table(page)]
        assert names == [f'Put Poker {i}', 'Put Chess']
    published_version(publish(served))  # the templates' list again, for the tests after this one
    print(
        f'PUT /api/v1/gamelist -> table updated: median {statistics.median(latencies_ms):.1f} ms, '
        f'min {min(latencies_ms):.1f} ms, max {max(latencies_ms):.1f} ms over {len(latencies_ms)} PUTs'
    )


@pytest.mark.timeout(60)
def test_reconnect_sends_the_token_and_the_last_version_and_catches_up(browser: Browser, served: Serve) -> None:
    context = browser.new_context()
    page = context.new_page()
    sent: list[str] = []
    page.on('websocket', lambda ws: ws.on('framesent', lambda payload: sent.append(str(payload))))
    try:
        page.goto(served.url + '/')
        wait_connected(page)  # connected to / as it opened, without a token
        page.wait_for_function(f"() => document.querySelectorAll('{ROWS}').length === 5", timeout=WAIT_MS)
        assert '40' in sent  # the first CONNECT: no token, no version seen yet
        connect(page, '/', token='tok-123')
        seen: int = page.evaluate('window.gamelistPage.version')
        assert f'40{{"token":"tok-123","since":{seen}}}' in sent

        page.click('#btn-disconnect')
        assert page.inner_text('#conn-state') == 'disconnected'
        version = published_version(publish(served))  # the list moves on while the page is away
        assert version > seen

        connect(page, '/', token='tok-123')
        wait_for_version_change(page, f'{seen:,}')  # sent by the service because of since; the page asks nothing
        assert page.inner_text('#version') == f'{version:,}'
        assert sum('main:screen' in frame for frame in sent) == 1  # only on the very first connect
    finally:
        context.close()


def test_static_files_are_served_with_types_and_no_cache(served: Serve) -> None:
    expected = {
        '/': 'text/html',
        '/static/app.js': 'text/javascript',
        '/static/socketio-lite.js': 'text/javascript',
        '/static/style.css': 'text/css',
    }
    for path, content_type in expected.items():
        with urllib.request.urlopen(served.url + path, timeout=5) as response:
            assert response.status == 200
            assert response.headers['Content-Type'].startswith(content_type)
            assert response.headers['Cache-Control'] == 'no-cache'
            assert response.read()
    for path in (
        '/static/nope.js',
        '/static/..%2Fpage.py',
        '/static/.hidden.js',
        '/static/%2e%2e%2fapp.py',
        '/static/',
    ):
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(served.url + path, timeout=5)
        assert refused.value.code == 404
        refused.value.close()


def test_static_files_are_our_own_readable_code() -> None:
    """No CDN, no vendored or minified third-party code: every file is ours and readable."""
    files = sorted(STATIC_DIR.iterdir())
    assert {f.name for f in files} == {'index.html', 'app.js', 'socketio-lite.js', 'style.css'}
    for file in files:
        text = file.read_text()
        assert not re.search(r'(src|href)=["\']?(https?:)?//', text), f'{file.name} loads from another host'
        assert max(len(line) for line in text.splitlines()) <= 200, f'{file.name} has minified-looking lines'


@pytest.mark.timeout(60)
def test_the_page_connects_under_another_host_name_and_port(browser: Browser, served: Serve) -> None:
    """The page as a player on the LAN would open it (another name than 127.0.0.1, a port other than 3000): it is the
    service's own origin, whatever server.cors_allowed_origins lists."""
    context = browser.new_context()
    opened = context.new_page()
    errors: list[str] = []
    opened.on('pageerror', lambda exc: errors.append(str(exc)))
    opened.route(re.compile(rf'^(?!(http|ws)://{re.escape(LOBBY_HOST)}:\d+/).*'), lambda route: route.abort())
    try:
        opened.goto(f'http://{LOBBY_HOST}:{served.port}/')
        connect(opened, '/')
        opened.wait_for_function(f"() => document.querySelectorAll('{ROWS}').length === 5", timeout=WAIT_MS)
        assert_table_shows(opened, current_list(served))
    finally:
        context.close()
    assert errors == []
    assert 'is not an accepted origin' not in served.log()


@pytest.mark.timeout(60)
def test_the_page_opens_live_on_the_namespace_its_url_names(browser: Browser, served: Serve) -> None:
    context = browser.new_context()
    opened = context.new_page()
    try:
        opened.goto(served.url + '/?ns=/gameplay')
        wait_connected(opened)
        assert opened.input_value('#namespace') == '/gameplay'
        assert '/gameplay' in opened.inner_text('#conn-detail')
        opened.wait_for_function(f"() => document.querySelectorAll('{ROWS}').length === 5", timeout=WAIT_MS)
        assert_table_shows(opened, current_list(served))
    finally:
        context.close()
