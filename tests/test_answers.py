"""The customer's answers (flows/feedback/answers.py): each does what the operator's action of
the same name does, is recorded once as a `customer_response` case event, and bad answers are
refused with the field and the reason, changing nothing.

ANNA and BERT each owe 250.00 EUR on an invoice due 20 days ago and have had their pre-due,
gentle and firm reminders (tests/ledger.py `two_overdue_customers`).
"""

from __future__ import annotations

import json
from datetime import UTC, date, datetime, time, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, func, insert, select
from typer.testing import CliRunner

from collectflow.flows.cli.app import app
from collectflow.flows.config import Settings
from collectflow.flows.feedback.answers import (
    Answer,
    AnswerRefused,
    apply_answer,
)
from collectflow.flows.feedback.claims import add_business_days
from collectflow.flows.pipeline import business_today, open_run, run_day
from collectflow.flows.policy import Policy
from collectflow.models import (
    Case,
    CaseEvent,
    ClaimedPayment,
    ContactBlock,
    CustomerAnswer,
    Dispute,
    InvoiceBalance,
    Message,
    MessageItem,
    Payment,
    Promise,
    QueueItem,
)
from tests.ledger import two_overdue_customers

CASES, MESSAGES, EVENTS = Case.__table__, Message.__table__, CaseEvent.__table__
QUEUE, CLAIMS = QueueItem.__table__, ClaimedPayment.__table__
WRITES = [CaseEvent, CustomerAnswer, ClaimedPayment, Dispute, Promise, ContactBlock, QueueItem]


@pytest.fixture
def today(settings: Settings) -> date:
    return business_today(settings)


@pytest.fixture
def cases(engine: Engine, settings: Settings, tmp_path: Path, today: date) -> dict[str, int]:
    two_overdue_customers(engine, settings, tmp_path / "ledger", today)
    with engine.connect() as conn:
        return dict(conn.execute(select(CASES.c.customer_id, CASES.c.id)).all())


def last_message(engine: Engine, customer_id: str) -> int:
    with engine.connect() as conn:
        return conn.execute(
            select(func.max(MESSAGES.c.id)).where(MESSAGES.c.customer_id == customer_id)
        ).scalar_one()


def answer(engine: Engine, policy: Policy, today: date, **fields: Any) -> Any:
    fields.setdefault("source", "page")
    with engine.begin() as conn:
        return apply_answer(conn, policy, Answer(**fields), today)


def counts(engine: Engine) -> dict[str, int]:
    with engine.connect() as conn:
        return {
            model.__tablename__: conn.execute(select(func.count()).select_from(model)).scalar_one()
            for model in WRITES
        }


def responses(engine: Engine, case_id: int) -> list[dict[str, Any]]:
    with engine.connect() as conn:
        rows = conn.execute(
            select(EVENTS.c.detail, EVENTS.c.actor).where(
                EVENTS.c.case_id == case_id, EVENTS.c.kind == "customer_response"
            )
        ).all()
    return [json.loads(row.detail) | {"actor": row.actor} for row in rows]


def test_business_days_skip_weekends_and_the_countrys_holidays() -> None:
    friday = date(2026, 12, 4)
    assert add_business_days(friday, 5, "DE") == date(2026, 12, 11)
    # 25 and 26 December are German public holidays (the 26th a Saturday), 24th is not
    assert add_business_days(date(2026, 12, 22), 5, "DE") == date(2026, 12, 30)
    assert add_business_days(friday, 0, None) == friday


