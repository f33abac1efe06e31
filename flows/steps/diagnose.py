"""Step 2, diagnose: why each owed invoice is unpaid, and what that changes in the day's plan.

`diagnose` runs between assess and plan. It brings gateway outages up to date (steps/outage.py),
gives each owed invoice with a failed attempt in the last `diagnosis.lookback_days` its cause
(`invoice_balances.cause`; none means `no_attempt`), and queues refunds of overpaid invoices.
The cause comes from the latest failed payment attempt on the invoice:

- `order_issue`: the attempt failed for an order reason (e.g. product not received). It
  becomes a dispute that waits for a person: a `disputes` row naming the code and attempt
  (the invoice is not reminded of until it is resolved), the invoice taken off today's
  reminders, the case queued (`disputed`, the detail naming the order issue) and paused as
  `disputed` when nothing else is owed. The operator decides it like any dispute
  (`resolve-dispute`); once decided, that failure no longer counts as an order issue.
- `outage`: the attempt failed inside an open outage window of its gateway (flows/steps/outage.py):
  the message is suppressed with reason `gateway_outage`; the apology comes when it ends.
  Once the window has ended such a failure counts as technical.
- `payment_failed_technical` / `payment_failed_customer`: the failure class of its code.
- `no_attempt`: no failed attempt: the ladder's own message.

Plan lists each message's invoices with their causes, then calls `follow_causes`: a message
takes the first cause its items have in `CAUSES` order (the least blaming wins, so nobody reads
"you have not paid" about a payment we failed to take) and that cause's template from
`diagnosis.templates` (`no_attempt` keeps the ladder's); order issues become disputes; a
reminder during an outage is held, and each closed outage plans its apology. Overpaid invoices
go to the queue for a refund (`refund_due`); they never reach a reminder, since only owing
invoices have balances. Everything is set-based SQL.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Any

from sqlalchemy import (
    Connection,
    and_,
    case,
    delete,
    exists,
    func,
    insert,
    literal,
    not_,
    or_,
    select,
    update,
)
from sqlalchemy.sql.expression import ColumnElement

from collectflow.flows.cases.events import json_detail, record_events
from collectflow.flows.cases.lifecycle import ACTIVE, DISPUTED, transition
from collectflow.flows.cases.queue import queue_cases, queue_invoices, reopened
from collectflow.flows.ledger.balances import settled_amount
from collectflow.flows.ledger.failures import failure_class_sql
from collectflow.flows.mail.outbox import move
from collectflow.flows.policy.diagnosis import CAUSES
from collectflow.flows.policy.document import Policy
from collectflow.flows.steps.outage import APOLOGY_STAGE, detect_outages, plan_apologies
from collectflow.models import (
    Case,
    Dispute,
    Invoice,
    InvoiceBalance,
    Message,
    MessageItem,
    OutageWindow,
    Payment,
    QueueItem,
)

BALANCES = InvoiceBalance.__table__
CASES = Case.__table__
DISPUTES = Dispute.__table__
INVOICES = Invoice.__table__
MESSAGES = Message.__table__
ITEMS = MessageItem.__table__
PAYMENTS = Payment.__table__
OUTAGES = OutageWindow.__table__
QUEUE = QueueItem.__table__


@dataclass(frozen=True)
class DiagnosisReport:
    """What diagnose found: outage windows opened and closed today, owed invoices given a cause
    from a recent failed attempt, and overpaid invoices queued for a refund."""

    outages_opened: int
    outages_closed: int
    diagnosed: int
    refunds_queued: int


def diagnose(conn: Connection, policy: Policy, as_of: date) -> DiagnosisReport:
    """Step 2: outages as of the date, the cause of each owed invoice, refunds due."""
    opened, closed = detect_outages(conn, policy.outage, as_of)
    return DiagnosisReport(
        outages_opened=opened,
        outages_closed=closed,
        diagnosed=diagnose_balances(conn, policy, as_of),
        refunds_queued=queue_refunds(conn, policy, as_of),
    )


def diagnose_balances(conn: Connection, policy: Policy, as_of: date) -> int:
    """Give each owed invoice with a failed attempt in the lookback its cause; returns how many.

    Only those need the (correlated) look at their latest attempt: every other invoice is
    `no_attempt`, which plan reads from an empty cause.
    """
    since = as_of - timedelta(days=policy.diagnosis.lookback_days)
    recently_failed = select(PAYMENTS.c.invoice_id).where(
        PAYMENTS.c.status == "failed",
        PAYMENTS.c.attempted_on > since,
        PAYMENTS.c.attempted_on <= as_of,
    )
    return conn.execute(
        update(BALANCES)
        .where(BALANCES.c.invoice_id.in_(recently_failed))
        .values(cause=item_cause(policy, as_of, BALANCES.c.invoice_id))
    ).rowcount


def follow_causes(conn: Connection, policy: Policy, as_of: date) -> None:
    """What the causes change in today's plan, once plan has listed each message's invoices.

    Each of today's reminders takes its cause and that cause's template; order issues become
    disputes that wait for a person; a reminder whose invoice failed inside an open outage is
    held (`gateway_outage`); each outage closed since the last run plans its apologies.
    """
    todays = and_(
        MESSAGES.c.planned_on == as_of, MESSAGES.c.kind == "reminder", MESSAGES.c.cause.is_(None)
    )
    set_message_causes(conn, policy, as_of, todays)
    pause_order_issues(conn, policy, as_of)
    during_outage = and_(
        MESSAGES.c.planned_on == as_of,
        MESSAGES.c.cause == "outage",
        MESSAGES.c.stage != APOLOGY_STAGE,
    )
    move(conn, during_outage, "planned", "suppressed", "gateway_outage", datetime.now(UTC))
    plan_apologies(conn, policy, as_of)


def latest_failure(
    policy: Policy, as_of: date, invoice_id: ColumnElement[Any]
) -> ColumnElement[Any]:
    """The id of the latest failed attempt on `invoice_id` within the lookback, or NULL."""
    since = as_of - timedelta(days=policy.diagnosis.lookback_days)
    failure = PAYMENTS.alias("failure")
    return (
        select(failure.c.payment_id)
        .where(
            failure.c.invoice_id == invoice_id,
            failure.c.status == "failed",
            failure.c.attempted_on > since,
            failure.c.attempted_on <= as_of,
        )
        .order_by(failure.c.attempted_at.desc(), failure.c.payment_id.desc())
        .limit(1)
        .correlate_except(failure)  # to the invoice, however deep it is nested
        .scalar_subquery()
    )


def item_cause(policy: Policy, as_of: date, invoice_id: ColumnElement[Any]) -> ColumnElement[str]:
    """The cause of non-payment of `invoice_id`, from its latest recent failed attempt.

    An order failure already taken up as a dispute (one opened on or after the attempt) is
    not a new order issue: once an operator has decided it, the invoice stands and gets the
    ladder's own message (`no_attempt`), instead of reopening the same dispute every day.
    """
    latest = latest_failure(policy, as_of, invoice_id)
    attempt = PAYMENTS.alias("attempt")
    latest_class = (
        select(failure_class_sql(policy.diagnosis, attempt.c.failure_code))
        .where(attempt.c.payment_id == latest)
        .scalar_subquery()
    )
    taken_up = exists().where(
        attempt.c.payment_id == latest,
        DISPUTES.c.invoice_id == attempt.c.invoice_id,
        DISPUTES.c.opened_on >= attempt.c.attempted_on,
    )
    in_window = exists().where(
        attempt.c.payment_id == latest,
        OUTAGES.c.gateway == attempt.c.gateway,
        OUTAGES.c.started_on <= attempt.c.attempted_on,
        or_(OUTAGES.c.ended_on.is_(None), attempt.c.attempted_on <= OUTAGES.c.ended_on),
    )
    in_open_window = in_window.where(OUTAGES.c.ended_on.is_(None))
    return case(
        (latest.is_(None), "no_attempt"),
        (and_(latest_class == "order", taken_up), "no_attempt"),
        (latest_class == "order", "order_issue"),
        (in_open_window, "outage"),
        (or_(in_window, latest_class == "technical"), "payment_failed_technical"),
        else_="payment_failed_customer",
    )


def set_message_causes(
    conn: Connection, policy: Policy, as_of: date, selected: ColumnElement[bool]
) -> None:
    """Give each selected message the first cause of its items (`CAUSES` order, order issues
    last since they leave the message), then its cause's template if that cause has one."""
    order = [cause for cause in CAUSES if cause != "order_issue"] + ["order_issue"]
    cause = case(
        *(
            (exists().where(ITEMS.c.message_id == MESSAGES.c.id, ITEMS.c.cause == name), name)
            for name in order
        ),
    )
    conn.execute(update(MESSAGES).where(selected).values(cause=cause))
    templates = {
        name: template
        for name, template in policy.diagnosis.templates.model_dump().items()
        if name != "outage"  # outage messages are suppressed; the apology is its own message
    }
    conn.execute(
        update(MESSAGES)
        .where(
            MESSAGES.c.planned_on == as_of,
            MESSAGES.c.kind == "reminder",
            MESSAGES.c.subject.is_(None),
            MESSAGES.c.cause.in_(list(templates)),
        )
        .values(template=case(templates, value=MESSAGES.c.cause))
    )


