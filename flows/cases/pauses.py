"""Pauses that end by themselves, reviewed at the start of each day's planning.

- A promise to pay is kept once payments made since it (in its currency) reach the promised
  amount: the case resumes where it was (and closes the same day if nothing is owed any more).
- A promise not kept by the end of its grace period is broken: the case gets a
  `promise_broken` event (a behaviour feature of the customer) and resumes fast-tracked as
  the policy's `pauses.broken_promise` says.
- A customer pause ends on its date and the case resumes where it was.
Disputes end only when an operator resolves them (flows/cases/disputes.py).
"""

from __future__ import annotations

from datetime import date
from typing import Any

from sqlalchemy import Connection, and_, case, exists, func, select, update
from sqlalchemy.sql.expression import ColumnElement

from collectflow.flows.cases.lifecycle import (
    ESCALATED,
    OPEN,
    PAUSED,
    PROMISED,
    REMINDING,
    transition,
)
from collectflow.flows.ledger.balances import settled_amount, settling
from collectflow.flows.policy.document import Policy
from collectflow.models import Case, Invoice, LadderStage, Payment, Promise

CASES = Case.__table__
PROMISES = Promise.__table__
PAYMENTS = Payment.__table__
INVOICES = Invoice.__table__
STAGES = LadderStage.__table__

RESUMABLE = (OPEN, REMINDING, ESCALATED)
RESUMED = {"paused_until": None, "resume_status": None}


def review_pauses(conn: Connection, policy: Policy, as_of: date) -> dict[str, int]:
    """Decide promises (kept or broken) and end customer pauses that reached their date."""
    waiting = exists().where(CASES.c.status.in_((PROMISED, PAUSED)))
    if not conn.execute(select(waiting)).scalar():
        return {"promises_kept": 0, "promises_broken": 0, "pauses_ended": 0}
    return {
        "promises_kept": keep_promises(conn, as_of),
        "promises_broken": break_promises(conn, policy, as_of),
        "pauses_ended": end_pauses(conn, as_of),
    }


def paid_since_promise(as_of: date) -> ColumnElement[Any]:
    """Money received on the (correlated) promise's customer since it was made, up to `as_of`.

    Refunds count against it; only invoices in the promise's currency count.
    """
    return (
        select(settled_amount())
        .select_from(PAYMENTS.join(INVOICES, INVOICES.c.invoice_id == PAYMENTS.c.invoice_id))
        .where(
            INVOICES.c.customer_id == CASES.c.customer_id,
            CASES.c.id == PROMISES.c.case_id,
            INVOICES.c.currency == PROMISES.c.currency,
            settling(),
            PAYMENTS.c.attempted_on >= PROMISES.c.made_on,
            PAYMENTS.c.attempted_on <= as_of,
        )
        .scalar_subquery()
    )


def decided_today(outcome: str, as_of: date) -> ColumnElement[bool]:
    """The (correlated) case is promised and its promise was decided `outcome` today."""
    return and_(
        CASES.c.status == PROMISED,
        exists().where(
            PROMISES.c.case_id == CASES.c.id,
            PROMISES.c.status == outcome,
            PROMISES.c.decided_on == as_of,
        ),
    )


def keep_promises(conn: Connection, as_of: date) -> int:
    """Mark promises whose amount came in as kept and resume their cases."""
    conn.execute(
        update(PROMISES)
        .where(PROMISES.c.status == "open", paid_since_promise(as_of) >= PROMISES.c.amount)
        .values(status="kept", decided_on=as_of)
    )
    return sum(
        transition(
            conn,
            select(CASES.c.id).where(decided_today("kept", as_of), CASES.c.resume_status == back),
            back,
            as_of,
            "promise_kept",
            why="the promised amount was paid",
            values=RESUMED,
        )
        for back in RESUMABLE
    )


def break_promises(conn: Connection, policy: Policy, as_of: date) -> int:
    """Mark promises past their grace period as broken; resume their cases fast-tracked."""
    conn.execute(
        update(PROMISES)
        .where(PROMISES.c.status == "open", PROMISES.c.grace_until < as_of)
        .values(status="broken", decided_on=as_of)
    )
    how = policy.pauses.broken_promise
    broken = decided_today("broken", as_of)
    why = f"not paid by the promised date plus grace; fast track: {how}"
    if how == "escalate":
        return transition(
            conn,
            select(CASES.c.id).where(broken),
            ESCALATED,
            as_of,
            "promise_broken",
            why=why,
            values={**RESUMED, "escalated_on": func.coalesce(CASES.c.escalated_on, as_of)},
        )
    values: dict[str, Any] = {**RESUMED, "fast_track": True}
    if how == "final_stage":
        jump = before_last_stage()
        values["stage_index"] = case((CASES.c.stage_index < jump, jump), else_=CASES.c.stage_index)
    return sum(
        transition(
            conn,
            select(CASES.c.id).where(broken, CASES.c.resume_status == back),
            back,
            as_of,
            "promise_broken",
            why=why,
            values=values,
        )
        for back in RESUMABLE
    )


def before_last_stage() -> ColumnElement[int]:
    """The index before the (correlated) case's last stage: next planned is the final one."""
    return (
        select(func.max(STAGES.c.stage_index) - 1)
        .where(STAGES.c.ladder == CASES.c.ladder)
        .scalar_subquery()
    )


def end_pauses(conn: Connection, as_of: date) -> int:
    """Resume paused cases whose pause reached its date."""
    ended = and_(CASES.c.status == PAUSED, CASES.c.paused_until <= as_of)
    return sum(
        transition(
            conn,
            select(CASES.c.id).where(ended, CASES.c.resume_status == back),
            back,
            as_of,
            "pause_ended",
            why="the pause reached its date",
            values=RESUMED,
        )
        for back in RESUMABLE
    )
