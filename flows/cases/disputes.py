"""Disputes: an operator marks an invoice disputed, and decides the dispute later.

A disputed invoice is not reminded of; the case waits as `disputed` when nothing else is owed
and is queued for a person. Resolving the dispute (upheld: the invoice is credited; rejected:
the ladder resumes where it was) settles the queue item. Order issues found by diagnosis
open disputes of the same kind (steps/diagnose.py).
"""

from __future__ import annotations

from datetime import UTC, date, datetime
from decimal import Decimal
from typing import Literal

from sqlalchemy import Connection, and_, delete, exists, func, insert, literal, select, update
from sqlalchemy.engine import RowMapping

from collectflow.flows.cases.casework import (
    KEEP_RESUME_STATUS,
    ActionResult,
    cancel_promise,
    invoice_owed,
    load_case,
    money_text,
    open_case_of,
)
from collectflow.flows.cases.events import record_events
from collectflow.flows.cases.lifecycle import (
    DISPUTED,
    PROMISED,
    transition_case,
)
from collectflow.flows.cases.queue import (
    open_items,
    queue_cases,
    queue_changes,
    reopen_item,
    resolve_items,
)
from collectflow.flows.errors import ActionRefused
from collectflow.flows.ledger.balances import invoice_positions
from collectflow.flows.mail.outbox import PLANNED, SUPPRESSED, move
from collectflow.models import (
    Dispute,
    Message,
    MessageContent,
    MessageItem,
    Payment,
)

DISPUTES = Dispute.__table__
MESSAGES = Message.__table__
CONTENTS = MessageContent.__table__
ITEMS = MessageItem.__table__
PAYMENTS = Payment.__table__


def mark_dispute(
    conn: Connection, invoice_id: str, operator: str, reason: str, as_of: date
) -> ActionResult:
    """The customer disputes an invoice: reminders stop asking for it and the case is queued.

    The invoice leaves every reminder not sent yet (they are rendered again without it) and
    is no longer remindable until the dispute is resolved. If the customer owes nothing else
    a reminder could ask for, the whole case waits as `disputed`; otherwise its ladder goes
    on for the other invoices.
    """
    invoice = invoice_owed(conn, invoice_id, as_of)
    case = open_case_of(conn, invoice["customer_id"])
    if invoice["owed"] <= 0 or invoice["status"] not in ("open", "disputed"):
        raise ActionRefused(f"nothing is owed on invoice {invoice_id}: no dispute to open")
    already = conn.execute(
        select(DISPUTES.c.id).where(
            DISPUTES.c.invoice_id == invoice_id, DISPUTES.c.resolved_on.is_(None)
        )
    ).first()
    if already is not None:
        raise ActionRefused(f"invoice {invoice_id} is already in dispute {already.id}")
    case_id = case["id"]
    queued = open_items(conn, case_id)
    data = {"invoice": invoice_id, "reason": reason}
    changes = [f"invoice {invoice_id} disputed: {reason}"]
    if case["status"] == DISPUTED or remindable_besides(conn, case, invoice_id, as_of):
        record_events(conn, select(literal(case_id)), "dispute_opened", as_of, data, operator)
        if case["status"] != DISPUTED:
            changes.append(f"case stays {case['status']}: its other invoices are still reminded")
    else:
        if case["status"] == PROMISED:
            cancel_promise(conn, case_id, as_of)
            changes.append("the open promise to pay is withdrawn")
        previous = transition_case(
            conn,
            case_id,
            DISPUTED,
            as_of,
            "dispute_opened",
            actor=operator,
            why=reason,
            data=data,
            values={"paused_until": None, "resume_status": KEEP_RESUME_STATUS},
        )
        changes.append(f"case: {previous} → {DISPUTED}")
    dispute_id = conn.execute(
        insert(DISPUTES)
        .values(case_id=case_id, invoice_id=invoice_id, reason=reason, opened_on=as_of)
        .returning(DISPUTES.c.id)
    ).scalar_one()
    reopen_item(conn, case_id, "disputed", as_of)
    queue_cases(conn, select(literal(case_id), literal(case["customer_id"])), "disputed", as_of)
    held = withdraw_invoice(conn, case_id, invoice_id)
    changes += [f"dispute {dispute_id} opened; the case is in the operator queue"]
    changes += [f"{held} planned reminder(s) no longer ask for it"] if held else []
    changes += queue_changes(conn, case_id, queued, own="disputed")
    return ActionResult("Dispute opened", case_id, case["customer_id"], operator, changes)


def remindable_besides(conn: Connection, case: RowMapping, invoice_id: str, as_of: date) -> bool:
    """Whether the case's customer owes on an invoice other than `invoice_id` that a reminder
    may ask for (open, not disputed in the ledger nor by an open dispute)."""
    positions = invoice_positions(as_of)
    under_dispute = select(DISPUTES.c.invoice_id).where(DISPUTES.c.resolved_on.is_(None))
    other = conn.execute(
        select(positions.c.invoice_id)
        .where(
            positions.c.customer_id == case["customer_id"],
            positions.c.invoice_id != invoice_id,
            positions.c.owed > 0,
            positions.c.status == "open",
            positions.c.invoice_id.not_in(under_dispute),
        )
        .limit(1)
    ).first()
    return other is not None


