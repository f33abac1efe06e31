"""Step 2, diagnose: why each planned reminder's invoices are unpaid, and what that changes.

Plan calls `diagnose_planned` once the day's messages and their items exist. Each item gets a
cause from the latest failed payment attempt on its invoice within `diagnosis.lookback_days`:

- `order_issue`: the attempt failed for an order reason (e.g. product not received). The item
  is taken off the message (reminders pause for it), the case goes to the operator queue with
  reason `order_issue`, and the case log names the invoice. A message left with no item is
  suppressed with reason `order_issue`.
- `outage`: the attempt failed inside an open outage window of its gateway (flows/outage.py):
  the message is suppressed with reason `gateway_outage`; the apology comes when it ends.
  Once the window has ended such a failure counts as technical.
- `payment_failed_technical` / `payment_failed_customer`: the failure class of its code.
- `no_attempt`: no failed attempt: the ladder's own message.

A message takes the first cause its items have in `CAUSES` order (the least blaming wins, so
nobody reads "you have not paid" about a payment we failed to take) and that cause's template
from `diagnosis.templates`; `no_attempt` keeps the ladder's. Overpaid invoices go to the queue
for a refund (`refund_due`); they never reach a reminder, since only owing invoices have
balances. Everything is set-based SQL over the day's messages.
"""

from __future__ import annotations

from datetime import date, timedelta
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

from flows.balances import ZERO
from flows.diagnosis_policy import CAUSES
from flows.events import json_detail, record_events
from flows.failures import failure_class_sql
from flows.operator_queue import queue_cases
from flows.outage import APOLOGY_STAGE, detect_outages, plan_apologies
from flows.policy import Policy
from models import Invoice, Message, MessageItem, OutageWindow, Payment, QueueItem

INVOICES = Invoice.__table__
MESSAGES = Message.__table__
ITEMS = MessageItem.__table__
PAYMENTS = Payment.__table__
OUTAGES = OutageWindow.__table__
QUEUE = QueueItem.__table__


def diagnose_planned(conn: Connection, policy: Policy, as_of: date) -> None:
    """Diagnose today's planned reminders and act on the causes (see the module docstring)."""
    detect_outages(conn, policy.outage, as_of)
    todays = and_(
        MESSAGES.c.planned_on == as_of, MESSAGES.c.kind == "reminder", MESSAGES.c.cause.is_(None)
    )
    diagnose_items(conn, policy, as_of, select(MESSAGES.c.id).where(todays))
    set_message_causes(conn, policy, as_of, todays)
    pause_order_issues(conn, as_of)
    conn.execute(
        update(MESSAGES)
        .where(MESSAGES.c.planned_on == as_of, MESSAGES.c.status == "planned")
        .where(MESSAGES.c.cause == "outage", MESSAGES.c.stage != APOLOGY_STAGE)
        .values(status="suppressed", status_reason="gateway_outage")
    )
    plan_apologies(conn, policy, as_of)
    queue_refunds(conn, policy, as_of)


def item_cause(policy: Policy, as_of: date, invoice_id: ColumnElement[Any]) -> ColumnElement[str]:
    """The cause of non-payment of `invoice_id`, from its latest recent failed attempt."""
    since = as_of - timedelta(days=policy.diagnosis.lookback_days)
    failure = PAYMENTS.alias("failure")
    latest = (
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
    attempt = PAYMENTS.alias("attempt")
    latest_class = (
        select(failure_class_sql(policy.diagnosis, attempt.c.failure_code))
        .where(attempt.c.payment_id == latest)
        .scalar_subquery()
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
        (latest_class == "order", "order_issue"),
        (in_open_window, "outage"),
        (or_(in_window, latest_class == "technical"), "payment_failed_technical"),
        else_="payment_failed_customer",
    )


def diagnose_items(conn: Connection, policy: Policy, as_of: date, messages: Any) -> int:
    """Set the cause on every item of the selected messages."""
    return conn.execute(
        update(ITEMS)
        .where(ITEMS.c.message_id.in_(messages), ITEMS.c.cause.is_(None))
        .values(cause=item_cause(policy, as_of, ITEMS.c.invoice_id))
    ).rowcount


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


def pause_order_issues(conn: Connection, as_of: date) -> int:
    """Take order-issue items off today's messages, queue their cases, log the invoices."""
    order_items = and_(
        ITEMS.c.message_id == MESSAGES.c.id,
        ITEMS.c.cause == "order_issue",
        MESSAGES.c.planned_on == as_of,
    )
    affected = select(MESSAGES.c.case_id, json_detail("invoice_id", ITEMS.c.invoice_id)).where(
        order_items
    )
    record_events(conn, affected, "order_issue", as_of)
    queue_cases(
        conn,
        select(MESSAGES.c.case_id, MESSAGES.c.customer_id).where(order_items).distinct(),
        "order_issue",
        as_of,
    )
    conn.execute(
        delete(ITEMS).where(
            ITEMS.c.cause == "order_issue",
            ITEMS.c.message_id.in_(select(MESSAGES.c.id).where(MESSAGES.c.planned_on == as_of)),
        )
    )
    emptied = and_(
        MESSAGES.c.planned_on == as_of,
        MESSAGES.c.status == "planned",
        MESSAGES.c.cause == "order_issue",
        not_(exists().where(ITEMS.c.message_id == MESSAGES.c.id)),
    )
    return conn.execute(
        update(MESSAGES).where(emptied).values(status="suppressed", status_reason="order_issue")
    ).rowcount


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
    settled = func.coalesce(
        func.sum(
            case(
                (PAYMENTS.c.status == "succeeded", PAYMENTS.c.amount),
                (PAYMENTS.c.status == "refunded", -PAYMENTS.c.amount),
            )
        ),
        ZERO,
    )
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
    source = select(
        literal(None, QUEUE.c.case_id.type),
        over.c.customer_id,
        literal("refund_due"),
        over.c.invoice_id,
        literal(as_of, QUEUE.c.created_on.type),
    ).where(not_(already))
    return conn.execute(
        insert(QUEUE).from_select(
            ["case_id", "customer_id", "reason", "detail", "created_on"], source
        )
    ).rowcount
