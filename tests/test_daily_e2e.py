"""The daily run end to end, over simulated days, through the real Prefect flows.

Three customers owe an invoice due on DUE, each with a history of paying on time (so they sit
in the `on_time` segment and its `standard` ladder: pre_due -3, gentle +3, firm +14, final +28,
escalation 7 days after final):
- PUNCTUAL pays on the due date: gets the pre-due reminder only;
- AFTER_FIRST pays two days after the first overdue reminder: gets nothing after it;
- NEVER never pays: gets every stage in order, is escalated, and their account manager is told.
"""

from __future__ import annotations

import mailbox
from datetime import date, timedelta
from email import policy as email_policy
from email.parser import BytesParser
from pathlib import Path

import pytest
from sqlalchemy import Engine, func, select

from collectflow.flows.config import Settings
from collectflow.flows.daily import collections_range, daily_collections
from collectflow.models import Case, CaseEvent, Message, Outcome, QueueItem
from tests.ledger import Ledger

DUE = date(2026, 3, 2)
MESSAGES = Message.__table__
CASES = Case.__table__


def day(offset: int) -> date:
    return DUE + timedelta(days=offset)


@pytest.fixture
def three_customers(engine: Engine, settings: Settings, tmp_path: Path) -> Ledger:
    ledger = Ledger()
    for customer_id in ("PUNCTUAL", "AFTER_FIRST", "NEVER"):
        ledger.customer(customer_id, account_manager_email="am@example.com")
        ledger.history(customer_id, DUE)
        ledger.invoice(f"INV-{customer_id}", customer_id, DUE, amount="250.00")
    ledger.payment("PAY-PUNCTUAL", "INV-PUNCTUAL", DUE, amount="250.00")
    ledger.payment("PAY-AFTER_FIRST", "INV-AFTER_FIRST", day(5), amount="250.00")
    ledger.load(engine, tmp_path / "ledger", settings)
    return ledger


def sent(engine: Engine, customer_id: str) -> list[tuple[str, date]]:
    with engine.connect() as conn:
        rows = conn.execute(
            select(MESSAGES.c.stage, MESSAGES.c.sent_on)
            .where(MESSAGES.c.customer_id == customer_id, MESSAGES.c.status == "sent")
            .order_by(MESSAGES.c.id)
        ).all()
    return [tuple(row) for row in rows]


def maildir(settings: Settings) -> list:
    parse = BytesParser(policy=email_policy.default).parsebytes
    return [parse(message.as_bytes()) for message in mailbox.Maildir(settings.outbox)]


def test_every_customer_gets_the_stages_their_behaviour_calls_for(
    engine: Engine, settings: Settings, three_customers: Ledger
) -> None:
    summaries = collections_range(day(-5), day(40))

    assert sent(engine, "PUNCTUAL") == [("pre_due", day(-3))]
    assert sent(engine, "AFTER_FIRST") == [("pre_due", day(-3)), ("gentle", day(3))]
    assert sent(engine, "NEVER") == [
        ("pre_due", day(-3)),
        ("gentle", day(3)),
        ("firm", day(14)),
        ("final", day(28)),
        # the grace is 7 days and also 7 business days: Monday day(28) + 7 weekdays
        ("escalation", day(37)),
    ]
    with engine.connect() as conn:
        cases = {row.customer_id: row for row in conn.execute(select(CASES).order_by(CASES.c.id))}
        assert cases["PUNCTUAL"].status == "resolved"
        assert cases["PUNCTUAL"].closed_on == DUE
        assert cases["AFTER_FIRST"].closed_on == day(5)
        assert cases["NEVER"].status == "escalated"
        assert cases["NEVER"].escalated_on == day(37)
        # the summaries count what the steps wrote, on PostgreSQL too (rowcount of INSERT...SELECT)
        assert sum(summary["cases_opened"] for summary in summaries) == len(cases) == 3
        assert sum(summary["escalated"] for summary in summaries) == 1
        queued = conn.execute(select(QueueItem.__table__.c.reason)).scalars().all()
        assert queued == ["escalated"]
        events = conn.execute(
            select(CaseEvent.__table__.c.kind)
            .where(CaseEvent.__table__.c.case_id == cases["NEVER"].id)
            .order_by(CaseEvent.__table__.c.id)
        ).scalars()
        assert list(events) == [
            "opened", "stage_planned", "reminding", *["stage_planned"] * 3,
            "escalated", "queued", "account_manager_notified",
        ]  # fmt: skip

    emails = maildir(settings)
    assert len(emails) == 8
    internal = [m for m in emails if m["To"].addresses[0].addr_spec == "am@example.com"]
    assert len(internal) == 1
    assert "NEVER" in internal[0].get_body(("plain",)).get_content()


