"""Step 7, outcomes: credit each payment to the message that preceded it, then judge messages.

Attribution is last touch: a succeeded payment on an invoice goes to the latest sent message
(reminder or campaign) that asked for that invoice, sent before the payment (an earlier
business date, or the same date at an earlier instant) and at most `attribution_window_days`
before it. The earliest such message is kept too (first touch), for the report. Recovered
money per invoice is capped at what the message asked for. Everything is recomputed from the
ledger as of the run date, so payments imported late (a backfill) are credited correctly on
the next run.

A message's outcome, first match wins (docs/metrics.md explains the order):

1. `bounced`: it never reached the customer, so nothing after it is its doing;
2. `paid`: everything it asked for came in, credited to it;
3. `partial`: some of it came in (how much: `message_items.recovered`, per invoice);
4. `disputed`: the customer opened a dispute on the case after it, within the window;
5. `promised`: the customer promised to pay after it, within the window;
6. `opted_out`: the customer opted out of reminders after it, within the window;
7. `no_response`: nothing of the above once its window closed.

Responses (dispute, promise, opt-out) are attributed like payments: to the latest message sent
on or before the day they happened. `paid` and `bounced` are final when they happen; any
other outcome is written once the window has closed. No row means the window is still open.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, timedelta

from sqlalchemy import (
    Connection,
    Integer,
    and_,
    case,
    cast,
    delete,
    func,
    insert,
    literal,
    or_,
    select,
    type_coerce,
    union_all,
    update,
)
from sqlalchemy.sql.expression import ColumnElement, Subquery

from collectflow.flows.ledger.balances import ZERO
from collectflow.models import (
    ContactBlock,
    Dispute,
    Message,
    MessageItem,
    Money,
    Outcome,
    Payment,
    PaymentAttribution,
    Promise,
    days_between,
)

MESSAGES = Message.__table__
ITEMS = MessageItem.__table__
PAYMENTS = Payment.__table__
ATTRIBUTIONS = PaymentAttribution.__table__
OUTCOMES = Outcome.__table__
PROMISES = Promise.__table__
DISPUTES = Dispute.__table__
BLOCKS = ContactBlock.__table__

MEASURED_KINDS = ("reminder", "campaign")
"""Messages to customers whose effect is measured; internal mail is not."""
REACHED = ("sent", "bounced")
"""Statuses of messages that went out (a bounce comes back after the send)."""


@dataclass(frozen=True)
class OutcomeReport:
    """Messages per outcome after this run, and payments credited to a message."""

    outcomes: dict[str, int]
    attributed_payments: int


def record_outcomes(conn: Connection, as_of: date, window_days: int) -> OutcomeReport:
    """Recompute attributions, recovered amounts and outcomes as of `as_of`."""
    attributed = attribute_payments(conn, as_of, window_days)
    update_recovered(conn)
    decide_outcomes(conn, as_of, window_days)
    counts = conn.execute(
        select(OUTCOMES.c.outcome, func.count()).group_by(OUTCOMES.c.outcome)
    ).all()
    return OutcomeReport(outcomes=dict(counts), attributed_payments=attributed)


def touch_on() -> ColumnElement[date]:
    """The day a message touched the customer: sent, or (a bounce without a send date) planned."""
    return func.coalesce(MESSAGES.c.sent_on, MESSAGES.c.planned_on)


def measured() -> ColumnElement[bool]:
    """Messages whose outcome is measured: reminders and campaigns that went out."""
    return and_(MESSAGES.c.kind.in_(MEASURED_KINDS), MESSAGES.c.status.in_(REACHED))


def attribute_payments(conn: Connection, as_of: date, window_days: int) -> int:
    """Rebuild `payment_attributions`: each succeeded payment to its last and first touch."""
    sent_before = or_(
        MESSAGES.c.sent_on < PAYMENTS.c.attempted_on,
        and_(
            MESSAGES.c.sent_on == PAYMENTS.c.attempted_on,
            MESSAGES.c.sent_at < PAYMENTS.c.attempted_at,
        ),
    )

    def ranked(*order: ColumnElement[object]) -> ColumnElement[int]:
        return func.row_number().over(partition_by=PAYMENTS.c.payment_id, order_by=order)

    candidates = (
        select(
            PAYMENTS.c.payment_id,
            MESSAGES.c.id.label("message_id"),
            PAYMENTS.c.invoice_id,
            PAYMENTS.c.amount,
            PAYMENTS.c.attempted_on,
            ranked(
                MESSAGES.c.sent_on.desc(), MESSAGES.c.sent_at.desc(), MESSAGES.c.id.desc()
            ).label("last"),
            ranked(MESSAGES.c.sent_on, MESSAGES.c.sent_at, MESSAGES.c.id).label("first"),
        )
        .select_from(
            PAYMENTS.join(ITEMS, ITEMS.c.invoice_id == PAYMENTS.c.invoice_id).join(
                MESSAGES, MESSAGES.c.id == ITEMS.c.message_id
            )
        )
        .where(
            PAYMENTS.c.status == "succeeded",
            PAYMENTS.c.attempted_on <= as_of,
            MESSAGES.c.status == "sent",
            MESSAGES.c.kind.in_(MEASURED_KINDS),
            sent_before,
            days_between(PAYMENTS.c.attempted_on, MESSAGES.c.sent_on) <= window_days,
        )
        .subquery("candidates")
    )
    first = candidates.alias("first_touch")
    touches = (
        select(
            candidates.c.payment_id,
            candidates.c.message_id,
            candidates.c.invoice_id,
            candidates.c.amount,
            candidates.c.attempted_on,
            first.c.message_id,
        )
        .select_from(
            candidates.join(
                first, and_(first.c.payment_id == candidates.c.payment_id, first.c.first == 1)
            )
        )
        .where(candidates.c.last == 1)
    )
    conn.execute(delete(ATTRIBUTIONS))
    columns = ["payment_id", "message_id", "invoice_id", "amount", "paid_on", "first_message_id"]
    return conn.execute(insert(ATTRIBUTIONS).from_select(columns, touches)).rowcount


def update_recovered(conn: Connection) -> None:
    """Set each message item's recovered amount (capped at what it asked) and last paid date."""
    credited = (
        select(
            ATTRIBUTIONS.c.message_id,
            ATTRIBUTIONS.c.invoice_id,
            type_coerce(func.sum(ATTRIBUTIONS.c.amount), Money).label("paid"),
            func.max(ATTRIBUTIONS.c.paid_on).label("last_paid_on"),
        )
        .group_by(ATTRIBUTIONS.c.message_id, ATTRIBUTIONS.c.invoice_id)
        .subquery("credited")
    )
    conn.execute(
        update(ITEMS).where(ITEMS.c.recovered != ZERO).values(recovered=ZERO, last_paid_on=None)
    )
    matched = and_(
        credited.c.message_id == ITEMS.c.message_id, credited.c.invoice_id == ITEMS.c.invoice_id
    )
    conn.execute(
        update(ITEMS)
        .where(matched)
        .values(
            recovered=case((credited.c.paid < ITEMS.c.owed, credited.c.paid), else_=ITEMS.c.owed),
            last_paid_on=credited.c.last_paid_on,
        )
    )


