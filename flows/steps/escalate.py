"""Step 6, escalate: cases still owing after the last stage and its grace period go to people.

Per ladder, the policy lists the steps: `operator_queue` (a queue item with the reason) and
`account_manager` (an internal email with the case summary, when the customer has one), then
`suspension`, `agency` and `write_off` (flows/cases/handoffs.py).
Disputed invoices also put their case in the queue, since a dispute needs a person, not a
reminder. Each step happens once per case: queue items and messages have unique keys.
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
    select,
)

from collectflow.flows.cases.events import record_events
from collectflow.flows.cases.handoffs import run_later_steps
from collectflow.flows.cases.lifecycle import ACTIVE, ESCALATED, transition
from collectflow.flows.cases.queue import queue_cases
from collectflow.flows.policy.document import Ladder, Policy
from collectflow.flows.steps.plan import MESSAGE_COLUMNS
from collectflow.models import (
    Case,
    Customer,
    InvoiceBalance,
    Message,
    MessageItem,
    days_between,
    insert_ignoring_conflicts,
)

CASES = Case.__table__
CUSTOMERS = Customer.__table__
BALANCES = InvoiceBalance.__table__
MESSAGES = Message.__table__
ITEMS = MessageItem.__table__

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
    """Escalate cases past their ladder's end and grace period; queue disputed cases."""
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
    planned = conn.execute(
        insert_ignoring_conflicts(conn.dialect.name, MESSAGES, ["key"], MESSAGE_COLUMNS, source)
    ).rowcount
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
