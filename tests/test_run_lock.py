"""One daily run per database at a time, and balances rebuilt without a race.

Two `collectflow run` at once on PostgreSQL crashed with a UniqueViolation on
invoice_balances_pkey: the second run's DELETE missed the rows the first had just inserted.
"""

from __future__ import annotations

import threading
import time
from datetime import date
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, func, select, text
from typer.testing import CliRunner

from collectflow.flows.cli.app import app
from collectflow.flows.config import Settings, get_settings
from collectflow.flows.daily import daily_collections
from collectflow.flows.ledger import import_ledger, refresh_balances
from collectflow.flows.ledger.demo import write_demo_ledger
from collectflow.flows.runlock import run_lock
from collectflow.models import InvoiceBalance, Message
from tests.ledger import Ledger

DAY = date(2026, 3, 2)


def in_threads(*calls: Any) -> list[Any]:
    """Run each call in a thread of its own, all at once; their results, or what they raised."""
    results: list[Any] = [None] * len(calls)

    def run(index: int) -> None:
        try:
            results[index] = calls[index]()
        except Exception as exc:  # the test reports it
            results[index] = exc

    threads = [threading.Thread(target=run, args=(n,)) for n in range(len(calls))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=240)
    return results


@pytest.mark.postgres
def test_two_balance_refreshes_at_once_take_turns(
    postgres_url: str, settings: Settings, tmp_path: Path
) -> None:
    from collectflow.models import drop_db, init_db, make_engine

    engine = make_engine(postgres_url)
    drop_db(engine)
    init_db(engine)
    ledger = Ledger()
    ledger.customer("C1")
    for n in range(5):
        ledger.invoice(f"I{n}", "C1", DAY)
    ledger.load(engine, tmp_path / "ledger", settings)

    first = engine.connect()
    transaction = first.begin()
    assert refresh_balances(first, DAY) == 5  # not committed yet
    second: list[Any] = []
    thread = threading.Thread(target=lambda: second.append(refresh_in_own_transaction(engine)))
    thread.start()
    wait_until_a_session_waits_for_a_lock(engine, thread, second)
    transaction.commit()
    first.close()
    thread.join(timeout=30)

    assert second == [5]  # before: UniqueViolation on invoice_balances_pkey
    with engine.connect() as conn:
        assert conn.scalar(select(func.count()).select_from(InvoiceBalance.__table__)) == 5
    engine.dispose()


def refresh_in_own_transaction(engine: Engine) -> Any:
    try:
        with engine.begin() as conn:
            return refresh_balances(conn, DAY)
    except Exception as exc:
        return exc


def wait_until_a_session_waits_for_a_lock(
    engine: Engine, refresher: threading.Thread, result: list[Any]
) -> None:
    """Until PostgreSQL shows a session waiting for a lock; a refresher that ends first did
    not wait (the race is back, or it failed: its result says which). The bound is generous:
    on a loaded two-core machine a thread can take seconds to reach its first statement."""
    query = text(
        "SELECT count(*) FROM pg_stat_activity "
        "WHERE wait_event_type = 'Lock' AND datname = current_database()"
    )
    deadline = time.monotonic() + 60
    with engine.connect() as conn:
        while conn.execute(query).scalar_one() == 0:
            assert refresher.is_alive(), f"the second refresh never waited: {result}"
            assert time.monotonic() < deadline, "the second refresh never started waiting"
            time.sleep(0.05)


@pytest.mark.postgres
def test_two_daily_runs_at_once_on_postgresql_take_turns(
    postgres_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from collectflow.models import drop_db, init_db, make_engine

    monkeypatch.setenv("COLLECTFLOW_DATABASE_URL", postgres_url)
    monkeypatch.setenv("COLLECTFLOW_OUTBOX", str(tmp_path / "outbox"))
    monkeypatch.setenv("COLLECTFLOW_EXPORTS", str(tmp_path / "exports"))
    monkeypatch.setenv("COLLECTFLOW_RUN_LOCK_WAIT", "180")
    monkeypatch.delenv("COLLECTFLOW_SMTP_HOST", raising=False)
    get_settings.cache_clear()
    engine = make_engine(postgres_url)
    drop_db(engine)
    init_db(engine)
    write_demo_ledger(tmp_path / "ledger", DAY, customers=60)
    import_ledger(engine, tmp_path / "ledger", get_settings())

    first, second = in_threads(
        lambda: daily_collections(as_of=DAY), lambda: daily_collections(as_of=DAY)
    )

    assert not isinstance(first, Exception), first
    assert not isinstance(second, Exception), second
    with engine.connect() as conn:
        messages = Message.__table__
        sent = conn.scalar(select(func.count()).where(messages.c.status == "sent"))
    assert sent > 0
    assert sorted([first["sent"], second["sent"]]) == [0, sent]  # one sent, the other nothing
    assert [first["nothing_new"], second["nothing_new"]].count(True) == 1
    engine.dispose()
    get_settings.cache_clear()


def test_a_run_that_cannot_get_the_lock_exits_2_naming_the_holder(
    engine: Engine, settings: Settings, monkeypatch: pytest.MonkeyPatch,
    capfd: pytest.CaptureFixture[str],
) -> None:  # fmt: skip
    monkeypatch.setenv("COLLECTFLOW_RUN_LOCK_WAIT", "0.5")
    get_settings.cache_clear()
    with run_lock(get_settings(), "run for 2026-03-01"):
        result = CliRunner().invoke(app, ["run", "--as-of", DAY.isoformat()])
    printed = result.stderr + "".join(capfd.readouterr())
    unwrapped = " ".join(result.stderr.split())
    assert result.exit_code == 2, printed
    assert unwrapped.startswith(
        "error: another run of this database is under way: collectflow run for 2026-03-01 (pid "
    )
    assert "waited 0.5 s for it" in unwrapped
    assert "Traceback" not in printed
    with engine.connect() as conn:
        assert conn.scalar(select(func.count()).select_from(Message.__table__)) == 0


def test_the_lock_is_free_again_once_a_run_is_over(
    engine: Engine, settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("COLLECTFLOW_RUN_LOCK_WAIT", "0")
    get_settings.cache_clear()
    assert daily_collections(as_of=DAY)["as_of"] == DAY.isoformat()
    with run_lock(get_settings(), "a check"):
        pass
