"""Read-only views for operators: the operator queue and one case's story."""

from __future__ import annotations

from datetime import date
from typing import Any

from sqlalchemy import Connection, case, exists, select
from sqlalchemy.sql.expression import ColumnElement

from collectflow.flows.errors import UnknownCase
from collectflow.flows.ledger.balances import invoice_positions
from collectflow.models import (
    Case,
    CaseEvent,
    Customer,
    Dispute,
    EscalationStep,
    Invoice,
    Message,
    Payment,
    Promise,
    QueueItem,
    days_between,
)

CASES = Case.__table__
CUSTOMERS = Customer.__table__
EVENTS = CaseEvent.__table__
INVOICES = Invoice.__table__
MESSAGES = Message.__table__
PAYMENTS = Payment.__table__
QUEUE = QueueItem.__table__
PROMISES = Promise.__table__
DISPUTES = Dispute.__table__
STEPS = EscalationStep.__table__

QUEUE_ARTIFACT_COLUMNS = (
    "id", "case_id", "customer_id", "reason", "created_on", "age_days", "claimed_by",
    "case_status",
)  # fmt: skip
"""What the queue artifact shows: no names or addresses (artifacts are not for personal data)."""


def operator_queue(conn: Connection, as_of: date) -> list[dict[str, Any]]:
    """Open queue items, oldest first, with the reason and their age in days."""
    rows = conn.execute(
        select(
            QUEUE.c.id,
            QUEUE.c.case_id,
            QUEUE.c.customer_id,
            CUSTOMERS.c.name,
            QUEUE.c.reason,
            QUEUE.c.detail,
            QUEUE.c.created_on,
            days_between(as_of, QUEUE.c.created_on).label("age_days"),
            QUEUE.c.claimed_by,
            CASES.c.status.label("case_status"),
        )
        .select_from(
            # outer: a refund due stands on its own when the customer has no open case
            QUEUE.outerjoin(CASES, CASES.c.id == QUEUE.c.case_id).join(
                CUSTOMERS, CUSTOMERS.c.customer_id == QUEUE.c.customer_id
            )
        )
        .where(QUEUE.c.resolved_on.is_(None), CASES.c.closed_on.is_(None))
        .order_by(QUEUE.c.created_on, QUEUE.c.id)
    ).mappings()
    return [dict(row) for row in rows]


def standing(positions: Any) -> ColumnElement[str]:
    """An invoice's state as of the positions' date: `void`, `disputed` (in the ledger or by an
    open dispute), `paid` (nothing owed), `partly paid` or `open`."""
    under_dispute = exists().where(
        DISPUTES.c.invoice_id == INVOICES.c.invoice_id, DISPUTES.c.resolved_on.is_(None)
    )
    return case(
        (INVOICES.c.status == "void", "void"),
        ((INVOICES.c.status == "disputed") | under_dispute, "disputed"),
        (positions.c.owed <= 0, "paid"),
        (positions.c.owed < INVOICES.c.amount, "partly paid"),
        else_="open",
    )


def case_story(conn: Connection, case_id: int, as_of: date) -> dict[str, Any]:
    """A case with its customer (segment and why), the cause of non-payment, invoices (with
    what is owed on each as of `as_of` and their `state`, see `standing`), payments (with
    their invoice's currency), messages, promises, disputes, escalation steps, queue items
    and events."""
    case = conn.execute(select(CASES).where(CASES.c.id == case_id)).mappings().first()
    if case is None:
        raise UnknownCase(case_id)
    customer_id = case["customer_id"]
    customer = (
        conn.execute(select(CUSTOMERS).where(CUSTOMERS.c.customer_id == customer_id))
        .mappings()
        .one()
    )
    positions = invoice_positions(as_of)
    invoices = conn.execute(
        select(INVOICES, positions.c.owed, standing(positions).label("state"))
        .outerjoin(positions, positions.c.invoice_id == INVOICES.c.invoice_id)
        .where(INVOICES.c.customer_id == customer_id)
        .order_by(INVOICES.c.due_on, INVOICES.c.invoice_id)
    ).mappings()
    payments = conn.execute(
        select(PAYMENTS, INVOICES.c.currency)
        .join(INVOICES, INVOICES.c.invoice_id == PAYMENTS.c.invoice_id)
        .where(INVOICES.c.customer_id == customer_id)
        .order_by(PAYMENTS.c.attempted_at)
    ).mappings()
    messages = conn.execute(
        select(
            MESSAGES.c.id,
            MESSAGES.c.kind,
            MESSAGES.c.stage,
            MESSAGES.c.template,
            MESSAGES.c.to_address,
            MESSAGES.c.planned_on,
            MESSAGES.c.status,
            MESSAGES.c.status_reason,
            MESSAGES.c.sent_on,
            MESSAGES.c.cause,
            MESSAGES.c.subject,
        )
        .where(MESSAGES.c.case_id == case_id)
        .order_by(MESSAGES.c.id)
    ).mappings()
    messages = [dict(row) for row in messages]
    causes = [m["cause"] for m in messages if m["kind"] == "reminder" and m["cause"]]
    events = conn.execute(
        select(EVENTS.c.on, EVENTS.c.kind, EVENTS.c.actor, EVENTS.c.detail)
        .where(EVENTS.c.case_id == case_id)
        .order_by(EVENTS.c.id)
    ).mappings()

    def rows_of(table: Any) -> list[dict[str, Any]]:
        query = select(table).where(table.c.case_id == case_id).order_by(table.c.id)
        return [dict(row) for row in conn.execute(query).mappings()]

    return {
        "case": dict(case),
        "cause": causes[-1] if causes else None,
        "promises": rows_of(PROMISES),
        "disputes": rows_of(DISPUTES),
        "escalation_steps": rows_of(STEPS),
        "queue": rows_of(QUEUE),
        "customer": dict(customer),
        "invoices": [dict(row) for row in invoices],
        "payments": [dict(row) for row in payments],
        "messages": messages,
        "events": [dict(row) for row in events],
    }
