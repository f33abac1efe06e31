"""Step 6, escalate: cases still owing after the last stage and its grace period go to people.

The grace counts calendar days (`grace_days`) and, at least, business days
(`min_business_days`, 7 by default), so a final notice always has working days to be answered.

Per ladder, the policy lists the steps: `operator_queue` (a queue item with the reason) and
`account_manager` (an internal email with the case summary, when the customer has one), then
`suspension`, `agency` and `write_off` (flows/cases/handoffs.py).
Disputed invoices also put their case in the queue, since a dispute needs a person, not a
reminder; those of a customer with no open case are queued per invoice. Each step happens
once per case: queue items and messages have unique keys.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import date

from sqlalchemy import (
    Connection,
    String,
    and_,
    cast,
    exists,
    func,
    insert,
    literal,
    not_,
    or_,
    select,
    update,
)

from collectflow.flows.cases.events import record_events
from collectflow.flows.cases.handoffs import run_later_steps
from collectflow.flows.cases.lifecycle import ACTIVE, ESCALATED, transition
from collectflow.flows.cases.queue import queue_cases, queue_invoices
from collectflow.flows.mail.outbox import plan_messages
from collectflow.flows.policy.document import Ladder, Policy
from collectflow.flows.steps.plan import business_days_since
from collectflow.models import (
    Case,
    Customer,
    InvoiceBalance,
    Message,
    MessageItem,
    QueueItem,
    days_between,
)

CASES = Case.__table__
CUSTOMERS = Customer.__table__
BALANCES = InvoiceBalance.__table__
MESSAGES = Message.__table__
ITEMS = MessageItem.__table__
QUEUE = QueueItem.__table__

OPEN = CASES.c.closed_on.is_(None)
ESCALATION_TEMPLATE = "escalation"


@dataclass(frozen=True)
class EscalationReport:
    """Cases escalated today, account managers told, cases queued for a dispute, and the
    further steps done (suspension, agency, write_off: cases per step)."""

    escalated: int
    account_manager_emails: int
    disputes_queued: int
    steps: dict[str, int] = field(default_factory=dict)


def escalate(conn: Connection, policy: Policy, as_of: date) -> EscalationReport:
    """Escalate cases past their ladder's end and grace period; queue disputes."""
    queue_uncased_disputes(conn, as_of)
    escalated = sum(
        escalate_ladder(conn, name, ladder, as_of) for name, ladder in policy.ladders.items()
    )
    notify = [
        n for n, ladder in policy.ladders.items() if "account_manager" in ladder.escalation.steps
    ]
    emails = plan_account_manager_emails(conn, as_of, notify) if notify else 0
    return EscalationReport(
        escalated=escalated,
        account_manager_emails=emails,
        disputes_queued=queue_disputes(conn, as_of),
        steps=run_later_steps(conn, policy, as_of),
    )


def escalate_ladder(conn: Connection, name: str, ladder: Ladder, as_of: date) -> int:
    """Escalate the open cases of one ladder that are done with its last stage and grace."""
    due = and_(
        OPEN,
        CASES.c.status.in_(ACTIVE),
        CASES.c.ladder == name,
        CASES.c.stage_index == len(ladder.stages) - 1,
        days_between(as_of, CASES.c.last_stage_on) >= ladder.escalation.grace_days,
        business_days_since(as_of, CASES.c.last_stage_on) >= ladder.escalation.min_business_days,
    )
    escalated = transition(
        conn,
        select(CASES.c.id).where(due),
        ESCALATED,
        as_of,
        "escalated",
        why="the ladder's last stage and grace period passed with money still owed",
        data={"ladder": name},
        values={"escalated_on": as_of},
    )
    if "operator_queue" in ladder.escalation.steps:
        today = and_(OPEN, CASES.c.ladder == name, CASES.c.escalated_on == as_of)
        queue_cases(conn, select(CASES.c.id, CASES.c.customer_id).where(today), "escalated", as_of)
    return escalated


