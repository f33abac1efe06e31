"""Invoices the customer says are paid: reminders wait for the payment, then a person checks.

A customer who answers "I have already paid" is usually right (a bank transfer takes days to
reach the ledger), and a firmer reminder in the meantime is the most embarrassing mail a
collections tool can send. So each claimed invoice is held: it is not `remindable`
(flows/ledger/balances.py) until `hold_until`, `policy.feedback.claimed_paid_hold_days` business
days ahead in the customer's country. Each run reviews the claims (`review_claims`, with the
pauses before plan): a claim whose invoice received money since is `found`; one whose hold
ended with nothing received is `not_found`, and its case joins the operator queue as
`claimed_paid_not_found` with the customer's reference, while reminders resume.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from datetime import date, timedelta
from decimal import Decimal

from sqlalchemy import Connection, and_, bindparam, literal, or_, select, update
from sqlalchemy.engine import RowMapping
from sqlalchemy.sql.expression import ColumnElement

from collectflow.flows.cases.disputes import withdraw_invoice
from collectflow.flows.cases.events import record_events
from collectflow.flows.cases.queue import QUEUE, queue_cases, reopen_item
from collectflow.flows.ledger.balances import invoice_positions, these_invoices
from collectflow.flows.ledger.calendar import public_holidays
from collectflow.flows.policy.document import Policy
from collectflow.models import Case, ClaimedPayment, Customer

CLAIMS = ClaimedPayment.__table__
CUSTOMERS = Customer.__table__
CASES = Case.__table__
NOT_FOUND_REASON = "claimed_paid_not_found"


def add_business_days(start: date, days: int, country: str | None) -> date:
    """`days` business days after `start` (weekends and the country's public holidays skipped)."""
    off = public_holidays(country, {start.year, start.year + 1})
    day = start
    left = days
    while left > 0:
        day += timedelta(days=1)
        if day.weekday() < 5 and day not in off:
            left -= 1
    return day


def hold_claimed(
    conn: Connection,
    policy: Policy,
    case: RowMapping,
    invoices: Sequence[str],
    answer_id: int,
    today: date,
    reference: str | None = None,
) -> list[str]:
    """Hold reminders on the claimed invoices still owed; returns what changed, in words."""
    country = conn.execute(
        select(CUSTOMERS.c.country).where(CUSTOMERS.c.customer_id == case["customer_id"])
    ).scalar()
    hold_until = add_business_days(
        today, policy.feedback.claimed_paid_hold_days, country or policy.contact.holidays_country
    )
    positions = invoice_positions(today, these_invoices(invoices))
    already = select(CLAIMS.c.invoice_id).where(CLAIMS.c.status == "open")
    owed = conn.execute(
        select(positions.c.invoice_id, positions.c.owed).where(
            positions.c.owed > 0,
            positions.c.invoice_id.not_in(already),
        )
    ).all()
    if not owed:
        return ["those invoices are already awaited or owe nothing: nothing to hold"]
    conn.execute(
        CLAIMS.insert(),
        [
            {
                "answer_id": answer_id,
                "case_id": case["id"],
                "invoice_id": row.invoice_id,
                "claimed_on": today,
                "hold_until": hold_until,
                "owed_when_claimed": Decimal(row.owed),
                "reference": reference,
                "status": "open",
            }
            for row in owed
        ],
    )
    withdrawn = sum(withdraw_invoice(conn, case["id"], row.invoice_id) for row in owed)
    names = ", ".join(row.invoice_id for row in owed)
    changes = [f"reminders on {names} wait for the payment until {hold_until.isoformat()}"]
    changes += [f"{withdrawn} planned reminder(s) no longer ask for them"] if withdrawn else []
    return changes


def review_claims(conn: Connection, as_of: date) -> dict[str, int]:
    """Decide open claims: money arrived (`found`), or the hold ended without it (`not_found`,
    queued for a person with the customer's reference)."""
    if conn.execute(select(CLAIMS.c.id).where(CLAIMS.c.status == "open").limit(1)).first() is None:
        return {"claims_found": 0, "claims_not_found": 0}
    positions = invoice_positions(
        as_of, select(CLAIMS.c.invoice_id).where(CLAIMS.c.status == "open")
    )
    owed_now = (
        select(positions.c.owed)
        .where(positions.c.invoice_id == CLAIMS.c.invoice_id)
        .scalar_subquery()
    )
    received = or_(owed_now.is_(None), owed_now < CLAIMS.c.owed_when_claimed)
    found = conn.execute(
        update(CLAIMS)
        .where(CLAIMS.c.status == "open", received)
        .values(status="found", decided_on=as_of)
    ).rowcount
    lapsed = conn.execute(
        update(CLAIMS)
        .where(CLAIMS.c.status == "open", CLAIMS.c.hold_until < as_of)
        .values(status="not_found", decided_on=as_of)
        .returning(CLAIMS.c.case_id, CLAIMS.c.invoice_id, CLAIMS.c.reference)
    ).all()
    _queue_not_found(conn, [row for row in lapsed if row.case_id is not None], as_of)
    return {"claims_found": found, "claims_not_found": len(lapsed)}


def _queue_not_found(conn: Connection, lapsed: Sequence[RowMapping], as_of: date) -> None:
    """Queue each case whose claimed payment did not arrive, its detail naming the invoices
    and the customer's reference, so the operator can look for it in the bank statement."""
    if not lapsed:
        return
    by_case: dict[int, list[RowMapping]] = defaultdict(list)
    for row in lapsed:
        by_case[row.case_id].append(row)
    cases = list(by_case)
    decided = and_(CLAIMS.c.case_id.in_(cases), CLAIMS.c.decided_on == as_of)
    for case_id in cases:
        reopen_item(conn, case_id, NOT_FOUND_REASON, as_of)
    queue_cases(
        conn,
        select(CLAIMS.c.case_id, _customer_of_case())
        .where(decided, CLAIMS.c.status == "not_found")
        .distinct(),
        NOT_FOUND_REASON,
        as_of,
    )
    details = [
        {"case": case_id, "detail": _detail(rows)[:500]} for case_id, rows in by_case.items()
    ]
    conn.execute(
        update(QUEUE)
        .where(QUEUE.c.case_id == bindparam("case"), QUEUE.c.reason == literal(NOT_FOUND_REASON))
        .values(detail=bindparam("detail")),
        details,
    )
    record_events(
        conn,
        select(CLAIMS.c.case_id).where(decided, CLAIMS.c.status == "not_found").distinct(),
        "claimed_paid_not_found",
        as_of,
        {"why": "the payment the customer reported has not arrived"},
    )


def _customer_of_case() -> ColumnElement[str]:
    return select(CASES.c.customer_id).where(CASES.c.id == CLAIMS.c.case_id).scalar_subquery()


def _detail(rows: Sequence[RowMapping]) -> str:
    invoices = ", ".join(sorted(row.invoice_id for row in rows))
    references = sorted({row.reference for row in rows if row.reference})
    said = f"; customer's reference: {', '.join(references)}" if references else ""
    return f"payment reported but not received on {invoices}{said}"