def pause_order_issues(conn: Connection, policy: Policy, as_of: date) -> int:
    """Turn each order issue on today's reminders into a dispute that waits for a person.

    Per invoice: a `disputes` row whose reason names the failure code and the attempt (so the
    invoice is not remindable until an operator resolves it), an `order_issue` event in the
    case log, and the invoice taken off today's reminders (one left with none is suppressed,
    `order_issue`). Per case: an operator queue item `disputed` whose detail is that reason,
    and, when the customer owes nothing else a reminder could ask for, the case waits as
    `disputed`, exactly as after an operator's "mark dispute". Returns the disputes opened.
    """
    today = select(MESSAGES.c.id).where(
        MESSAGES.c.planned_on == as_of, MESSAGES.c.kind == "reminder"
    )
    order_items = and_(ITEMS.c.message_id.in_(today), ITEMS.c.cause == "order_issue")
    opened = _open_order_disputes(conn, policy, as_of, order_items)
    on_messages = select(MESSAGES.c.case_id).join(ITEMS, ITEMS.c.message_id == MESSAGES.c.id)
    cases = on_messages.where(order_items)
    record_events(
        conn,
        on_messages.add_columns(json_detail("invoice_id", ITEMS.c.invoice_id)).where(order_items),
        "order_issue",
        as_of,
    )
    _queue_order_disputes(conn, cases, as_of)
    _pause_cases_with_nothing_else(conn, cases, as_of)
    conn.execute(delete(ITEMS).where(order_items))
    emptied = and_(
        MESSAGES.c.planned_on == as_of,
        MESSAGES.c.cause == "order_issue",
        not_(exists().where(ITEMS.c.message_id == MESSAGES.c.id)),
    )
    move(conn, emptied, "planned", "suppressed", "order_issue", datetime.now(UTC))
    return opened