def plan_account_manager_emails(conn: Connection, as_of: date, ladders: list[str]) -> int:
    """Plan an internal case summary to the account manager of each case escalated today."""
    key = literal("case:") + cast(CASES.c.id, String) + literal(":escalation")
    source = (
        select(
            key,
            CASES.c.id,
            CASES.c.customer_id,
            literal("internal"),
            literal(ESCALATION_TEMPLATE),
            CASES.c.stage_index + 1,
            literal(ESCALATION_TEMPLATE),
            literal("en"),
            CUSTOMERS.c.account_manager_email,
            literal(as_of, MESSAGES.c.planned_on.type),
            literal("planned"),
        )
        .select_from(CASES.join(CUSTOMERS, CUSTOMERS.c.customer_id == CASES.c.customer_id))
        .where(
            CASES.c.escalated_on == as_of,
            CASES.c.ladder.in_(ladders),
            OPEN,
            func.coalesce(func.trim(CUSTOMERS.c.account_manager_email), "") != "",
        )
    )
    before = conn.execute(select(func.coalesce(func.max(MESSAGES.c.id), 0))).scalar_one()
    planned = plan_messages(conn, source)
    items = select(
        MESSAGES.c.id, BALANCES.c.invoice_id, BALANCES.c.currency, BALANCES.c.owed
    ).where(
        MESSAGES.c.id > before,
        MESSAGES.c.kind == "internal",
        BALANCES.c.customer_id == MESSAGES.c.customer_id,
    )
    conn.execute(insert(ITEMS).from_select(["message_id", "invoice_id", "currency", "owed"], items))
    record_events(
        conn,
        select(MESSAGES.c.case_id).where(MESSAGES.c.id > before, MESSAGES.c.kind == "internal"),
        "account_manager_notified",
        as_of,
    )
    return planned


def queue_disputes(conn: Connection, as_of: date) -> int:
    """Queue every open case whose customer has a disputed invoice."""
    disputed = exists().where(
        BALANCES.c.customer_id == CASES.c.customer_id, BALANCES.c.remindable.is_(False)
    )
    return queue_cases(
        conn, select(CASES.c.id, CASES.c.customer_id).where(OPEN, disputed), "disputed", as_of
    )


def queue_uncased_disputes(conn: Connection, as_of: date) -> int:
    """Queue each disputed invoice (ledger status `disputed`, money owed) of a customer with
    no open case, once per invoice (reason `disputed`, detail = invoice id, no case).

    Customers with an open case are queued per case by escalate (`queue_disputes`); without
    this, a customer whose only debt is disputed would never reach a person. Such an item is
    done once its invoice is no longer disputed and owing, or once the customer has an open
    case (whose own `disputed` item takes over).
    """
    disputed = select(BALANCES.c.invoice_id).where(BALANCES.c.remindable.is_(False))
    uncased = QUEUE.c.case_id.is_(None)
    cased = select(CASES.c.customer_id).where(CASES.c.closed_on.is_(None))
    conn.execute(
        update(QUEUE)
        .where(uncased, QUEUE.c.reason == "disputed", QUEUE.c.resolved_on.is_(None))
        .where(or_(QUEUE.c.detail.not_in(disputed), QUEUE.c.customer_id.in_(cased)))
        .values(resolved_on=as_of)
    )
    already = exists().where(
        uncased,
        QUEUE.c.reason == "disputed",
        QUEUE.c.detail == BALANCES.c.invoice_id,
        QUEUE.c.resolved_on.is_(None),
    )
    new = and_(BALANCES.c.remindable.is_(False), BALANCES.c.customer_id.not_in(cased))
    return queue_invoices(
        conn,
        "disputed",
        BALANCES.c.customer_id,
        BALANCES.c.invoice_id,
        and_(new, not_(already)),
        as_of,
    )
