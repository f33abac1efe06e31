"""Shared fixtures: a real database (SQLite always, PostgreSQL when reachable), settings, and
one Prefect test harness per session."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import Engine, create_engine, text

from collectflow.flows.config import PROJECT_ROOT, Settings, get_settings, safe_url
from collectflow.flows.feedback.message_links import MessageLinks, message_links
from collectflow.flows.policy import Policy, load_policy
from collectflow.models import drop_db, init_db, make_engine

PG_URL = os.environ.get(
    "COLLECTFLOW_TEST_DATABASE_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test"
)


def _postgres_unreachable() -> str | None:
    """Why PostgreSQL can't be used, or None when it can."""
    try:
        engine = create_engine(PG_URL, connect_args={"connect_timeout": 2})
        with engine.connect() as conn:
            conn.execute(text("SELECT 1"))
        engine.dispose()
    except Exception as exc:  # any failure to connect means: skip, and say why
        return f"PostgreSQL not reachable at {safe_url(PG_URL)}: {type(exc).__name__}: {exc}"[:300]
    return None


PG_SKIP_REASON = _postgres_unreachable()
PG_SCHEMA = f"collectflow_test_{os.getpid()}"


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    """A URL whose connections work in a schema of this test session's own.

    Several test sessions (developers, CI) may share one PostgreSQL database; each works in its
    own schema, dropped at the end, so they never drop each other's tables.
    """
    if PG_SKIP_REASON:
        pytest.skip(PG_SKIP_REASON)
    admin = create_engine(PG_URL)
    with admin.begin() as conn:
        conn.execute(text(f'CREATE SCHEMA IF NOT EXISTS "{PG_SCHEMA}"'))
    separator = "&" if "?" in PG_URL else "?"
    yield f"{PG_URL}{separator}options=-csearch_path%3D{PG_SCHEMA}"
    with admin.begin() as conn:
        conn.execute(text(f'DROP SCHEMA IF EXISTS "{PG_SCHEMA}" CASCADE'))
    admin.dispose()


WRITTEN_BY_RUNS = ("exports", "outbox", "collectflow.db")
"""What a run writes to the working directory by default; tests must write it elsewhere."""


@pytest.fixture(scope="session", autouse=True)
def nothing_written_into_the_checkout(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """Point the run's default folders away from the checkout for every test, even those
    without the `settings` fixture, and fail the session if one appeared there anyway."""
    before = {name for name in WRITTEN_BY_RUNS if (PROJECT_ROOT / name).exists()}
    scratch = tmp_path_factory.mktemp("defaults")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("COLLECTFLOW_EXPORTS", str(scratch / "exports"))
        patch.setenv("COLLECTFLOW_OUTBOX", str(scratch / "outbox"))
        yield
    appeared = {name for name in WRITTEN_BY_RUNS if (PROJECT_ROOT / name).exists()} - before
    assert not appeared, f"tests wrote {sorted(appeared)} into the checkout {PROJECT_ROOT}"


TEST_LINK_SECRET = "test-link-secret-0123456789abcdef"
TEST_PUBLIC_URL = "https://answers.example.com"


@pytest.fixture(scope="session", autouse=True)
def answer_links_configured() -> Iterator[None]:
    """Every customer message carries a signed answer link, and a run without a link secret or
    a public URL refuses to start: both are set once here for the whole session (a test of
    their absence removes them with monkeypatch)."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("COLLECTFLOW_LINK_SECRET", TEST_LINK_SECRET)
        patch.setenv("COLLECTFLOW_PUBLIC_URL", TEST_PUBLIC_URL)
        get_settings.cache_clear()
        yield
    get_settings.cache_clear()


@pytest.fixture(scope="session", autouse=True)
def prefect_harness() -> Iterator[None]:
    """One Prefect test server for the whole session (it takes seconds to start)."""
    from prefect.settings import PREFECT_FLOWS_HEARTBEAT_FREQUENCY, temporary_settings
    from prefect.testing.utilities import prefect_test_harness

    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("DO_NOT_TRACK", "1")
    with (
        temporary_settings({PREFECT_FLOWS_HEARTBEAT_FREQUENCY: None}),
        prefect_test_harness(server_startup_timeout=60),
    ):
        yield


@pytest.fixture(
    params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)],
)
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A URL to an empty Collectflow database, on each backend."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'collectflow.db'}"
    return request.getfixturevalue("postgres_url")


@pytest.fixture
def engine(database_url: str) -> Iterator[Engine]:
    """An engine on a freshly created schema."""
    engine = make_engine(database_url)
    drop_db(engine)
    init_db(engine)
    yield engine
    engine.dispose()


@pytest.fixture
def settings(
    database_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Settings]:
    """Settings pointing at the test database and a temporary Maildir; no SMTP host."""
    monkeypatch.setenv("COLLECTFLOW_DATABASE_URL", database_url)
    monkeypatch.setenv("COLLECTFLOW_OUTBOX", str(tmp_path / "outbox"))
    monkeypatch.setenv("COLLECTFLOW_EXPORTS", str(tmp_path / "exports"))
    monkeypatch.setenv("COLLECTFLOW_POLICY", str(PROJECT_ROOT / "policy.yaml"))
    monkeypatch.delenv("COLLECTFLOW_SMTP_HOST", raising=False)
    get_settings.cache_clear()
    yield get_settings()
    get_settings.cache_clear()


@pytest.fixture
def links() -> MessageLinks:
    """The answer links' signer of the session's test settings, for tests that render."""
    return message_links(get_settings())


@pytest.fixture(scope="session")
def policy() -> Policy:
    """The shipped default policy."""
    return load_policy(PROJECT_ROOT / "policy.yaml")


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """Say how many PostgreSQL tests ran and how many skipped: .ci/run reads this line and
    fails when a server was up and none ran."""
    stats = terminalreporter.stats
    ran = sum(
        1
        for kind in ("passed", "failed")
        for report in stats.get(kind, [])
        if report.when == "call" and "postgres" in report.keywords
    )
    skipped = sum(1 for report in stats.get("skipped", []) if "postgres" in report.keywords)
    terminalreporter.write_line(f"PostgreSQL tests: {ran} ran, {skipped} skipped")
