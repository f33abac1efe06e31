"""Step 3, plan: open and close cases, and plan the next stage due for each open case.

A case moves at most one stage per run, to the next stage of its ladder whose offset (from the
due date of its oldest remindable invoice) has passed, and only once the previous stage is at
least `min_gap_days` old and, for paced stages, `business_gap` business days old (firm 7,
final 10 by default) and `business_total` business days after the case's first message (the
gaps of the stages so far, added up: 17 for a final, even when the case entered at firm).
So a missed day never skips a stage nor sends two, catching up after downtime behaves like
the days that were missed, and a backlog never rushes a customer to a final notice.

Two exceptions, both logged: a pre-due stage whose invoice is already past due is skipped (a
"due soon" note after the due date would be wrong), and a case's first message enters at the
latest stage whose `entry_days` its oldest invoice has reached (a 200-day-old invoice does
not get the "slipped through the net" note).

Each message has the key `case:<id>:<stage>`, unique in the outbox, so a rerun of the same day
plans nothing twice. Everything here is set-based SQL; no per-customer Python.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date

from sqlalchemy import (
    Connection,
    String,
    and_,
    case,
    cast,
    exists,
    func,
    insert,
    literal,
    not_,
    or_,
    select,
    true,
    update,
)
from sqlalchemy.sql.expression import ColumnElement, Subquery

from collectflow.flows.cases.events import json_detail, record_events
from collectflow.flows.cases.lifecycle import ACTIVE, REMINDING, RESOLVED, transition
from collectflow.flows.cases.lifecycle import OPEN as OPEN_STATE
from collectflow.flows.ledger.balances import refresh_statistics
from collectflow.flows.ledger.calendar import days_elapsed
from collectflow.flows.mail.outbox import plan_messages
from collectflow.flows.policy.document import Policy
from collectflow.flows.steps.diagnose import follow_causes
from collectflow.models import (
    Case,
    Customer,
    InvoiceBalance,
    LadderStage,
    Message,
    MessageItem,
    days_between,
)

CASES = Case.__table__
CUSTOMERS = Customer.__table__
BALANCES = InvoiceBalance.__table__
STAGES = LadderStage.__table__
MESSAGES = Message.__table__
ITEMS = MessageItem.__table__

OPEN = CASES.c.closed_on.is_(None)


@dataclass(frozen=True)
class PlanReport:
    """What plan changed: cases opened and resolved, pre-due stages skipped, messages planned."""

    opened: int
    resolved: int
    skipped_pre_due: int
    planned: int


def plan(conn: Connection, policy: Policy, as_of: date) -> PlanReport:
    """Bring cases up to date with the ledger as of `as_of` and plan the stages now due.

    Needs the day prepared (ladders and calendar, steps/prepare.py), assessed and diagnosed.
    """
    resolved = resolve_settled_cases(conn, as_of)
    opened = open_cases(conn, policy, as_of)
    refresh_statistics(conn, "cases")  # PostgreSQL: the joins below need to know its new size
    skipped = skip_stale_pre_due(conn, as_of)
    enter_by_age(conn, as_of)
    planned = plan_next_stages(conn, as_of)
    refresh_statistics(conn, "messages")
    add_message_items(conn, as_of)
    refresh_statistics(conn, "message_items")
    follow_causes(conn, policy, as_of)  # the cause's template, disputes, outages (diagnose.py)
    advance_cases(conn, as_of)
    return PlanReport(opened=opened, resolved=resolved, skipped_pre_due=skipped, planned=planned)


def first_offset_of(ladder: ColumnElement[str]) -> ColumnElement[int]:
    """The offset of a ladder's first stage: when an invoice enters that ladder's scope."""
    return select(func.min(STAGES.c.offset_days)).where(STAGES.c.ladder == ladder).scalar_subquery()


def owes_in_scope(
    as_of: date, customer_id: ColumnElement[str], ladder: ColumnElement[str], remindable: bool
) -> ColumnElement[bool]:
    """The customer owes on an invoice that the ladder has reached by `as_of`."""
    conditions = [
        BALANCES.c.customer_id == customer_id,
        days_between(as_of, BALANCES.c.due_on) >= first_offset_of(ladder),
    ]
    if remindable:
        conditions.append(BALANCES.c.remindable)
    return exists().where(*conditions)


def resolve_settled_cases(conn: Connection, as_of: date) -> int:
    """Close open cases whose customer no longer owes anything the ladder covers."""
    settled = and_(OPEN, not_(owes_in_scope(as_of, CASES.c.customer_id, CASES.c.ladder, False)))
    return transition(
        conn,
        select(CASES.c.id).where(settled),
        RESOLVED,
        as_of,
        "resolved",
        why="nothing owed any more",
        values={"closed_on": as_of},
    )


def open_cases(conn: Connection, policy: Policy, as_of: date) -> int:
    """Open a case for each customer with a remindable invoice its segment's ladder reached."""
    ladder = case(
        {segment.name: segment.ladder for segment in policy.segments},
        value=CUSTOMERS.c.segment,
        else_=policy.segments[-1].ladder,
    )
    has_open_case = exists().where(CASES.c.customer_id == CUSTOMERS.c.customer_id, OPEN)
    source = select(
        CUSTOMERS.c.customer_id,
        literal(OPEN_STATE),
        func.coalesce(CUSTOMERS.c.segment, policy.segments[-1].name),
        ladder,
        literal(-1),
        literal(as_of, CASES.c.opened_on.type),
    ).where(not_(has_open_case), owes_in_scope(as_of, CUSTOMERS.c.customer_id, ladder, True))
    before = conn.execute(select(func.coalesce(func.max(CASES.c.id), 0))).scalar_one()
    result = conn.execute(
        insert(CASES).from_select(
            ["customer_id", "status", "segment", "ladder", "stage_index", "opened_on"], source
        )
    )
    record_events(
        conn,
        select(CASES.c.id, json_detail("segment", CASES.c.segment)).where(CASES.c.id > before),
        "opened",
        as_of,
    )
    return result.rowcount


