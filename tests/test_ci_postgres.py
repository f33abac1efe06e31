"""CI's PostgreSQL detection (.ci/postgres.sh): what it decides, and how it counts the tests.

The install branch itself runs only where nothing answers on 127.0.0.1:5432 as root; here the
decision that leads to it is checked against a real listening socket and a closed port.
"""

from __future__ import annotations

import os
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from collectflow.flows.config import PROJECT_ROOT

SCRIPT = PROJECT_ROOT / ".ci" / "postgres.sh"


@pytest.fixture(scope="module")
def prefect_harness() -> Iterator[None]:
    """Overrides the session's Prefect server (conftest.py): these tests run no flow."""
    yield


def ci(command: str, **env: str) -> str:
    """Run `command` in bash after sourcing the CI script; its stdout (exit status ignored)."""
    environment = {k: v for k, v in os.environ.items() if k != "COLLECTFLOW_TEST_DATABASE_URL"}
    done = subprocess.run(
        ["bash", "-c", f". {SCRIPT}; {command}"],
        env=environment | env,
        capture_output=True,
        text=True,
        timeout=30,
    )
    return done.stdout.strip()


@pytest.fixture
def listening_port() -> Iterator[int]:
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        yield server.getsockname()[1]


@pytest.fixture
def closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]  # free once the socket is closed


def test_a_port_that_listens_answers_and_a_closed_one_does_not(
    listening_port: int, closed_port: int
) -> None:
    assert ci(f"pg_answers 127.0.0.1 {listening_port} && echo yes || echo no") == "yes"
    assert ci(f"pg_answers 127.0.0.1 {closed_port} && echo yes || echo no") == "no"


def test_a_server_that_answers_is_used_as_it_is(listening_port: int) -> None:
    assert ci("postgres_plan", CI_POSTGRES_PORT=str(listening_port)) == "running"


def test_a_test_database_url_wins_over_any_detection(closed_port: int) -> None:
    url = f"postgresql+psycopg://postgres@127.0.0.1:{closed_port}/test"
    plan = ci("postgres_plan", CI_POSTGRES_PORT=str(closed_port), COLLECTFLOW_TEST_DATABASE_URL=url)
    assert plan == "url"


@pytest.mark.skipif(os.geteuid() != 0, reason="the install branch is only taken as root")
def test_nothing_answering_as_root_means_install(closed_port: int) -> None:
    assert ci("postgres_plan", CI_POSTGRES_PORT=str(closed_port)) == "install"


@pytest.mark.skipif(os.geteuid() == 0, reason="as root the install branch is taken")
def test_nothing_answering_without_root_means_the_tests_skip(closed_port: int) -> None:
    assert ci("postgres_plan", CI_POSTGRES_PORT=str(closed_port)) == "none"


def test_the_count_of_postgresql_tests_is_read_from_the_log(tmp_path: Path) -> None:
    log = tmp_path / "pytest.log"
    log.write_text("..s..\nPostgreSQL tests: 183 ran, 2 skipped\n==== 470 passed ====\n")
    assert ci(f"postgres_tests_ran {log}") == "183"
    log.write_text("..s..\n==== 0 passed ====\n")
    assert ci(f"postgres_tests_ran {log}") == "0"