def _open_order_disputes(
    conn: Connection, policy: Policy, as_of: date, order_items: ColumnElement[bool]
) -> int:
    """One open dispute per order-issue invoice (unless it already has one)."""
    attempt = PAYMENTS.alias("attempt")
    reason = (
        literal("order issue: ")
        + func.coalesce(attempt.c.failure_code, "")
        + literal(" (payment ")
        + attempt.c.payment_id
        + literal(")")
    )
    open_dispute = exists().where(
        DISPUTES.c.invoice_id == ITEMS.c.invoice_id, DISPUTES.c.resolved_on.is_(None)
    )
    disputes = (
        select(
            MESSAGES.c.case_id,
            ITEMS.c.invoice_id,
            reason,
            literal(as_of, DISPUTES.c.opened_on.type),
        )
        .join_from(ITEMS, MESSAGES, ITEMS.c.message_id == MESSAGES.c.id)
        .join(attempt, attempt.c.payment_id == latest_failure(policy, as_of, ITEMS.c.invoice_id))
        .where(order_items, not_(open_dispute))
        .distinct()
    )
    return conn.execute(
        insert(DISPUTES).from_select(["case_id", "invoice_id", "reason", "opened_on"], disputes)
    ).rowcount


def _queue_order_disputes(conn: Connection, cases: Any, as_of: date) -> None:
    """Queue the cases as `disputed` (what the operator must do: decide the dispute, which
    resolves the item), the detail naming the order issue and its invoice."""
    conn.execute(
        update(QUEUE)
        .where(
            QUEUE.c.case_id.in_(cases),
            QUEUE.c.reason == "disputed",
            QUEUE.c.resolved_on.is_not(None),
        )
        .values(**reopened(as_of), detail=None)
    )
    queue_cases(
        conn,
        select(CASES.c.id, CASES.c.customer_id).where(CASES.c.id.in_(cases)),
        "disputed",
        as_of,
    )
    todays_reason = (
        select(DISPUTES.c.reason + literal(" on ") + DISPUTES.c.invoice_id)
        .where(DISPUTES.c.case_id == QUEUE.c.case_id, DISPUTES.c.opened_on == as_of)
        .order_by(DISPUTES.c.id)
        .limit(1)
        .scalar_subquery()
    )
    conn.execute(
        update(QUEUE)
        .where(QUEUE.c.case_id.in_(cases), QUEUE.c.reason == "disputed", QUEUE.c.detail.is_(None))
        .values(detail=todays_reason)
    )


