"""The contact step: which of today's planned messages may go, and from when.

After plan, today's reminders to customers who must not or need not be written to are
suppressed with the reason (`do_not_contact`, no email, autopay with no failed charge), then
the contact rules (flows/mail/contact.py) hold messages to opted-out customers and bounced
addresses and give the rest their sending window (quiet hours). Campaigns apply the same
rules to their own messages (`apply_contact_rules`).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, date, datetime

from sqlalchemy import (
    Connection,
    and_,
    case,
    exists,
    func,
    literal,
    not_,
    select,
    update,
)

from collectflow.flows.mail.contact import (
    OPTED_OUT,
    address_bounced,
    opted_out,
    to_customer,
    window_start,
)
from collectflow.flows.mail.outbox import move
from collectflow.flows.policy.contact import QuietHours
from collectflow.flows.policy.document import Policy
from collectflow.models import Customer, Message, MessageItem, Payment

MESSAGES = Message.__table__
CUSTOMERS = Customer.__table__
ITEMS = MessageItem.__table__
PAYMENTS = Payment.__table__


@dataclass(frozen=True)
class ContactReport:
    """Today's messages suppressed: to customers not to be written to (`uncontactable`:
    do-not-contact, no email, autopay pending), and by an opt-out or a bounced address."""

    uncontactable: int
    blocked: int


def contact(conn: Connection, policy: Policy, as_of: date) -> ContactReport:
    """The contact step: who of today's planned messages may be written to, and from when."""
    return ContactReport(
        uncontactable=suppress_uncontactable(conn, as_of),
        blocked=apply_contact_rules(conn, policy, as_of),
    )


def apply_contact_rules(conn: Connection, policy: Policy, as_of: date) -> int:
    """Suppress today's messages to opted-out customers or bounced addresses, and
    give the rest a `not_before` at the start of today's window in the customer's timezone.

    Returns how many were suppressed. Set-based: one UPDATE per rule, and one with a CASE
    over the distinct timezones of the customers concerned.
    """
    today = and_(MESSAGES.c.planned_on == as_of, to_customer())
    at = datetime.now(UTC)
    suppressed = move(conn, and_(today, opted_out()), "planned", "suppressed", OPTED_OUT, at)
    suppressed += move(
        conn, and_(today, address_bounced()), "planned", "suppressed", "address_bounced", at
    )
    if policy.contact.quiet_hours is not None:
        set_not_before(conn, policy.contact.quiet_hours, as_of)
    return len(suppressed)


def set_not_before(conn: Connection, quiet: QuietHours, as_of: date) -> None:
    """Set `not_before` on today's unsent customer messages: today's window start, local."""
    pending = and_(
        MESSAGES.c.planned_on == as_of,
        MESSAGES.c.status == "planned",
        MESSAGES.c.not_before.is_(None),
        to_customer(),
    )
    zone = (
        select(CUSTOMERS.c.timezone)
        .where(CUSTOMERS.c.customer_id == MESSAGES.c.customer_id)
        .scalar_subquery()
    )
    zones = conn.scalars(select(zone).where(pending).distinct()).all()
    starts = {name: window_start(as_of, name, quiet) for name in zones if name}
    if not starts:
        return
    instant = MESSAGES.c.not_before.type
    whens = [(zone == name, literal(start, instant)) for name, start in starts.items()]
    conn.execute(update(MESSAGES).where(pending).values(not_before=case(*whens, else_=None)))


def suppress_uncontactable(conn: Connection, as_of: date) -> int:
    """Suppress today's reminders to customers who must not or need not be written to.

    The stage still counts as done, so an uncontactable case walks its ladder silently and
    reaches the operator queue instead of waiting forever.
    """
    charge_failed = exists().where(
        ITEMS.c.message_id == MESSAGES.c.id,
        PAYMENTS.c.invoice_id == ITEMS.c.invoice_id,
        PAYMENTS.c.status == "failed",
        PAYMENTS.c.attempted_on <= as_of,
    )
    reason = case(
        (CUSTOMERS.c.do_not_contact, "do_not_contact"),
        (func.trim(CUSTOMERS.c.email) == "", "no_email"),
        (and_(CUSTOMERS.c.autopay, not_(charge_failed)), "autopay_pending"),
    )
    todays = and_(
        MESSAGES.c.customer_id == CUSTOMERS.c.customer_id,
        MESSAGES.c.planned_on == as_of,
        MESSAGES.c.kind == "reminder",
        reason.is_not(None),
    )
    return len(move(conn, todays, "planned", "suppressed", reason, datetime.now(UTC)))
