"""What operators do to cases: pauses, write-offs, resends, closing; and what every action
shares (its result, case lookups, holding reminders). Promises and disputes have their own
modules (cases/promises.py, cases/disputes.py) built on these.

Each action is a plain function over a Connection inside the caller's transaction. It checks
its input first (unknown case, amount larger than owed, date in the past...) and raises
ActionRefused or a lifecycle error, so the caller's rollback leaves everything unchanged.
Every change goes through flows/cases/lifecycle.py and lands in the case's event log with the
operator's name and why. Each returns an ActionResult whose lines say what changed (the
Prefect action flows publish them as a markdown artifact).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from decimal import Decimal
from typing import Any

from sqlalchemy import Connection, and_, func, insert, literal, select, update
from sqlalchemy.engine import RowMapping

from collectflow.flows.cases.events import record_events
from collectflow.flows.cases.lifecycle import (
    CLOSED,
    PAUSED,
    PAUSED_STATES,
    RESOLVED,
    WRITTEN_OFF,
    transition_case,
)
from collectflow.flows.cases.queue import open_items, queue_changes, resolve_items
from collectflow.flows.errors import ActionRefused, UnknownCase
from collectflow.flows.ledger.balances import invoice_positions
from collectflow.flows.mail.outbox import PLANNED, SUPPRESSED, move
from collectflow.models import (
    Case,
    Customer,
    EscalationStep,
    Message,
    MessageItem,
    Promise,
)

CASES = Case.__table__
CUSTOMERS = Customer.__table__
STEPS = EscalationStep.__table__
MESSAGES = Message.__table__
ITEMS = MessageItem.__table__
PROMISES = Promise.__table__

KEEP_RESUME_STATUS = func.coalesce(CASES.c.resume_status, CASES.c.status)
"""Where a paused case goes back to: set on the first pause, kept through further pauses."""


@dataclass
class ActionResult:
    """What an action changed, for the operator: the case, and one line per change."""

    action: str
    case_id: int | None  # None only for a queue item without a case (a refund due)
    customer_id: str
    operator: str
    changes: list[str] = field(default_factory=list)

    @property
    def artifact_key(self) -> str:
        """One artifact history per case (per customer when there is no case)."""
        if self.case_id is not None:
            return f"case-{self.case_id}"
        return "customer-" + "".join(c if c.isalnum() else "-" for c in self.customer_id.lower())

    def markdown(self) -> str:
        lines = "\n".join(f"- {change}" for change in self.changes)
        case = f"case {self.case_id}, " if self.case_id is not None else ""
        return (
            f"### {self.action} — {case}customer {self.customer_id}\n\n"
            f"By **{self.operator}**.\n\n{lines}\n"
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "action": self.action,
            "case_id": self.case_id,
            "customer_id": self.customer_id,
            "operator": self.operator,
            "changes": self.changes,
        }


def load_case(conn: Connection, case_id: int) -> RowMapping:
    """The case row; UnknownCase if there is none with that id."""
    row = conn.execute(select(CASES).where(CASES.c.id == case_id)).mappings().first()
    if row is None:
        raise UnknownCase(case_id)
    return row


def open_case_of(conn: Connection, customer_id: str) -> RowMapping:
    """The customer's open case; ActionRefused if the customer is unknown or has none."""
    known = conn.execute(
        select(CUSTOMERS.c.customer_id).where(CUSTOMERS.c.customer_id == customer_id)
    ).first()
    if known is None:
        raise ActionRefused(f"no customer with id {customer_id!r}")
    row = (
        conn.execute(
            select(CASES).where(CASES.c.customer_id == customer_id, CASES.c.closed_on.is_(None))
        )
        .mappings()
        .first()
    )
    if row is None:
        raise ActionRefused(f"customer {customer_id!r} has no open case: nothing is overdue")
    return row


def owed_by_currency(conn: Connection, customer_id: str, as_of: date) -> dict[str, Decimal]:
    """What the customer owes today, per currency, straight from the ledger."""
    positions = invoice_positions(as_of)
    rows = conn.execute(
        select(positions.c.currency, func.sum(positions.c.owed))
        .where(
            positions.c.customer_id == customer_id,
            positions.c.owed > 0,
            positions.c.status.in_(("open", "disputed")),
        )
        .group_by(positions.c.currency)
    ).all()
    return {currency: Decimal(total) for currency, total in rows}