def withdraw_invoice(conn: Connection, case_id: int, invoice_id: str) -> int:
    """Take a disputed invoice off the case's reminders not sent yet; returns how many.

    Those left with other invoices are rendered again (their text is cleared; the action flow
    renders them at once); those left with none are suppressed, reason `disputed`.
    """
    planned = select(MESSAGES.c.id).where(
        MESSAGES.c.case_id == case_id,
        MESSAGES.c.status == PLANNED,
        MESSAGES.c.kind == "reminder",
    )
    on_them = and_(ITEMS.c.invoice_id == invoice_id, ITEMS.c.message_id.in_(planned))
    touched = conn.scalars(delete(ITEMS).where(on_them).returning(ITEMS.c.message_id)).all()
    if not touched:
        return 0
    has_items = exists().where(ITEMS.c.message_id == MESSAGES.c.id)
    emptied = and_(MESSAGES.c.id.in_(touched), ~has_items)
    move(conn, emptied, PLANNED, SUPPRESSED, "disputed", datetime.now(UTC))
    cleared = conn.scalars(
        update(MESSAGES)
        .where(MESSAGES.c.id.in_(touched), MESSAGES.c.status == PLANNED)
        .values(subject=None, rendered_at=None)
        .returning(MESSAGES.c.id)
    ).all()
    if cleared:
        conn.execute(delete(CONTENTS).where(CONTENTS.c.message_id.in_(cleared)))
    return len(touched)


def resolve_dispute(
    conn: Connection,
    dispute_id: int,
    outcome: Literal["upheld", "rejected"],
    operator: str,
    note: str,
    as_of: date,
    credit: Decimal | None = None,
) -> ActionResult:
    """Decide a dispute. Upheld: the invoice is credited (in full unless `credit` says less).
    Rejected: the invoice stands and reminders may ask for it again. Once the case has no
    open dispute it leaves the queue, and a case that waited as `disputed` resumes its ladder
    where it was, without repeating a stage."""
    dispute = conn.execute(select(DISPUTES).where(DISPUTES.c.id == dispute_id)).mappings().first()
    if dispute is None:
        raise ActionRefused(f"no dispute with id {dispute_id} (see `collectflow case ID`)")
    if dispute["resolved_on"] is not None:
        raise ActionRefused(
            f"dispute {dispute_id} was already resolved ({dispute['outcome']}) on "
            f"{dispute['resolved_on']}"
        )
    if outcome == "rejected" and credit is not None:
        raise ActionRefused("a rejected dispute credits nothing: leave the credit empty")
    case = load_case(conn, dispute["case_id"])
    case_id = case["id"]
    queued = open_items(conn, case_id)
    changes = [f"dispute {dispute_id} on invoice {dispute['invoice_id']}: {outcome}"]
    credited = None
    if outcome == "upheld":
        credited, currency = credit_invoice(conn, dispute_id, dispute["invoice_id"], credit, as_of)
        changes.append(f"invoice {dispute['invoice_id']} credited {money_text(credited, currency)}")
    conn.execute(
        update(DISPUTES)
        .where(DISPUTES.c.id == dispute_id)
        .values(resolved_on=as_of, outcome=outcome, credited=credited)
    )
    data = {"dispute": dispute_id, "invoice": dispute["invoice_id"], "outcome": outcome}
    still_open = conn.execute(
        select(func.count()).where(DISPUTES.c.case_id == case_id, DISPUTES.c.resolved_on.is_(None))
    ).scalar_one()
    if still_open or case["status"] != DISPUTED:
        record_events(conn, select(literal(case_id)), "dispute_resolved", as_of, data, operator)
        if still_open:
            changes.append(f"{still_open} other dispute(s) still open on the case")
        else:
            resolve_items(conn, case_id, "disputed", as_of)
            changes.append(f"the invoice is reminded again with the case ({case['status']})")
    else:
        back = case["resume_status"]
        transition_case(
            conn,
            case_id,
            back,
            as_of,
            "dispute_resolved",
            actor=operator,
            why=note or None,
            data=data,
            values={"resume_status": None},
        )
        resolve_items(conn, case_id, "disputed", as_of)
        changes.append(f"case: {DISPUTED} → {back}; the ladder resumes at its next stage")
    changes += queue_changes(conn, case_id, queued, own="disputed")
    return ActionResult("Dispute resolved", case_id, case["customer_id"], operator, changes)


def credit_invoice(
    conn: Connection, dispute_id: int, invoice_id: str, credit: Decimal | None, as_of: date
) -> tuple[Decimal, str]:
    """Credit the invoice by a ledger entry of our own (a credit note as a payment).

    A payment row, not a status change, so that re-importing the ledger keeps the credit.
    """
    invoice = invoice_owed(conn, invoice_id, as_of)
    owed, currency = invoice["owed"], invoice["currency"]
    amount = owed if credit is None else credit
    if amount <= 0 or amount > owed:
        raise ActionRefused(
            f"credit {money_text(amount, currency)} must be more than 0 and at most the "
            f"{money_text(owed, currency)} owed on invoice {invoice_id}"
        )
    now = datetime.now(UTC)
    conn.execute(
        insert(PAYMENTS).values(
            payment_id=f"credit-dispute-{dispute_id}",
            invoice_id=invoice_id,
            attempted_at=now,
            attempted_on=as_of,
            amount=amount,
            status="succeeded",
            method="credit_note",
            gateway="collectflow",
        )
    )
    return amount, currency
