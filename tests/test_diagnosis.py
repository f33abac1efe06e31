"""Why each customer has not paid, and the message that fits: one day's run on a hand-built ledger.

Every customer has paid on time before; each now owes an invoice due on DUE, for a different
reason, and the run three days later plans the message that reason calls for.
"""

from __future__ import annotations

from datetime import date, timedelta
from pathlib import Path

import pytest
import yaml
from sqlalchemy import Engine, select

from collectflow.flows.cases import operator_queue, resolve_dispute
from collectflow.flows.config import PROJECT_ROOT, Settings
from collectflow.flows.errors import PolicyError
from collectflow.flows.pipeline import open_run, run_day
from collectflow.flows.policy import load_policy
from collectflow.models import Case, CaseEvent, Dispute, Message, MessageItem, QueueItem
from tests.ledger import Ledger
from tests.outbox import unlogged_moves, with_bodies

DUE = date(2026, 3, 2)
RUN = DUE + timedelta(days=3)
MESSAGES = Message.__table__
ITEMS = MessageItem.__table__
QUEUE = QueueItem.__table__
EVENTS = CaseEvent.__table__
CASES = Case.__table__
DISPUTES = Dispute.__table__


@pytest.fixture
def reasons(engine: Engine, settings: Settings, tmp_path: Path) -> Ledger:
    ledger = Ledger()
    failures = {
        "TIMEOUT": ("gateway_timeout", "stripe"),
        "DECLINED": ("Not enough balance", "adyen"),  # Adyen-style refusal reason
        "ORDER": ("product_not_received", "stripe"),
    }
    for customer_id in ("TIMEOUT", "DECLINED", "ORDER", "QUIET", "DOUBLE", "OVERPAID"):
        ledger.customer(customer_id)
        ledger.history(customer_id, DUE)
    for customer_id, (code, gateway) in failures.items():
        invoice_id = ledger.invoice(f"INV-{customer_id}", customer_id, DUE)
        ledger.payment(f"FAIL-{customer_id}", invoice_id, DUE + timedelta(days=1),
                       status="failed", failure_code=code, gateway=gateway)  # fmt: skip
    ledger.invoice("INV-QUIET", "QUIET", DUE)
    ledger.invoice("INV-DOUBLE-PAID", "DOUBLE", DUE - timedelta(days=5))
    ledger.payment("DOUBLE-1", "INV-DOUBLE-PAID", DUE - timedelta(days=10))
    ledger.payment("DOUBLE-2", "INV-DOUBLE-PAID", DUE - timedelta(days=9))  # paid twice
    ledger.invoice("INV-DOUBLE-OPEN", "DOUBLE", DUE)
    ledger.invoice("INV-OVERPAID", "OVERPAID", DUE - timedelta(days=5))
    ledger.payment("OVER-1", "INV-OVERPAID", DUE - timedelta(days=10), amount="150.00")
    ledger.load(engine, tmp_path / "ledger", settings)
    return ledger


def run(settings: Settings, day: date) -> None:
    with open_run(settings) as ctx:
        run_day(ctx, day, skip_delivery=True)


def planned(engine: Engine, customer_id: str) -> dict:
    with engine.connect() as conn:
        [message] = with_bodies(
            conn, MESSAGES.c.customer_id == customer_id, MESSAGES.c.planned_on == RUN
        )
        items = conn.execute(
            select(ITEMS.c.invoice_id, ITEMS.c.cause).where(ITEMS.c.message_id == message.id)
        ).all()
    return vars(message) | {"items": [tuple(item) for item in items]}


def test_each_cause_gets_its_own_message(
    engine: Engine, settings: Settings, reasons: Ledger
) -> None:
    run(settings, RUN)

    timeout = planned(engine, "TIMEOUT")
    assert (timeout["cause"], timeout["template"], timeout["status"]) == (
        "payment_failed_technical", "payment_retry", "planned"
    )  # fmt: skip
    assert "technical problem on our side" in timeout["body_text"]
    assert "overdue" not in timeout["body_text"].lower()
    declined = planned(engine, "DECLINED")
    assert declined["cause"] == "payment_failed_customer"
    assert declined["template"] == "payment_failed"
    assert "update your payment method" in declined["body_text"]
    quiet = planned(engine, "QUIET")
    assert (quiet["cause"], quiet["template"], quiet["stage"]) == ("no_attempt", "gentle", "gentle")
    assert quiet["items"] == [("INV-QUIET", "no_attempt")]