def _pause_cases_with_nothing_else(conn: Connection, cases: Any, as_of: date) -> int:
    """Move to `disputed` the active cases whose customer owes nothing a reminder may still
    ask for (every remaining invoice is disputed)."""
    under_dispute = select(DISPUTES.c.invoice_id).where(DISPUTES.c.resolved_on.is_(None))
    remindable_left = exists().where(
        BALANCES.c.customer_id == CASES.c.customer_id,
        BALANCES.c.remindable,
        BALANCES.c.invoice_id.not_in(under_dispute),
    )
    waiting = and_(CASES.c.id.in_(cases), CASES.c.status.in_(ACTIVE), not_(remindable_left))
    return transition(
        conn,
        select(CASES.c.id).where(waiting),
        DISPUTED,
        as_of,
        "dispute_opened",
        why="order issue found by diagnosis",
        values={
            "paused_until": None,
            "resume_status": func.coalesce(CASES.c.resume_status, CASES.c.status),
        },
    )


def overpaid_invoices(policy: Policy, as_of: date) -> Any:
    """Invoices paid more than their amount (twice, or over), among those with a succeeded
    payment in the lookback window: (invoice id, customer id, amount over)."""
    since = as_of - timedelta(days=policy.diagnosis.lookback_days)
    recent = (
        select(PAYMENTS.c.invoice_id)
        .where(
            PAYMENTS.c.status == "succeeded",
            PAYMENTS.c.attempted_on > since,
            PAYMENTS.c.attempted_on <= as_of,
        )
        .distinct()
    )
    settled = settled_amount()
    return (
        select(INVOICES.c.invoice_id, INVOICES.c.customer_id)
        .join(PAYMENTS, PAYMENTS.c.invoice_id == INVOICES.c.invoice_id)
        .where(
            INVOICES.c.invoice_id.in_(recent),
            INVOICES.c.status != "void",
            PAYMENTS.c.attempted_on <= as_of,
        )
        .group_by(INVOICES.c.invoice_id, INVOICES.c.customer_id, INVOICES.c.amount)
        .having(settled > INVOICES.c.amount)
    )


def queue_refunds(conn: Connection, policy: Policy, as_of: date) -> int:
    """Put each overpaid invoice in the operator queue once (`refund_due`, detail = invoice id).

    A refund is not part of a collection case (the customer usually owes nothing), so the item
    has no case; one per invoice, even for a customer with several.
    """
    over = overpaid_invoices(policy, as_of).subquery("overpaid")
    already = exists().where(
        QUEUE.c.reason == "refund_due",
        QUEUE.c.customer_id == over.c.customer_id,
        QUEUE.c.detail == over.c.invoice_id,
    )
    return queue_invoices(
        conn, "refund_due", over.c.customer_id, over.c.invoice_id, not_(already), as_of
    )