def invoice_owed(conn: Connection, invoice_id: str, as_of: date) -> RowMapping:
    """The invoice with what is owed on it today; ActionRefused if unknown."""
    positions = invoice_positions(as_of)
    row = (
        conn.execute(select(positions).where(positions.c.invoice_id == invoice_id))
        .mappings()
        .first()
    )
    if row is None:
        raise ActionRefused(f"no invoice with id {invoice_id!r} (issued by {as_of})")
    return row


def not_in_past(day: date, as_of: date, what: str) -> None:
    if day < as_of:
        raise ActionRefused(f"{what} {day} is in the past (today is {as_of})")


def hold_reminders(conn: Connection, case_id: int, why: str) -> int:
    """Suppress the case's reminders planned but not sent yet: a paused case sends nothing.

    The stage still counts as done; the ladder continues with the next stage on resuming.
    """
    reminders = and_(MESSAGES.c.case_id == case_id, MESSAGES.c.kind == "reminder")
    return len(move(conn, reminders, PLANNED, SUPPRESSED, why, datetime.now(UTC)))


def cancel_promise(conn: Connection, case_id: int, as_of: date) -> int:
    """Withdraw the case's open promise (the case moves on for another reason)."""
    return conn.execute(
        update(PROMISES)
        .where(PROMISES.c.case_id == case_id, PROMISES.c.status == "open")
        .values(status="cancelled", decided_on=as_of)
    ).rowcount


def money_text(amount: Decimal, currency: str) -> str:
    """An amount as an operator reads it in an action's result: 1,234.50 EUR."""
    return f"{amount:,.2f} {currency}"


def pause_customer(
    conn: Connection, customer_id: str, until: date, reason: str, operator: str, as_of: date
) -> ActionResult:
    """Stop reminders to the customer until `until` (they resume that day)."""
    if until <= as_of:
        raise ActionRefused(f"pause end {until} is not after today ({as_of})")
    case = open_case_of(conn, customer_id)
    queued = open_items(conn, case["id"])
    previous = transition_case(
        conn,
        case["id"],
        PAUSED,
        as_of,
        "paused",
        actor=operator,
        why=reason,
        data={"until": until},
        values={"paused_until": until, "resume_status": KEEP_RESUME_STATUS},
    )
    held = hold_reminders(conn, case["id"], "paused")
    changes = [f"reminders paused until {until}: {reason}", f"case: {previous} → {PAUSED}"]
    changes += [f"{held} planned reminder(s) held back"] if held else []
    changes += queue_changes(conn, case["id"], queued)
    return ActionResult("Customer paused", case["id"], customer_id, operator, changes)


def resume_customer(
    conn: Connection, customer_id: str, operator: str, note: str, as_of: date
) -> ActionResult:
    """End a customer pause now; the ladder resumes where it was."""
    case = open_case_of(conn, customer_id)
    if case["status"] != PAUSED:
        raise ActionRefused(
            f"case {case['id']} of customer {customer_id!r} is {case['status']}, not paused"
        )
    back = case["resume_status"]
    queued = open_items(conn, case["id"])
    transition_case(
        conn,
        case["id"],
        back,
        as_of,
        "resumed",
        actor=operator,
        why=note or None,
        values={"paused_until": None, "resume_status": None},
    )
    changes = [f"case: {PAUSED} → {back}", *queue_changes(conn, case["id"], queued)]
    return ActionResult("Customer resumed", case["id"], customer_id, operator, changes)


def confirm_write_off(
    conn: Connection, case_id: int, operator: str, note: str, as_of: date
) -> ActionResult:
    """Write off an escalated case whose write-off the escalation proposed."""
    case = load_case(conn, case_id)
    proposed = conn.execute(
        select(STEPS.c.done_on).where(STEPS.c.case_id == case_id, STEPS.c.step == "write_off")
    ).scalar()
    if proposed is None:
        raise ActionRefused(
            f"no write-off was proposed for case {case_id} (the `write_off` escalation step "
            "proposes it)"
        )
    owed = owed_by_currency(conn, case["customer_id"], as_of)
    amounts = (
        ", ".join(money_text(total, code) for code, total in sorted(owed.items())) or "nothing"
    )
    previous = transition_case(
        conn,
        case_id,
        WRITTEN_OFF,
        as_of,
        "written_off",
        actor=operator,
        why=note or None,
        data={"owed": amounts, "proposed_on": proposed},
        values={"closed_on": as_of},
    )
    resolve_items(conn, case_id, "write_off", as_of)
    return ActionResult(
        "Write-off confirmed",
        case_id,
        case["customer_id"],
        operator,
        [f"written off: {amounts} (proposed on {proposed})", f"case: {previous} → {WRITTEN_OFF}"],
    )


