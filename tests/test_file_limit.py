"""A process near its open-file limit refuses new connections with a 503 instead of failing on accept, says so, and
takes connections again once some are gone; serve raises its soft limit to the hard one and logs the room it has."""

from __future__ import annotations

import asyncio
import os
import resource
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from gamelist_service.web.limits import FD_RESERVE, raise_file_limit, socket_ceiling

from .clients import RawClient
from .conftest import cli_command, free_port
from .helpers import ADMIN_ENV, ADMIN_TOKEN, hourly_data, wait_until, write_config

LIMIT = 200  # open files for the serve under test: room for LIMIT - FD_RESERVE client sockets


def test_the_ceiling_is_the_file_limit_less_a_reserve() -> None:
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    assert socket_ceiling() == max(1, soft - FD_RESERVE)
    before, now = raise_file_limit()
    assert now == resource.getrlimit(resource.RLIMIT_NOFILE)[0] >= before


def _low_limit() -> None:
    resource.setrlimit(resource.RLIMIT_NOFILE, (LIMIT, LIMIT))


@pytest.fixture
def limited(tmp_path: Path) -> Iterator[tuple[int, Path]]:
    port = free_port()
    log = tmp_path / 'serve.log'
    with log.open('wb') as out:
        proc = subprocess.Popen(
            cli_command(
                'serve', '--config', str(write_config(tmp_path / 'games.yaml', hourly_data())), '--port', str(port)
            ),
            cwd=tmp_path,
            stdout=out,
            stderr=subprocess.STDOUT,
            env={**os.environ, ADMIN_ENV: ADMIN_TOKEN},
            preexec_fn=_low_limit,  # noqa: PLW1509 - the child's limit, set before it runs
            start_new_session=True,
        )
    try:
        assert wait_until(lambda: 'listening on' in log.read_text(errors='replace'), timeout_s=20), log.read_text()
        yield port, log
    finally:
        proc.terminate()
        assert proc.wait(15) == 0


@pytest.mark.timeout(60)
async def test_a_process_at_its_file_limit_answers_503_and_recovers(limited: tuple[int, Path]) -> None:
    port, log = limited
    assert f'open files: {LIMIT} per process; each process holds at most {LIMIT - FD_RESERVE} client sockets' in (
        log.read_text()
    )
    held: list[RawClient] = []
    refused = b''
    try:
        for _ in range(LIMIT):  # bounded: the ceiling is LIMIT - FD_RESERVE
            client = RawClient(port)
            try:
                await client.connect()
            except AssertionError as exc:  # the handshake's answer was not a 101
                await client.close()
                assert 'HTTP/1.1 503' in str(exc), exc
                refused = str(exc).encode()
                break
            held.append(client)
        assert refused, 'no 503 before the file limit'
        assert LIMIT - FD_RESERVE - 5 <= len(held) <= LIMIT - FD_RESERVE
        assert wait_until(lambda: 'refusing new connections with 503' in log.read_text())
        # the clients held keep working
        held[0].send('4242["main:screen"]')
        await held[0]._wait(lambda: any(RawClient.message(f).startswith(b'4342[') for f in held[0].frames))
        # room again once some are gone
        for client in held[:10]:
            await client.close()
        held = held[10:]
        for _ in range(50):
            try:
                held.append(await RawClient(port).connect())
                break
            except AssertionError:  # still counted as open: the server has not seen the closes yet
                await asyncio.sleep(0.1)
        else:
            pytest.fail('no connection taken after sockets were freed')
    finally:
        for client in held:
            await client.close()