def responses(as_of: date, window_days: int) -> Subquery:
    """Per message, whether a dispute, a promise or an opt-out followed it (last touch).

    Each response goes to the latest message that went out on or before its day, at most
    `window_days` before it, on the same case (disputes, promises) or to the same customer
    (opt-outs).
    """
    sources = [
        (DISPUTES.c.id, DISPUTES.c.case_id, MESSAGES.c.case_id, DISPUTES.c.opened_on, "disputed"),
        (PROMISES.c.id, PROMISES.c.case_id, MESSAGES.c.case_id, PROMISES.c.made_on, "promised"),
        (
            BLOCKS.c.value,
            BLOCKS.c.value,
            MESSAGES.c.customer_id,
            BLOCKS.c.at,
            "opted_out",
        ),
    ]
    latest = (MESSAGES.c.sent_on.desc(), MESSAGES.c.id.desc())
    ranked = []
    for response_id, owner, message_owner, on, kind in sources:
        source_table = response_id.table
        since = days_between(on, MESSAGES.c.sent_on)
        query = (
            select(
                MESSAGES.c.id.label("message_id"),
                literal(kind).label("kind"),
                func.row_number().over(partition_by=response_id, order_by=latest).label("touch"),
            )
            .select_from(source_table.join(MESSAGES, message_owner == owner))
            .where(measured(), MESSAGES.c.status == "sent", since >= 0, since <= window_days)
        )
        if source_table is BLOCKS:
            query = query.where(
                BLOCKS.c.scope == "customer",
                BLOCKS.c.reason == "opted_out",
                days_between(as_of, BLOCKS.c.at) >= 0,
            )
        else:
            query = query.where(on <= as_of)
        ranked.append(query)
    every = union_all(*ranked).subquery("every_response")

    def flag(kind: str) -> ColumnElement[int]:
        return func.max(case((every.c.kind == kind, 1), else_=0)).label(kind)

    return (
        select(every.c.message_id, flag("disputed"), flag("promised"), flag("opted_out"))
        .where(every.c.touch == 1)
        .group_by(every.c.message_id)
        .subquery("responses")
    )


