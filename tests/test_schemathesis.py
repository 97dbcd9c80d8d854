"""Schemathesis against the service's own OpenAPI document: generated requests to every route, and never a 5xx."""

from __future__ import annotations

import re
import subprocess
import sys
from collections.abc import Iterator

import pytest

from .helpers import Serve, hourly_data, serving

TOKEN = 'schemathesis-token-0123456789'


@pytest.fixture(scope='module')
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Serve]:
    """A serve with the publish API on (GAMELIST_API_TOKEN), so the PUT routes get past the token."""
    with serving(tmp_path_factory.mktemp('schemathesis'), hourly_data(), env={'GAMELIST_API_TOKEN': TOKEN}) as serve:
        yield serve


@pytest.mark.timeout(120)
def test_no_generated_request_gets_a_server_error(served: Serve) -> None:
    result = subprocess.run(  # noqa: PLW1510 - the exit code is asserted
        [
            sys.executable,
            '-m',
            'schemathesis.cli',
            'run',
            f'{served.url}/openapi.json',
            '--checks',
            'not_a_server_error',
            '--max-examples',
            '30',
            '--seed',
            '1',  # the same requests on every run
            '--generation-database',
            'none',
            '--header',
            f'Authorization: Bearer {TOKEN}',
            '--request-timeout',
            '10',
            '--workers',
            '2',
            '--no-color',
        ],
        cwd=served.workdir,  # its report directory, if any, stays in the test's directory
        capture_output=True,
        text=True,
        timeout=110,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-6000:]
    generated = re.search(r'(\d+) generated, (\d+) passed', output)
    assert generated is not None, output[-3000:]
    assert int(generated[1]) >= 100 and generated[1] == generated[2], generated[0]
    assert 'Tested: 9' in output  # every operation of the document, the PUT routes with the token included
    log = served.log()
    assert 'Traceback' not in log and 'failed unexpectedly' not in log, log[-4000:]