def anchors() -> Subquery:
    """Per customer, the due date of the oldest remindable invoice: where ladders count from."""
    return (
        select(BALANCES.c.customer_id, func.min(BALANCES.c.due_on).label("anchor_due"))
        .where(BALANCES.c.remindable)
        .group_by(BALANCES.c.customer_id)
        .subquery("anchors")
    )


def skip_stale_pre_due(conn: Connection, as_of: date) -> int:
    """Move past pre-due stages of cases whose oldest remindable invoice is already overdue."""
    last_pre_due = (
        select(func.max(STAGES.c.stage_index))
        .where(STAGES.c.ladder == CASES.c.ladder, STAGES.c.offset_days < 0)
        .scalar_subquery()
    )
    overdue = exists().where(  # the oldest remindable invoice is past due
        BALANCES.c.customer_id == CASES.c.customer_id,
        BALANCES.c.remindable,
        BALANCES.c.due_on < as_of,
    )
    stale = and_(OPEN, CASES.c.status.in_(ACTIVE), CASES.c.stage_index < last_pre_due, overdue)
    record_events(conn, select(CASES.c.id).where(stale), "pre_due_skipped", as_of)
    result = conn.execute(update(CASES).where(stale).values(stage_index=last_pre_due))
    return result.rowcount


def enter_by_age(conn: Connection, as_of: date) -> int:
    """Move cases not yet written to just before the stage their oldest invoice's age enters."""
    anchor = anchors()
    age = (
        select(days_between(as_of, anchor.c.anchor_due))
        .where(anchor.c.customer_id == CASES.c.customer_id)
        .correlate(CASES)
        .scalar_subquery()
    )
    entry = (
        select(func.max(STAGES.c.stage_index))
        .where(STAGES.c.ladder == CASES.c.ladder, STAGES.c.entry_days <= age)
        .correlate(CASES)
        .scalar_subquery()
    )
    fresh = and_(
        OPEN,
        CASES.c.status.in_(ACTIVE),
        CASES.c.last_stage_on.is_(None),
        CASES.c.stage_index < entry - 1,
    )
    stage = (
        select(STAGES.c.stage)
        .where(STAGES.c.ladder == CASES.c.ladder, STAGES.c.stage_index == entry)
        .correlate(CASES)
        .scalar_subquery()
    )
    record_events(
        conn, select(CASES.c.id, json_detail("stage", stage)).where(fresh), "entered_by_age", as_of
    )
    return conn.execute(update(CASES).where(fresh).values(stage_index=entry - 1)).rowcount