def reminders_of(engine: Engine, customer_id: str) -> list[tuple]:
    with engine.connect() as conn:
        rows = conn.execute(
            select(
                MESSAGES.c.planned_on, MESSAGES.c.stage, MESSAGES.c.cause, MESSAGES.c.status,
                MESSAGES.c.status_reason,
            )
            .where(MESSAGES.c.customer_id == customer_id, MESSAGES.c.kind == "reminder")
            .order_by(MESSAGES.c.id)
        ).all()  # fmt: skip
    return [tuple(row) for row in rows]


def open_queue(engine: Engine, day: date, customer_id: str) -> list[tuple]:
    with engine.connect() as conn:
        queue = operator_queue(conn, day)
    return [(i["reason"], i["detail"]) for i in queue if i["customer_id"] == customer_id]


def test_an_order_issue_pauses_the_case_until_a_person_decides_it(
    engine: Engine, settings: Settings, reasons: Ledger
) -> None:
    run(settings, RUN)

    order = planned(engine, "ORDER")
    assert (order["cause"], order["status"], order["status_reason"]) == (
        "order_issue", "suppressed", "order_issue"
    )  # fmt: skip
    assert order["items"] == []
    with engine.connect() as conn:
        case = conn.execute(select(CASES).where(CASES.c.id == order["case_id"])).one()
        dispute = conn.execute(select(DISPUTES)).one()
        assert unlogged_moves(conn) == []
        logged = (
            conn.execute(
                select(EVENTS.c.detail).where(
                    EVENTS.c.case_id == order["case_id"], EVENTS.c.kind == "order_issue"
                )
            )
            .scalars()
            .all()
        )
    assert case.status == "disputed"
    assert (dispute.invoice_id, dispute.reason, dispute.opened_on) == (
        "INV-ORDER", "order issue: product_not_received (payment FAIL-ORDER)", RUN
    )  # fmt: skip
    assert logged == ['{"invoice_id": "INV-ORDER"}']
    queued = ("disputed", "order issue: product_not_received (payment FAIL-ORDER) on INV-ORDER")
    assert open_queue(engine, RUN, "ORDER") == [queued]

    # past every stage, the grace period and the 30-day lookback: still nobody writes to them
    for day in (RUN + timedelta(days=12), RUN + timedelta(days=25), RUN + timedelta(days=45)):
        run(settings, day)
    assert reminders_of(engine, "ORDER") == [
        (RUN, "payment_failed", "order_issue", "suppressed", "order_issue")
    ]
    late = RUN + timedelta(days=45)
    assert open_queue(engine, late, "ORDER") == [queued]

    with engine.begin() as conn:  # the operator finds the goods were delivered: it stands
        resolve_dispute(conn, dispute.id, "rejected", "ana", "delivery confirmed", late)
    run(settings, late + timedelta(days=1))

    assert reminders_of(engine, "ORDER")[1:] == [
        (late + timedelta(days=1), "firm", "no_attempt", "planned", None)
    ]
    assert open_queue(engine, late + timedelta(days=1), "ORDER") == []
    with engine.connect() as conn:
        assert len(conn.execute(select(DISPUTES)).all()) == 1  # not reopened by the old failure


def test_an_order_issue_leaves_the_other_invoices_reminded(
    engine: Engine, settings: Settings, tmp_path: Path
) -> None:
    ledger = Ledger()
    ledger.customer("BOTH")
    ledger.history("BOTH", DUE)
    ledger.invoice("INV-GOODS", "BOTH", DUE)
    ledger.payment("FAIL-GOODS", "INV-GOODS", DUE + timedelta(days=1), status="failed",
                   failure_code="Product not received", gateway="adyen")  # fmt: skip
    ledger.invoice("INV-SERVICE", "BOTH", DUE)
    ledger.load(engine, tmp_path / "ledger", settings)

    run(settings, RUN)

    message = planned(engine, "BOTH")
    assert (message["cause"], message["status"]) == ("no_attempt", "planned")
    assert message["items"] == [("INV-SERVICE", "no_attempt")]
    assert "INV-GOODS" not in message["body_text"]
    with engine.connect() as conn:
        status = conn.execute(select(CASES.c.status).where(CASES.c.customer_id == "BOTH"))
        disputed = conn.execute(select(DISPUTES.c.invoice_id, DISPUTES.c.resolved_on)).all()
    assert status.scalar_one() == "reminding"  # the ladder goes on for the service invoice
    assert disputed == [("INV-GOODS", None)]


