"""Escalation steps after the last stage and its grace: operator queue, account manager,
suspension signal (a signed webhook to a real local HTTP server), agency hand-off (CSV) and a
write-off proposal an operator confirms. Each runs once per case and lands in the event log.

NEVER owes INV (250.00 EUR) due on DUE and never pays. Ladder standard: pre_due -3, gentle
+3, firm +14, final +28, escalation 7 days later (day 35); here it lists every step, with the
write-off proposed 3 days after escalation.
"""

from __future__ import annotations

import csv
from collections.abc import Callable, Iterator
from datetime import date, timedelta
from pathlib import Path
from typing import Any

import pytest
from pydantic import SecretStr
from sqlalchemy import Engine, select

from collectflow.flows.cases import casework
from collectflow.flows.config import Settings
from collectflow.flows.errors import ActionRefused
from collectflow.flows.pipeline import open_run, run_day
from collectflow.flows.policy import Escalation, Policy
from collectflow.models import Case, CaseEvent, EscalationStep, QueueItem
from tests.ledger import Ledger
from tests.webhook_server import WebhookServer, webhook_server

DUE = date(2026, 3, 2)
SECRET = "shared-secret-for-tests"
CASES, EVENTS, STEPS = Case.__table__, CaseEvent.__table__, EscalationStep.__table__


def day(offset: int) -> date:
    return DUE + timedelta(days=offset)


def every_step(policy: Policy) -> Policy:
    escalation = Escalation(
        grace_days=7,
        min_business_days=0,  # the steps, not the pacing (tests/test_pacing.py), are tested here
        steps=["operator_queue", "account_manager", "suspension", "agency", "write_off"],
        after_days={"write_off": 3},
    )
    standard = policy.ladders["standard"].model_copy(update={"escalation": escalation})
    return policy.model_copy(update={"ladders": {**policy.ladders, "standard": standard}})


@pytest.fixture
def run_days(engine: Engine, settings: Settings, tmp_path: Path) -> Iterator[Callable[..., None]]:
    ledger = Ledger()
    ledger.customer("NEVER", account_manager_email="am@example.com", country="FR")
    ledger.history("NEVER", DUE)
    ledger.invoice("INV", "NEVER", DUE, amount="250.00", number="F-2026-001")
    ledger.load(engine, tmp_path / "ledger", settings)

    def run(server: WebhookServer, *offsets: int, secret: str | None = SECRET) -> None:
        configured = settings.model_copy(
            update={
                "suspension_webhook_url": server.url,
                "suspension_webhook_secret": None if secret is None else SecretStr(secret),
                "webhook_attempts": 2,
                "webhook_backoff": 0.01,
                "exports": tmp_path / "exports",
            }
        )
        with open_run(configured) as ctx:
            ctx.policy = every_step(ctx.policy)
            for offset in offsets:
                run_day(ctx, day(offset))

    yield run


def kinds(engine: Engine) -> list[str]:
    with engine.connect() as conn:
        return list(conn.execute(select(EVENTS.c.kind).order_by(EVENTS.c.id)).scalars())


def steps(engine: Engine) -> dict[str, Any]:
    with engine.connect() as conn:
        return {row.step: row for row in conn.execute(select(STEPS))}


def test_each_step_runs_once_and_is_in_the_event_log(
    engine: Engine, settings: Settings, tmp_path: Path, run_days: Callable[..., None]
) -> None:
    with webhook_server(SECRET) as billing:
        run_days(billing, -3, 3, 14, 28, 35)
        run_days(billing, 35)  # a rerun of the day does no step twice

        assert kinds(engine)[-5:] == [
            "escalated", "queued", "account_manager_notified", "suspension_signalled",
            "agency_handoff",
        ]  # fmt: skip
        [signal] = billing.received
        assert signal.signature_ok and signal.answered == 204
        assert signal.payload["customer_id"] == "NEVER"
        assert signal.payload["signalled_on"] == day(35).isoformat()
        assert signal.headers["Idempotency-Key"] == f"suspension:{signal.payload['case_id']}"

        [export] = (tmp_path / "exports").glob("agency-handoff-*.csv")
        with export.open(encoding="utf-8") as handle:
            rows = list(csv.DictReader(handle))
        assert [(r["customer_id"], r["invoice_id"], r["number"], r["owed"], r["currency"],
                 r["days_overdue"], r["country"]) for r in rows] == [
            ("NEVER", "INV", "F-2026-001", "250.0000", "EUR", "35", "FR"),
        ]  # fmt: skip
        done = steps(engine)
        assert set(done) == {"suspension", "agency"}
        assert done["suspension"].delivered_at is not None
        assert done["agency"].reference == export.name

        run_days(billing, 37, 38)  # the write-off is proposed 3 days after escalation
        assert len(billing.received) == 1

    assert kinds(engine)[-2:] == ["write_off_proposed", "queued"]
    with engine.connect() as conn:
        queue = conn.execute(select(QueueItem.reason).order_by(QueueItem.id)).scalars().all()
        case_id = conn.execute(select(CASES.c.id)).scalar_one()
    assert queue == ["escalated", "write_off"]

    with engine.begin() as conn:
        result = casework.confirm_write_off(conn, case_id, "ana", "agency found nothing", day(39))
    assert result.changes[0] == f"written off: 250.00 EUR (proposed on {day(38)})"
    with engine.connect() as conn:
        case = conn.execute(select(CASES)).one()
    assert (case.status, case.closed_on) == ("written_off", day(39))