def plan_next_stages(conn: Connection, as_of: date) -> int:
    """Insert one planned message per open case whose next stage is due today."""
    anchor = anchors()
    gap_ok = or_(
        CASES.c.fast_track,
        CASES.c.last_stage_on.is_(None),
        and_(
            days_between(as_of, CASES.c.last_stage_on) >= STAGES.c.min_gap_days,
            business_days_since(as_of, CASES.c.last_stage_on) >= STAGES.c.business_gap,
            business_days_since(as_of, first_message_on()) >= STAGES.c.business_total,
        ),
    )
    elapsed = days_elapsed(as_of, anchor.c.anchor_due, CUSTOMERS.c.country, STAGES.c.business_days)
    offset_reached = elapsed >= STAGES.c.offset_days
    key = literal("case:") + cast(CASES.c.id, String) + literal(":") + STAGES.c.stage
    source = (
        select(
            key,
            CASES.c.id,
            CASES.c.customer_id,
            literal("reminder"),
            STAGES.c.stage,
            STAGES.c.stage_index,
            STAGES.c.template,
            CUSTOMERS.c.locale,
            CUSTOMERS.c.email,
            literal(as_of, MESSAGES.c.planned_on.type),
            literal("planned"),
        )
        .select_from(
            CASES.join(
                STAGES,
                and_(
                    STAGES.c.ladder == CASES.c.ladder,
                    STAGES.c.stage_index == CASES.c.stage_index + 1,
                ),
            )
            .join(anchor, anchor.c.customer_id == CASES.c.customer_id)
            .join(CUSTOMERS, CUSTOMERS.c.customer_id == CASES.c.customer_id)
        )
        .where(
            OPEN,
            CASES.c.status.in_(ACTIVE),
            or_(CASES.c.fast_track, offset_reached),
            gap_ok,
        )
    )
    return plan_messages(conn, source)


def first_message_on() -> ColumnElement[date]:
    """The day the case's first reminder was planned (cases that entered the ladder late, by
    age, still wait the whole ladder's pacing before its later stages)."""
    return (
        select(func.min(MESSAGES.c.planned_on))
        .where(MESSAGES.c.case_id == CASES.c.id, MESSAGES.c.kind == "reminder")
        .correlate(CASES)
        .scalar_subquery()
    )


def business_days_since(as_of: date, since: ColumnElement[date]) -> ColumnElement[int]:
    """Business days from `since` to `as_of` in the case's customer's country (calendar days
    where the calendar has no row, so a gap is never waited for forever)."""
    country = (
        select(CUSTOMERS.c.country)
        .where(CUSTOMERS.c.customer_id == CASES.c.customer_id)
        .correlate(CASES)
        .scalar_subquery()
    )
    business = days_elapsed(as_of, since, country, true())
    return func.coalesce(business, days_between(as_of, since))


def add_message_items(conn: Connection, as_of: date) -> None:
    """List on each message planned today the invoices it asks for, with what is owed on each
    and why it is unpaid (its diagnosed cause).

    A pre-due stage lists invoices falling due within its offset; later stages list every
    overdue remindable invoice of the customer.
    """
    reach = case((STAGES.c.offset_days <= 0, STAGES.c.offset_days), else_=1)
    has_items = exists().where(ITEMS.c.message_id == MESSAGES.c.id)
    source = (
        select(
            MESSAGES.c.id,
            BALANCES.c.invoice_id,
            BALANCES.c.currency,
            BALANCES.c.owed,
            func.coalesce(BALANCES.c.cause, "no_attempt"),
        )
        .select_from(
            MESSAGES.join(CASES, CASES.c.id == MESSAGES.c.case_id)
            .join(
                STAGES,
                and_(
                    STAGES.c.ladder == CASES.c.ladder,
                    STAGES.c.stage_index == MESSAGES.c.stage_index,
                ),
            )
            .join(BALANCES, BALANCES.c.customer_id == MESSAGES.c.customer_id)
        )
        .where(
            MESSAGES.c.planned_on == as_of,
            MESSAGES.c.kind == "reminder",
            not_(has_items),
            BALANCES.c.remindable,
            days_between(as_of, BALANCES.c.due_on) >= reach,
        )
    )
    conn.execute(
        insert(ITEMS).from_select(["message_id", "invoice_id", "currency", "owed", "cause"], source)
    )


def advance_cases(conn: Connection, as_of: date) -> None:
    """Record on each case the stage planned for it today."""
    planned = and_(
        MESSAGES.c.case_id == CASES.c.id,
        MESSAGES.c.planned_on == as_of,
        MESSAGES.c.kind == "reminder",
        MESSAGES.c.stage_index > CASES.c.stage_index,
    )
    record_events(
        conn,
        select(CASES.c.id, json_detail("stage", MESSAGES.c.stage)).where(planned),
        "stage_planned",
        as_of,
    )
    conn.execute(
        update(CASES)
        .where(planned)
        .values(
            stage_index=MESSAGES.c.stage_index,
            stage=MESSAGES.c.stage,
            last_stage_on=as_of,
            fast_track=False,
        )
    )
    first_stage = and_(OPEN, CASES.c.status == OPEN_STATE, CASES.c.last_stage_on == as_of)
    reminding = select(CASES.c.id).where(first_stage)
    transition(conn, reminding, REMINDING, as_of, "reminding", why="first stage planned")