def test_a_disputed_invoice_of_a_customer_without_a_case_reaches_an_operator(
    engine: Engine, settings: Settings, tmp_path: Path
) -> None:
    ledger = Ledger()
    for customer_id in ("SETTLES", "BUYS_MORE"):
        ledger.customer(customer_id)
        ledger.history(customer_id, DUE)
        ledger.invoice(f"INV-{customer_id}", customer_id, DUE, status="disputed")
    ledger.load(engine, tmp_path / "ledger", settings)

    run(settings, RUN)
    run(settings, RUN + timedelta(days=1))  # queued once

    assert reminders_of(engine, "SETTLES") == []
    assert open_queue(engine, RUN, "SETTLES") == [("disputed", "INV-SETTLES")]
    assert open_queue(engine, RUN, "BUYS_MORE") == [("disputed", "INV-BUYS_MORE")]

    ledger.invoices[3]["status"] = "open"  # SETTLES agreed with the customer, then paid
    ledger.payment("PAY-SETTLES", "INV-SETTLES", RUN + timedelta(days=2))
    ledger.invoice("INV-NEXT", "BUYS_MORE", RUN + timedelta(days=4))  # a case opens for it
    ledger.load(engine, tmp_path / "ledger", settings)
    run(settings, RUN + timedelta(days=2))

    assert open_queue(engine, RUN + timedelta(days=2), "SETTLES") == []
    assert open_queue(engine, RUN + timedelta(days=2), "BUYS_MORE") == [("disputed", None)]


def test_a_double_payment_is_queued_for_refund_and_never_reminded(
    engine: Engine, settings: Settings, reasons: Ledger
) -> None:
    run(settings, RUN)
    run(settings, RUN)  # a rerun queues nothing twice

    assert planned(engine, "DOUBLE")["items"] == [("INV-DOUBLE-OPEN", "no_attempt")]
    with engine.connect() as conn:
        assert (
            conn.execute(select(MESSAGES.c.id).where(MESSAGES.c.customer_id == "OVERPAID")).all()
            == []
        )
        queue = operator_queue(conn, RUN)
    refunds = {(i["customer_id"], i["detail"]) for i in queue if i["reason"] == "refund_due"}
    assert refunds == {("DOUBLE", "INV-DOUBLE-PAID"), ("OVERPAID", "INV-OVERPAID")}
    assert len([i for i in queue if i["reason"] == "refund_due"]) == 2
    assert {i["case_id"] for i in queue if i["reason"] == "refund_due"} == {None}


def write_policy(tmp_path: Path, diagnosis: dict) -> Path:
    raw = yaml.safe_load((PROJECT_ROOT / "policy.yaml").read_text())
    path = tmp_path / "policy.yaml"
    path.write_text(yaml.safe_dump(raw | {"diagnosis": diagnosis}))
    return path


def test_a_policy_adds_failure_codes_in_any_spelling(tmp_path: Path) -> None:
    policy = load_policy(write_policy(tmp_path, {"failure_codes": {"Bank Offline": "technical"}}))

    classes = policy.diagnosis.failure_classes()
    assert classes["bank_offline"] == "technical"
    assert classes["insufficient_funds"] == "customer"  # the built-in table is still there


def test_a_bad_failure_class_is_refused_with_its_path(tmp_path: Path) -> None:
    with pytest.raises(PolicyError, match=r"diagnosis\.failure_codes\.bank_offline"):
        load_policy(write_policy(tmp_path, {"failure_codes": {"bank_offline": "weather"}}))