def test_a_signal_the_billing_system_did_not_take_is_retried_by_the_next_run(
    engine: Engine, run_days: Callable[..., None]
) -> None:
    if engine.dialect.name != "sqlite":
        pytest.skip("sending and retrying is Python; the SQL of the steps is tested above")
    with webhook_server(SECRET, fail_first=2) as billing:
        run_days(billing, -3, 3, 14, 28, 35)
        pending = steps(engine)["suspension"]
        assert pending.delivered_at is None
        assert pending.attempts == 2
        assert pending.last_error == "HTTPError: HTTP Error 503: Service Unavailable"

        run_days(billing, 36)

    assert [r.answered for r in billing.received] == [503, 503, 204]
    assert all(r.signature_ok for r in billing.received)
    assert len({r.headers["Idempotency-Key"] for r in billing.received}) == 1
    assert steps(engine)["suspension"].delivered_at is not None
    assert kinds(engine).count("suspension_signalled") == 1


def test_a_wrong_secret_is_refused_by_the_receiver_and_the_signal_waits(
    engine: Engine, run_days: Callable[..., None]
) -> None:
    if engine.dialect.name != "sqlite":
        pytest.skip("signing is Python; the SQL of the steps is tested above")
    with webhook_server("the-billing-systems-other-secret") as billing:
        run_days(billing, -3, 3, 14, 28, 35)
    # a 401 would be refused again: no retry in the run, the next run tries once more
    assert [(r.signature_ok, r.answered) for r in billing.received] == [(False, 401)]
    pending = steps(engine)["suspension"]
    assert (pending.delivered_at, pending.attempts) == (None, 1)
    assert pending.last_error == "HTTPError: HTTP Error 401: Unauthorized"


def test_without_a_secret_nothing_is_sent_unsigned_and_the_signal_waits(
    engine: Engine, run_days: Callable[..., None], caplog: pytest.LogCaptureFixture
) -> None:
    if engine.dialect.name != "sqlite":
        pytest.skip("sending is Python; the SQL of the steps is tested above")
    with webhook_server(SECRET) as billing:
        run_days(billing, -3, 3, 14, 28, 35, secret=None)
        assert billing.received == []
        assert steps(engine)["suspension"].delivered_at is None
        assert "never sent unsigned" in caplog.text

        run_days(billing, 36)  # the secret is set again: the waiting signal goes out signed

    assert [(r.signature_ok, r.answered) for r in billing.received] == [(True, 204)]
    assert steps(engine)["suspension"].delivered_at is not None


def test_confirming_a_write_off_nobody_proposed_is_refused(
    engine: Engine, run_days: Callable[..., None]
) -> None:
    with webhook_server(SECRET) as billing:
        run_days(billing, -3, 3)
    with engine.connect() as conn:
        case_id = conn.execute(select(CASES.c.id)).scalar_one()
    refused = pytest.raises(ActionRefused, match="no write-off was proposed")
    with refused, engine.begin() as conn:
        casework.confirm_write_off(conn, case_id, "ana", "", day(4))


def test_a_delay_for_a_step_the_ladder_does_not_take_is_refused_at_load(tmp_path: Path) -> None:
    from collectflow.flows.config import PROJECT_ROOT
    from collectflow.flows.errors import PolicyError
    from collectflow.flows.policy.document import load_policy

    text = (PROJECT_ROOT / "policy.yaml").read_text(encoding="utf-8")
    bad = tmp_path / "policy.yaml"
    bad.write_text(text.replace("after_days: {agency: 21", "after_days: {agnecy: 21"))
    with pytest.raises(PolicyError, match=r"ladders\.firm\.escalation\.after_days\.agnecy"):
        load_policy(bad)