def test_already_paid_holds_the_invoice_then_queues_it_with_the_reference(
    engine: Engine, settings: Settings, policy: Policy, cases: dict[str, int], today: date
) -> None:
    message = last_message(engine, "ANNA")
    result = answer(
        engine,
        policy,
        today,
        customer_id="ANNA",
        intent="already_paid",
        message_id=message,
        reference="SEPA 88-1234",
        paid_on=today - timedelta(days=1),
    )
    assert result.recorded and result.case_id == cases["ANNA"]
    [event] = responses(engine, cases["ANNA"])
    assert event["intent"] == "already_paid" and event["invoices"] == ["INV-ANNA"]
    assert event["fields"]["reference"] == "SEPA 88-1234" and event["actor"] == "customer"
    with engine.connect() as conn:
        claim = conn.execute(select(CLAIMS)).mappings().one()
    assert claim["status"] == "open" and claim["owed_when_claimed"] == Decimal("250.00")
    assert claim["hold_until"] == add_business_days(today, 5, None)

    with open_run(settings) as ctx:  # the next day: ANNA's invoice is not remindable
        run_day(ctx, today + timedelta(days=1))
    with engine.connect() as conn:
        remindable = dict(
            conn.execute(
                select(InvoiceBalance.__table__.c.invoice_id, InvoiceBalance.__table__.c.remindable)
            ).all()
        )
    assert remindable == {"INV-ANNA": False, "INV-BERT": True}

    after_hold = claim["hold_until"] + timedelta(days=1)
    with open_run(settings) as ctx:
        run_day(ctx, after_hold)
    with engine.connect() as conn:
        assert conn.execute(select(CLAIMS.c.status)).scalar_one() == "not_found"
        item = conn.execute(
            select(QUEUE.c.case_id, QUEUE.c.detail).where(
                QUEUE.c.reason == "claimed_paid_not_found"
            )
        ).one()
        remindable_again = conn.execute(
            select(InvoiceBalance.__table__.c.remindable).where(
                InvoiceBalance.__table__.c.invoice_id == "INV-ANNA"
            )
        ).scalar_one()
    assert item.case_id == cases["ANNA"]
    assert "INV-ANNA" in item.detail and "SEPA 88-1234" in item.detail
    assert remindable_again is True


def test_a_claimed_payment_that_arrives_is_found_and_nobody_is_queued(
    engine: Engine, settings: Settings, policy: Policy, cases: dict[str, int], today: date
) -> None:
    answer(engine, policy, today, customer_id="BERT", intent="already_paid")
    with engine.begin() as conn:
        conn.execute(
            insert(Payment.__table__).values(
                payment_id="P-BERT",
                invoice_id="INV-BERT",
                attempted_at=datetime.combine(today + timedelta(days=2), time(10), tzinfo=UTC),
                attempted_on=today + timedelta(days=2),
                amount=Decimal("250.00"),
                status="succeeded",
            )
        )
    with open_run(settings) as ctx:
        run_day(ctx, today + timedelta(days=3))
    with engine.connect() as conn:
        assert conn.execute(select(CLAIMS.c.status)).scalar_one() == "found"
        assert not conn.execute(
            select(QUEUE.c.id).where(QUEUE.c.reason == "claimed_paid_not_found")
        ).all()


def test_the_same_answer_twice_is_recorded_once(
    engine: Engine, policy: Policy, cases: dict[str, int], today: date
) -> None:
    message = last_message(engine, "ANNA")
    fields = {"customer_id": "ANNA", "intent": "payment_failed", "message_id": message}
    assert answer(engine, policy, today, **fields).recorded
    before = counts(engine)
    again = answer(engine, policy, today, **fields | {"source": "reply"})
    assert not again.recorded
    assert counts(engine) == before
    assert len(responses(engine, cases["ANNA"])) == 1


def test_an_order_problem_opens_a_dispute_with_the_customers_reason(
    engine: Engine, policy: Policy, cases: dict[str, int], today: date
) -> None:
    answer(
        engine,
        policy,
        today,
        customer_id="ANNA",
        intent="order_problem",
        message_id=last_message(engine, "ANNA"),
        invoices=("INV-ANNA",),
        reason="wrong_amount",
        text="We ordered 3 licences, not 5.",
    )
    with engine.connect() as conn:
        dispute = conn.execute(select(Dispute.__table__)).mappings().one()
        queued = conn.execute(select(QUEUE.c.reason).where(QUEUE.c.case_id == cases["ANNA"]))
        status = conn.execute(select(CASES.c.status).where(CASES.c.id == cases["ANNA"]))
        assert dispute["invoice_id"] == "INV-ANNA"
        assert dispute["reason"] == "customer: wrong_amount — We ordered 3 licences, not 5."
        assert "disputed" in queued.scalars().all()
        assert status.scalar_one() == "disputed"


