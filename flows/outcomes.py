"""Step 7, outcomes: credit each payment to the message that preceded it, then judge messages.

Attribution is last touch: a succeeded payment on an invoice goes to the latest sent reminder
that asked for that invoice, sent before the payment (an earlier business date, or the same
date at an earlier instant) and at most `attribution_window_days` before it. Recovered money
per invoice is capped at what the message asked for. Everything is recomputed from the ledger
as of the run date, so payments imported late (a backfill) are credited correctly on the next
run.

A message's outcome is `paid` (everything it asked for came in), `partial`, or, once its window
has closed with nothing, `no_response`. No row means the window is still open.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, timedelta

from sqlalchemy import (
    Connection,
    and_,
    case,
    delete,
    func,
    insert,
    literal,
    or_,
    select,
    type_coerce,
    update,
)

from flows.balances import ZERO
from models import Message, MessageItem, Money, Outcome, Payment, PaymentAttribution, days_between

MESSAGES = Message.__table__
ITEMS = MessageItem.__table__
PAYMENTS = Payment.__table__
ATTRIBUTIONS = PaymentAttribution.__table__
OUTCOMES = Outcome.__table__


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


def attribute_payments(conn: Connection, as_of: date, window_days: int) -> int:
    """Rebuild `payment_attributions`: each succeeded payment to its last-touch message."""
    sent_before = or_(
        MESSAGES.c.sent_on < PAYMENTS.c.attempted_on,
        and_(
            MESSAGES.c.sent_on == PAYMENTS.c.attempted_on,
            MESSAGES.c.sent_at < PAYMENTS.c.attempted_at,
        ),
    )
    rank = (
        func.row_number()
        .over(
            partition_by=PAYMENTS.c.payment_id,
            order_by=(MESSAGES.c.sent_on.desc(), MESSAGES.c.id.desc()),
        )
        .label("touch")
    )
    candidates = (
        select(
            PAYMENTS.c.payment_id,
            MESSAGES.c.id.label("message_id"),
            PAYMENTS.c.invoice_id,
            PAYMENTS.c.amount,
            PAYMENTS.c.attempted_on,
            rank,
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
            MESSAGES.c.kind == "reminder",
            sent_before,
            days_between(PAYMENTS.c.attempted_on, MESSAGES.c.sent_on) <= window_days,
        )
        .subquery("candidates")
    )
    last_touch = select(
        candidates.c.payment_id,
        candidates.c.message_id,
        candidates.c.invoice_id,
        candidates.c.amount,
        candidates.c.attempted_on,
    ).where(candidates.c.touch == 1)
    conn.execute(delete(ATTRIBUTIONS))
    return conn.execute(
        insert(ATTRIBUTIONS).from_select(
            ["payment_id", "message_id", "invoice_id", "amount", "paid_on"], last_touch
        )
    ).rowcount


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


def decide_outcomes(conn: Connection, as_of: date, window_days: int) -> None:
    """Rebuild `outcomes` for sent reminders: paid, partial, or no_response once closed."""
    recovered = func.sum(ITEMS.c.recovered)
    asked = func.sum(ITEMS.c.owed)
    firsts = (
        select(ATTRIBUTIONS.c.message_id, func.min(ATTRIBUTIONS.c.paid_on).label("first_paid_on"))
        .group_by(ATTRIBUTIONS.c.message_id)
        .subquery("firsts")
    )
    first_paid = firsts.c.first_paid_on
    last_paid = func.max(ITEMS.c.last_paid_on)
    outcome = case(
        (and_(recovered >= asked, recovered > ZERO), "paid"),
        (recovered > ZERO, "partial"),
        else_="no_response",
    )
    days_to_pay = case(
        (recovered >= asked, days_between(last_paid, MESSAGES.c.sent_on)),
        else_=days_between(first_paid, MESSAGES.c.sent_on),
    )
    window_closed = MESSAGES.c.sent_on < as_of - timedelta(days=window_days)
    source = (
        select(
            MESSAGES.c.id,
            outcome,
            first_paid,
            case((recovered > ZERO, days_to_pay)),
            literal(as_of, OUTCOMES.c.decided_on.type),
        )
        .select_from(
            MESSAGES.join(ITEMS, ITEMS.c.message_id == MESSAGES.c.id).outerjoin(
                firsts, firsts.c.message_id == MESSAGES.c.id
            )
        )
        .where(MESSAGES.c.status == "sent", MESSAGES.c.kind == "reminder")
        .group_by(MESSAGES.c.id, MESSAGES.c.sent_on, first_paid)
        .having(or_(recovered > ZERO, window_closed))
    )
    conn.execute(delete(OUTCOMES))
    conn.execute(
        insert(OUTCOMES).from_select(
            ["message_id", "outcome", "first_paid_on", "days_to_pay", "decided_on"], source
        )
    )
