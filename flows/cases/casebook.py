"""Read-only views for operators: the operator queue and one case's story."""

from __future__ import annotations

import json
from datetime import date
from typing import Any

import numpy as np
from sqlalchemy import Connection, case, exists, literal, select
from sqlalchemy.sql.expression import ColumnElement

from collectflow.flows.cases.stake import (
    Stake,
    comparable,
    customer_stakes,
    in_reference,
    rank_items,
    why,
)
from collectflow.flows.errors import UnknownCase
from collectflow.flows.ledger.balances import invoice_positions
from collectflow.flows.policy.risk import Risk
from collectflow.flows.steps.risk.model import SOURCE_COLUMNS, RiskModel, raw_inputs, reasons_of
from collectflow.models import (
    Case,
    CaseEvent,
    Customer,
    CustomerFeatures,
    Dispute,
    EscalationStep,
    Invoice,
    Message,
    Payment,
    Promise,
    QueueItem,
    RiskModelRecord,
    days_between,
)

CASES = Case.__table__
CUSTOMERS = Customer.__table__
FEATURES = CustomerFeatures.__table__
MODELS = RiskModelRecord.__table__
EVENTS = CaseEvent.__table__
INVOICES = Invoice.__table__
MESSAGES = Message.__table__
PAYMENTS = Payment.__table__
QUEUE = QueueItem.__table__
PROMISES = Promise.__table__
DISPUTES = Dispute.__table__
STEPS = EscalationStep.__table__

QUEUE_ARTIFACT_COLUMNS = (
    "rank", "id", "case_id", "customer_id", "reason", "created_on", "age_days", "claimed_by",
    "case_status", "overdue", "currency", "days_overdue", "risk", "expected_loss", "why",
)  # fmt: skip
"""What the queue artifact shows: no names or addresses (artifacts are not for personal data)."""
CALL_LIST_COLUMNS = (
    "rank", "case_id", "customer_id", "reason", "overdue", "currency", "days_overdue", "risk",
    "expected_loss", "claimed_by", "why",
)  # fmt: skip
"""What the call-list artifact shows of each case to phone (no personal data either)."""


def operator_queue(
    conn: Connection, as_of: date, policy: Risk | None = None, top: int | None = None
) -> list[dict[str, Any]]:
    """Open queue items, the most at stake first (flows/cases/stake.py): each with its reason,
    age, claim, the customer's name, overdue balance and currency, days overdue, risk,
    expected loss, rank and one line of why it ranks there; `top`: the first so many."""
    policy = policy or Risk()
    rows = conn.execute(
        select(
            QUEUE.c.id,
            QUEUE.c.case_id,
            QUEUE.c.customer_id,
            CUSTOMERS.c.name,
            CUSTOMERS.c.locale,
            QUEUE.c.reason,
            QUEUE.c.detail,
            QUEUE.c.created_on,
            days_between(as_of, QUEUE.c.created_on).label("age_days"),
            QUEUE.c.claimed_by,
            CASES.c.status.label("case_status"),
            FEATURES.c.risk,
        )
        .select_from(
            # outer: a refund due stands on its own when the customer has no open case
            QUEUE.outerjoin(CASES, CASES.c.id == QUEUE.c.case_id)
            .join(CUSTOMERS, CUSTOMERS.c.customer_id == QUEUE.c.customer_id)
            .outerjoin(FEATURES, FEATURES.c.customer_id == QUEUE.c.customer_id)
        )
        .where(QUEUE.c.resolved_on.is_(None), CASES.c.closed_on.is_(None))
        .order_by(QUEUE.c.created_on, QUEUE.c.id)
    ).mappings()
    items = [dict(row) for row in rows]
    waiting = select(QUEUE.c.customer_id).where(QUEUE.c.resolved_on.is_(None))
    stakes = customer_stakes(conn, policy, as_of, waiting)
    for item in items:
        item.update(at_stake(policy, stakes.get(item["customer_id"], []), item))
    ranked = rank_items(policy, items)
    for item in ranked:
        item["why"] = why(item, item["locale"])
    return ranked[:top] if top else ranked


def at_stake(policy: Risk, stakes: list[Stake], item: dict[str, Any]) -> dict[str, Any]:
    """An item's money: its customer's largest stake, and every currency when several."""
    main = stakes[0] if stakes else None
    return {
        "customer_name": item["name"],
        "overdue": main.overdue if main else None,
        "currency": main.currency if main else None,
        "days_overdue": main.days_overdue if main else None,
        "risk": None if item["risk"] is None else round(item["risk"], 4),
        "age_factor": main.factor if main else None,
        "expected_loss": main.expected_loss if main else None,
        "expected_loss_reference": in_reference(policy, stakes)
        if policy.reference_currency and comparable(policy, {s.currency for s in stakes})
        else None,
        "overdue_by_currency": {s.currency: s.overdue for s in stakes},
    }


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


def case_story(
    conn: Connection, case_id: int, as_of: date, policy: Risk | None = None
) -> dict[str, Any]:
    """A case with its customer (segment and why), the cause of non-payment, what is at stake
    (risk and its reasons, overdue money and expected loss, rank in the queue), invoices
    (with what is owed on each as of `as_of` and their `state`, see `standing`), payments
    (with their invoice's currency), messages, promises, disputes, escalation steps, queue
    items and events."""
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
        "stake": case_stake(conn, case_id, customer_id, as_of, policy or Risk()),
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


def case_stake(
    conn: Connection, case_id: int, customer_id: str, as_of: date, policy: Risk
) -> dict[str, Any]:
    """The customer's risk with its reasons (the last run's model on the last run's
    features), its overdue money and expected loss per currency, and where the case's queue
    items rank."""
    stakes = customer_stakes(conn, policy, as_of, select(literal(customer_id)))
    queued = [item for item in operator_queue(conn, as_of, policy) if item["case_id"] == case_id]
    risk, reasons = customer_risk(conn, customer_id, policy.reasons)
    return {
        "risk": risk,
        "band": None if risk is None else policy.band(risk),
        "reasons": reasons,
        "overdue": [
            {
                "currency": s.currency,
                "overdue": s.overdue,
                "days_overdue": s.days_overdue,
                "age_factor": s.factor,
                "expected_loss": s.expected_loss,
            }
            for s in stakes.get(customer_id, [])
        ],
        "queue": [
            {key: item[key] for key in ("id", "reason", "rank", "rank_scope", "why")}
            for item in queued
        ],
    }


def customer_risk(
    conn: Connection, customer_id: str, count: int
) -> tuple[float | None, list[dict[str, Any]]]:
    """The customer's risk as the last run scored it, and its `count` largest reasons."""
    record = conn.execute(select(MODELS).order_by(MODELS.c.id.desc()).limit(1)).first()
    row = conn.execute(
        select(FEATURES.c.risk, *(FEATURES.c[name] for name in SOURCE_COLUMNS)).where(
            FEATURES.c.customer_id == customer_id
        )
    ).first()
    if record is None or row is None or row[0] is None:
        return None, []
    model = RiskModel.from_dict(json.loads(record.model))
    raw = raw_inputs(np.array([row[1:]], dtype=float))
    return round(row[0], 4), reasons_of(raw[0], model.contributions(raw)[0], count)