def test_need_time_records_a_promise_within_the_policys_limit(
    engine: Engine, policy: Policy, cases: dict[str, int], today: date
) -> None:
    base = {
        "customer_id": "BERT",
        "intent": "need_time",
        "message_id": last_message(engine, "BERT"),
    }
    before = counts(engine)
    for promise_date, reason in (
        (None, "give the date"),
        (today - timedelta(days=1), "in the past"),
        (today + timedelta(days=31), "at most 30 days"),
    ):
        with pytest.raises(AnswerRefused, match=reason) as refused:
            answer(engine, policy, today, **base, promise_date=promise_date)
        assert refused.value.field == "promise_date"
    with pytest.raises(AnswerRefused) as too_much:
        answer(engine, policy, today, **base, promise_date=today, amount=Decimal("900"))
    assert too_much.value.field == "amount" and "more than" in too_much.value.reason
    assert counts(engine) == before

    pay_by = today + timedelta(days=30)
    answer(engine, policy, today, **base, promise_date=pay_by, amount=Decimal("100"))
    with engine.connect() as conn:
        promise = conn.execute(select(Promise.__table__)).mappings().one()
        status = conn.execute(select(CASES.c.status).where(CASES.c.id == cases["BERT"]))
        assert status.scalar_one() == "promised"
    assert (promise["amount"], promise["currency"], promise["promised_on"]) == (
        Decimal("100.00"),
        "EUR",
        pay_by,
    )


def test_unsubscribe_opts_the_customer_out(
    engine: Engine, policy: Policy, cases: dict[str, int], today: date
) -> None:
    result = answer(
        engine,
        policy,
        today,
        customer_id="BERT",
        intent="unsubscribe",
        source="one_click",
        message_id=last_message(engine, "BERT"),
    )
    assert result.changes == ["opted out: no more reminders"]
    with engine.connect() as conn:
        block = conn.execute(select(ContactBlock.__table__)).mappings().one()
    assert (block["scope"], block["value"], block["reason"]) == ("customer", "BERT", "opted_out")


def test_answers_that_do_not_fit_are_refused_and_change_nothing(
    engine: Engine, policy: Policy, cases: dict[str, int], today: date
) -> None:
    annas = last_message(engine, "ANNA")
    before = counts(engine)
    anna = {"customer_id": "ANNA"}
    refusals = [
        ({"customer_id": "BERT", "intent": "already_paid", "message_id": annas}, None),
        (anna | {"intent": "already_paid", "invoices": ("INV-BERT",)}, "invoices"),
        (anna | {"intent": "sue_you"}, "intent"),
        (anna | {"intent": "order_problem", "reason": "bored"}, "reason"),
        (anna | {"intent": "order_problem", "reason": "other", "text": "x" * 2001}, "text"),
        (anna | {"intent": "already_paid", "paid_on": today + timedelta(days=1)}, "paid_on"),
    ]
    for fields, field in refusals:
        with pytest.raises(AnswerRefused) as refused:
            answer(engine, policy, today, **fields)
        assert refused.value.field == field, fields
    assert counts(engine) == before


def test_case_json_lists_the_customers_response(
    engine: Engine, settings: Settings, policy: Policy, cases: dict[str, int], today: date
) -> None:
    answer(engine, policy, today, customer_id="ANNA", intent="payment_failed")
    result = CliRunner().invoke(app, ["case", str(cases["ANNA"]), "--json"])
    assert result.exit_code == 0, result.output
    events = [e for e in json.loads(result.stdout)["events"] if e["kind"] == "customer_response"]
    assert [json.loads(e["detail"])["intent"] for e in events] == ["payment_failed"]


def test_message_items_name_the_invoices_an_answer_defaults_to(
    engine: Engine, policy: Policy, cases: dict[str, int], today: date
) -> None:
    message = last_message(engine, "ANNA")
    with engine.connect() as conn:
        items = conn.execute(
            select(MessageItem.__table__.c.invoice_id).where(
                MessageItem.__table__.c.message_id == message
            )
        ).scalars()
        assert list(items) == ["INV-ANNA"]
    result = answer(engine, policy, today, customer_id="ANNA", intent="payment_failed",
                    message_id=message)  # fmt: skip
    assert result.recorded
    assert responses(engine, cases["ANNA"])[0]["invoices"] == ["INV-ANNA"]