def test_a_payment_after_a_reminder_is_that_reminders_outcome(
    engine: Engine, settings: Settings, three_customers: Ledger
) -> None:
    collections_range(day(-5), day(20))

    with engine.connect() as conn:
        outcomes = conn.execute(
            select(MESSAGES.c.customer_id, MESSAGES.c.stage, Outcome.outcome, Outcome.days_to_pay)
            .join(Outcome.__table__, Outcome.message_id == MESSAGES.c.id)
            .order_by(MESSAGES.c.id)
        ).all()
    assert ("AFTER_FIRST", "gentle", "paid", 2) in outcomes
    # PUNCTUAL paid on the due date, 3 days after the pre-due reminder
    assert ("PUNCTUAL", "pre_due", "paid", 3) in outcomes
    # the pre-due reminder of AFTER_FIRST lost the credit to the later gentle reminder
    assert ("AFTER_FIRST", "pre_due", "no_response", None) in outcomes


def test_a_rerun_of_a_day_sends_nothing(
    engine: Engine, settings: Settings, three_customers: Ledger
) -> None:
    collections_range(day(-5), day(28))
    before = len(maildir(settings))

    summary = daily_collections(as_of=day(28))

    assert summary["nothing_new"] is True
    assert summary["messages"] == {}
    assert summary["sent"] == 0
    assert len(maildir(settings)) == before


def test_replaying_a_period_already_run_sends_nothing(
    engine: Engine, settings: Settings, three_customers: Ledger
) -> None:
    collections_range(day(-5), day(40))
    before = len(maildir(settings))

    days = collections_range(day(-5), day(40))

    assert [d["skipped"] for d in days] == [True] * 45 + [False]
    assert all(d["nothing_new"] for d in days)
    assert len(maildir(settings)) == before


def test_catching_up_after_downtime_sends_one_stage_per_run_with_gaps(
    engine: Engine, settings: Settings, three_customers: Ledger
) -> None:
    # nothing ran until 20 days after the due date (a Sunday): the firm stage is long due,
    # the final too
    collections_range(day(20), day(45))

    assert sent(engine, "NEVER") == [
        ("gentle", day(20)),  # pre_due skipped: the invoice was already overdue
        ("firm", day(29)),  # 7 business days later (Tuesday of the second week), not at once
        ("final", day(43)),  # 10 business days after the firm one, not at its offset (28)
    ]
    with engine.connect() as conn:
        skipped = conn.execute(
            select(func.count()).where(CaseEvent.__table__.c.kind == "pre_due_skipped")
        ).scalar_one()
    assert skipped == 1


def test_a_dry_run_decides_and_renders_but_stores_and_sends_nothing(
    engine: Engine, settings: Settings, three_customers: Ledger
) -> None:
    summary = daily_collections(as_of=day(-3), dry_run=True)

    assert summary["dry_run"] is True
    assert summary["messages"] == {"pre_due": {"planned": 3}}
    assert summary["rendered"] == 3
    with engine.connect() as conn:
        assert conn.execute(select(func.count()).select_from(MESSAGES)).scalar_one() == 0
        assert conn.execute(select(func.count()).select_from(CASES)).scalar_one() == 0
    assert not settings.outbox.exists() or maildir(settings) == []