def close_case(
    conn: Connection, case_id: int, operator: str, reason: str, as_of: date
) -> ActionResult:
    """Close a case by hand (e.g. settled outside the ledger)."""
    case = load_case(conn, case_id)
    previous = transition_case(
        conn,
        case_id,
        RESOLVED,
        as_of,
        "closed",
        actor=operator,
        why=reason,
        values={"closed_on": as_of, "paused_until": None},
    )
    cancel_promise(conn, case_id, as_of)
    held = hold_reminders(conn, case_id, "case_closed")
    changes = [f"case: {previous} → {RESOLVED}: {reason}"]
    changes += [f"{held} planned reminder(s) withdrawn"] if held else []
    owed = owed_by_currency(conn, case["customer_id"], as_of)
    if owed:
        amounts = ", ".join(money_text(total, code) for code, total in sorted(owed.items()))
        changes.append(
            f"the ledger still shows {amounts} owed: the next daily run opens a new case "
            "unless the ledger changes"
        )
    return ActionResult("Case closed", case_id, case["customer_id"], operator, changes)


def resend_message(
    conn: Connection, message_id: int, operator: str, note: str, as_of: date
) -> ActionResult:
    """Plan a message again, to today's address of its recipient, with today's amounts.

    The copy is planned for today and must be rendered before delivery sends it (the action
    flow renders it at once). Only invoices still owed are listed again.
    """
    original = conn.execute(select(MESSAGES).where(MESSAGES.c.id == message_id)).mappings().first()
    if original is None:
        raise ActionRefused(f"no message with id {message_id} (see `collectflow case ID`)")
    if original["status"] in ("planned", "sending"):
        raise ActionRefused(f"message {message_id} is {original['status']}: it has not gone yet")
    case = load_case(conn, original["case_id"])
    if case["status"] in CLOSED:
        raise ActionRefused(f"case {case['id']} is {case['status']}: nothing to remind of")
    if original["kind"] == "reminder" and case["status"] in PAUSED_STATES:
        raise ActionRefused(f"case {case['id']} is {case['status']}: its reminders are paused")
    address = original["to_address"]
    if original["kind"] == "reminder":
        address = conn.execute(
            select(CUSTOMERS.c.email).where(CUSTOMERS.c.customer_id == original["customer_id"])
        ).scalar_one()
    resends = conn.execute(
        select(func.count()).where(MESSAGES.c.key.like(f"resend:{message_id}:%"))
    ).scalar_one()
    new_id = conn.execute(
        insert(MESSAGES)
        .values(
            key=f"resend:{message_id}:{resends + 1}",
            **{
                column: original[column]
                for column in (
                    "case_id",
                    "customer_id",
                    "kind",
                    "stage",
                    "stage_index",
                    "template",
                    "locale",
                )
            },
            to_address=address,
            planned_on=as_of,
            status="planned",
        )
        .returning(MESSAGES.c.id)
    ).scalar_one()
    positions = invoice_positions(as_of)
    listed = conn.execute(
        insert(ITEMS).from_select(
            ["message_id", "invoice_id", "currency", "owed"],
            select(literal(new_id), positions.c.invoice_id, positions.c.currency, positions.c.owed)
            .join(ITEMS, ITEMS.c.invoice_id == positions.c.invoice_id)
            .where(
                ITEMS.c.message_id == message_id,
                positions.c.owed > 0,
                positions.c.status == "open",
            ),
        )
    ).rowcount
    if not listed:
        raise ActionRefused(
            f"nothing is owed any more on the invoices of message {message_id}: nothing to resend"
        )
    record_events(
        conn,
        select(literal(case["id"])),
        "message_resent",
        as_of,
        {"message": message_id, "copy": new_id, "to": address, "why": note or None},
        operator,
    )
    return ActionResult(
        "Message resent",
        case["id"],
        original["customer_id"],
        operator,
        [
            f"message {message_id} ({original['stage']}) planned again as message {new_id} "
            f"to {address}, listing {listed} invoice(s) still owed",
        ],
    )