def decide_outcomes(conn: Connection, as_of: date, window_days: int) -> None:
    """Rebuild `outcomes` for measured messages, in the order of the module docstring."""
    recovered = func.sum(ITEMS.c.recovered)
    asked = func.sum(ITEMS.c.owed)
    firsts = (
        select(ATTRIBUTIONS.c.message_id, func.min(ATTRIBUTIONS.c.paid_on).label("first_paid_on"))
        .group_by(ATTRIBUTIONS.c.message_id)
        .subquery("firsts")
    )
    answered = responses(as_of, window_days)
    first_paid = firsts.c.first_paid_on
    last_paid = func.max(ITEMS.c.last_paid_on)
    bounced = MESSAGES.c.status == "bounced"
    paid = and_(recovered >= asked, recovered > ZERO)

    def responded(kind: str) -> ColumnElement[bool]:
        return func.coalesce(func.max(answered.c[kind]), 0) == 1

    outcome = case(
        (bounced, "bounced"),
        (paid, "paid"),
        (recovered > ZERO, "partial"),
        (responded("disputed"), "disputed"),
        (responded("promised"), "promised"),
        (responded("opted_out"), "opted_out"),
        else_="no_response",
    )
    days_to_pay = case(
        (recovered >= asked, days_between(last_paid, MESSAGES.c.sent_on)),
        else_=days_between(first_paid, MESSAGES.c.sent_on),
    )
    window_closed = touch_on() < as_of - timedelta(days=window_days)
    source = (
        select(
            MESSAGES.c.id,
            outcome,
            first_paid,
            case((and_(recovered > ZERO, ~bounced), cast(days_to_pay, Integer))),
            literal(as_of, OUTCOMES.c.decided_on.type),
        )
        .select_from(
            MESSAGES.join(ITEMS, ITEMS.c.message_id == MESSAGES.c.id)
            .outerjoin(firsts, firsts.c.message_id == MESSAGES.c.id)
            .outerjoin(answered, answered.c.message_id == MESSAGES.c.id)
        )
        .where(measured())
        .group_by(MESSAGES.c.id, MESSAGES.c.status, MESSAGES.c.sent_on, touch_on(), first_paid)
        .having(or_(bounced, paid, window_closed))
    )
    conn.execute(delete(OUTCOMES))
    conn.execute(
        insert(OUTCOMES).from_select(
            ["message_id", "outcome", "first_paid_on", "days_to_pay", "decided_on"], source
        )
    )
