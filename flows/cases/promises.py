"""Promises to pay, recorded by an operator: reminders wait until the date plus the policy's grace.

Kept and broken promises are decided by the daily run (cases/pauses.py); this module records
one, with its checks (a positive amount no larger than owed, a date not in the past).
"""

from __future__ import annotations

from datetime import date, timedelta
from decimal import Decimal

from sqlalchemy import Connection, insert

from collectflow.flows.cases.casework import (
    KEEP_RESUME_STATUS,
    ActionResult,
    hold_reminders,
    load_case,
    money_text,
    not_in_past,
    owed_by_currency,
)
from collectflow.flows.cases.lifecycle import (
    PROMISED,
    transition_case,
)
from collectflow.flows.cases.queue import open_items, queue_changes
from collectflow.flows.errors import ActionRefused
from collectflow.models import (
    Promise,
)

PROMISES = Promise.__table__


def record_promise(
    conn: Connection,
    case_id: int,
    amount: Decimal,
    pay_by: date,
    operator: str,
    note: str,
    as_of: date,
    grace_days: int,
    currency: str | None = None,
) -> ActionResult:
    """The customer promised to pay `amount` by `pay_by`: reminders wait until then plus grace."""
    case = load_case(conn, case_id)
    not_in_past(pay_by, as_of, "promised date")
    owed = owed_by_currency(conn, case["customer_id"], as_of)
    if currency is None:
        if len(owed) != 1:
            raise ActionRefused(
                f"case {case_id} owes in {', '.join(sorted(owed)) or 'no currency'}: "
                "say which currency the promise is in"
            )
        currency = next(iter(owed))
    if amount > owed.get(currency, Decimal(0)):
        raise ActionRefused(
            f"promised {money_text(amount, currency)} is more than the "
            f"{money_text(owed.get(currency, Decimal(0)), currency)} owed on case {case_id}"
        )
    grace_until = pay_by + timedelta(days=grace_days)
    queued = open_items(conn, case_id)
    previous = transition_case(
        conn,
        case_id,
        PROMISED,
        as_of,
        "promise_recorded",
        actor=operator,
        why=note or None,
        data={"amount": str(amount), "currency": currency, "pay_by": pay_by},
        values={
            "paused_until": grace_until + timedelta(days=1),
            "resume_status": KEEP_RESUME_STATUS,
        },
    )
    conn.execute(
        insert(PROMISES).values(
            case_id=case_id,
            amount=amount,
            currency=currency,
            promised_on=pay_by,
            grace_until=grace_until,
            made_on=as_of,
            actor=operator,
        )
    )
    held = hold_reminders(conn, case_id, "promised")
    return ActionResult(
        "Promise recorded",
        case_id,
        case["customer_id"],
        operator,
        [
            f"promise: {money_text(amount, currency)} by {pay_by}",
            f"reminders paused until {grace_until} (grace {grace_days} days)",
            f"case: {previous} → {PROMISED}",
            *([f"{held} planned reminder(s) held back"] if held else []),
            *queue_changes(conn, case_id, queued),
        ],
    )
