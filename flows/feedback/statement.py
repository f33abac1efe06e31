"""What the customer page shows for one answer link: the message's invoices as they stand today.

A link names a message (and its customer); the page lists the invoices that message asked
for, each with what is owed on it today by the ledger's rule (flows/ledger/balances.py) and
its state (paid, partly paid, disputed, ...; `standing` in flows/cases/casebook.py), so a
customer who paid since the email sees it paid, and no link to pay it again. Everything is
read in two short queries limited to the message's own invoices and payments, built once a
day: a page view costs index lookups, not a pass over the ledger.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date
from decimal import Decimal
from functools import lru_cache
from typing import Any

from sqlalchemy import Connection, Select, bindparam, select

from collectflow.flows.cases.casebook import standing
from collectflow.flows.feedback.links import LinkClaims
from collectflow.flows.ledger.balances import invoice_positions
from collectflow.flows.ledger.paylinks import PayLink, PayOffer, pay_link
from collectflow.models import Customer, Invoice, Message, MessageItem, Promise

CUSTOMERS = Customer.__table__
INVOICES = Invoice.__table__
MESSAGES = Message.__table__
ITEMS = MessageItem.__table__
PROMISES = Promise.__table__

SETTLED_STATES = frozenset({"paid", "void"})
"""States of an invoice nobody is asked to pay: no checkbox, no pay link."""


@dataclass(frozen=True)
class Line:
    """One invoice of the message, as it stands today."""

    invoice_id: str
    number: str
    due_on: date
    amount: Decimal
    owed: Decimal
    currency: str
    state: str  # void | disputed | paid | partly paid | open (casebook.standing)
    payment_url: str | None = None  # the invoice's own, from the billing system

    @property
    def owing(self) -> bool:
        """Still to pay: the customer may answer about it and gets its pay link."""
        return self.state not in SETTLED_STATES and self.owed > 0


@dataclass(frozen=True)
class Statement:
    """The message a link names, its customer and its invoices today."""

    message_id: int
    case_id: int
    customer_id: str
    customer_name: str
    locale: str
    lines: tuple[Line, ...]

    @property
    def owing(self) -> tuple[Line, ...]:
        return tuple(line for line in self.lines if line.owing)

    def totals(self) -> dict[str, Decimal]:
        """What is still owed on the message's invoices, per currency."""
        totals: dict[str, Decimal] = {}
        for line in self.owing:
            totals[line.currency] = totals.get(line.currency, Decimal(0)) + line.owed
        return totals


def load_statement(conn: Connection, claims: LinkClaims, today: date) -> Statement | None:
    """The statement of the message `claims` names; None when no such message of that
    customer exists (a link to a database that no longer has it answers as a bad link)."""
    message = conn.execute(
        MESSAGE, {"message_id": claims.message_id, "customer_id": claims.customer_id}
    ).first()
    if message is None:
        return None
    lines = tuple(
        Line(
            invoice_id=row.invoice_id,
            number=row.number or row.invoice_id,
            due_on=row.due_on,
            amount=row.amount,
            owed=max(row.owed, Decimal(0)),
            currency=row.currency,
            state=row.state,
            payment_url=row.payment_url,
        )
        for row in conn.execute(lines_query(today), {"message_id": claims.message_id})
    )
    return Statement(
        message_id=message.id,
        case_id=message.case_id,
        customer_id=claims.customer_id,
        customer_name=message.name,
        locale=message.locale,
        lines=lines,
    )


MESSAGE = (
    select(MESSAGES.c.id, MESSAGES.c.case_id, CUSTOMERS.c.name, CUSTOMERS.c.locale)
    .join(CUSTOMERS, CUSTOMERS.c.customer_id == MESSAGES.c.customer_id)
    .where(
        MESSAGES.c.id == bindparam("message_id"),
        MESSAGES.c.customer_id == bindparam("customer_id"),
        MESSAGES.c.kind != "internal",
    )
)
"""The message a link names, with its customer's name and locale."""


@lru_cache(maxsize=4)
def lines_query(today: date) -> Select[Any]:
    """The invoices of one message (`:message_id`) as they stand on `today`, oldest due first.

    Built once a day rather than per page view: building the statement (positions, states)
    costs SQLAlchemy several times what SQLite takes to run it.
    """
    invoices = select(ITEMS.c.invoice_id).where(ITEMS.c.message_id == bindparam("message_id"))
    positions = invoice_positions(today, invoices)
    return (
        select(
            INVOICES.c.invoice_id,
            INVOICES.c.number,
            INVOICES.c.due_on,
            INVOICES.c.amount,
            INVOICES.c.currency,
            INVOICES.c.payment_url,
            positions.c.owed,
            standing(positions).label("state"),
        )
        .join(positions, positions.c.invoice_id == INVOICES.c.invoice_id)
        .order_by(INVOICES.c.due_on, INVOICES.c.invoice_id)
    )


def pay_links(statement: Statement, offer: PayOffer) -> dict[str, PayLink]:
    """Today's pay link of each invoice still owed, none for one paid or void: the invoice's
    own URL, else the day's offered gateway's (flows/ledger/paylinks.py `pay_link`, as
    `payment_links` builds them), from the statement already read rather than a second pass
    over the invoices and their payments (that pass was most of a page view's cost)."""
    return {
        line.invoice_id: pay_link(line.invoice_id, line.payment_url, offer.gateway)
        for line in statement.owing
    }


def open_promise_date(conn: Connection, case_id: int) -> date | None:
    """The date of the case's latest open promise to pay, for the confirmation page."""
    return conn.execute(
        select(PROMISES.c.promised_on)
        .where(PROMISES.c.case_id == case_id, PROMISES.c.status == "open")
        .order_by(PROMISES.c.id.desc())
        .limit(1)
    ).scalar()
