"""What is owed on each invoice as of a date: the ledger's single source of truth.

Owed = amount - succeeded payments + refunds, counting only payments attempted by the date.
An invoice marked `paid` or `void` owes nothing; one marked `open` whose payments cover it is
paid. Only invoices that still owe something land in `invoice_balances`, which every later
step of the run joins on; an invoice disputed (in the ledger, or by an operator's open dispute)
is there but not `remindable`: no reminder asks for it; so is one the customer says is paid,
while its payment is awaited (`held_by_claim`).
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import date
from typing import Any

from sqlalchemy import (
    Connection,
    and_,
    case,
    delete,
    func,
    insert,
    literal,
    select,
    text,
    type_coerce,
)
from sqlalchemy.sql.expression import ColumnElement, FromClause, Select, Subquery

from collectflow.models import ClaimedPayment, Dispute, Invoice, InvoiceBalance, Money, Payment

CLAIMS = ClaimedPayment.__table__
DISPUTES = Dispute.__table__
INVOICES = Invoice.__table__
PAYMENTS = Payment.__table__
BALANCES = InvoiceBalance.__table__

ZERO = literal(0, Money)
SETTLING = ("succeeded", "refunded")  # the attempts that move what is owed; failures don't


def settling(payments: FromClause = PAYMENTS) -> ColumnElement[bool]:
    """The payment row moves what its invoice owes: it succeeded, or it was refunded."""
    return payments.c.status.in_(SETTLING)


def settled_amount(
    payments: FromClause = PAYMENTS, among: ColumnElement[bool] | None = None
) -> ColumnElement[Any]:
    """What is settled on an invoice: its succeeded payments less its refunds (0 for none).

    The one place the rule is written; an aggregate, so each caller picks the payments (its
    invoice or customer, up to a date) in its own WHERE, with `settling` to let an index on
    the status help; `among` narrows it further inside the aggregate (paid by a deadline).
    """
    signed = case(
        (payments.c.status == "succeeded", payments.c.amount),
        (payments.c.status == "refunded", -payments.c.amount),
        else_=ZERO,
    )
    if among is not None:
        signed = case((among, signed), else_=ZERO)
    return type_coerce(func.coalesce(func.sum(signed), ZERO), Money)


def payment_totals(as_of: date, invoices: Select[Any] | None = None) -> Subquery:
    """Per invoice: what is settled on it and the last succeeded payment date, up to `as_of`
    (of the invoices whose ids `invoices` selects, when given)."""
    succeeded = PAYMENTS.c.status == "succeeded"
    chosen = [] if invoices is None else [PAYMENTS.c.invoice_id.in_(invoices)]
    return (
        select(
            PAYMENTS.c.invoice_id,
            settled_amount().label("settled"),
            func.max(PAYMENTS.c.attempted_on).filter(succeeded).label("last_paid_on"),
        )
        .where(PAYMENTS.c.attempted_on <= as_of, settling(), *chosen)
        .group_by(PAYMENTS.c.invoice_id)
        .subquery("payment_totals")
    )


def invoice_positions(as_of: date, invoices: Select[Any] | None = None) -> Subquery:
    """Every invoice issued by `as_of` with what is owed on it and when it was last paid.

    `invoices`, a SELECT of invoice ids, limits the positions to those invoices, their
    payments included: a handful of invoices (one message's, on the customer page) then
    costs a handful of index lookups, where a filter outside the subquery may leave the
    database aggregating every payment of the ledger first.
    """
    totals = payment_totals(as_of, invoices)
    chosen = [] if invoices is None else [INVOICES.c.invoice_id.in_(invoices)]
    return (
        select(*_position_columns(totals))
        .select_from(INVOICES.outerjoin(totals, totals.c.invoice_id == INVOICES.c.invoice_id))
        .where(INVOICES.c.issued_on <= as_of, *chosen)
        .subquery("positions")
    )


def these_invoices(invoice_ids: Sequence[str]) -> Select[Any]:
    """The ids as a SELECT, for `invoice_positions` to compute those invoices only (an
    answer is about a handful; the whole ledger's payments need not be summed for them)."""
    return select(INVOICES.c.invoice_id).where(INVOICES.c.invoice_id.in_(invoice_ids))


def invoice_positions_at(cuts: FromClause) -> Subquery:
    """`invoice_positions` of many dates in one statement: for each row (customer_id, cut) of
    `cuts`, that customer's invoices issued by `cut`, what was owed on each and when it was
    last paid, counting the payments attempted by `cut` only; a `cut` column says which."""
    issued = and_(INVOICES.c.customer_id == cuts.c.customer_id, INVOICES.c.issued_on <= cuts.c.cut)
    succeeded = PAYMENTS.c.status == "succeeded"
    totals = (
        select(
            cuts.c.customer_id,
            cuts.c.cut,
            PAYMENTS.c.invoice_id,
            settled_amount().label("settled"),
            func.max(PAYMENTS.c.attempted_on).filter(succeeded).label("last_paid_on"),
        )
        .select_from(
            cuts.join(INVOICES, issued).join(
                PAYMENTS, PAYMENTS.c.invoice_id == INVOICES.c.invoice_id
            )
        )
        .where(PAYMENTS.c.attempted_on <= cuts.c.cut, settling())
        .group_by(cuts.c.customer_id, cuts.c.cut, PAYMENTS.c.invoice_id)
        .subquery("payment_totals_at")
    )
    same_cut = and_(
        totals.c.invoice_id == INVOICES.c.invoice_id,
        totals.c.customer_id == cuts.c.customer_id,
        totals.c.cut == cuts.c.cut,
    )
    return (
        select(*_position_columns(totals), cuts.c.cut)
        .select_from(cuts.join(INVOICES, issued).outerjoin(totals, same_cut))
        .subquery("positions_at")
    )


def _position_columns(totals: Subquery) -> list[ColumnElement[Any]]:
    """An invoice's position given its payment totals: the one rule of what is owed."""
    owed_by_payments = INVOICES.c.amount - func.coalesce(totals.c.settled, ZERO)
    trusted_settled = INVOICES.c.status.in_(("paid", "void"))
    owed = type_coerce(case((trusted_settled, ZERO), else_=owed_by_payments), Money)
    return [
        INVOICES.c.invoice_id,
        INVOICES.c.customer_id,
        INVOICES.c.issued_on,
        INVOICES.c.due_on,
        INVOICES.c.currency,
        INVOICES.c.status,
        INVOICES.c.amount,
        owed.label("owed"),
        totals.c.last_paid_on,
    ]


def refresh_balances(conn: Connection, as_of: date) -> int:
    """Rebuild `invoice_balances` for `as_of`; returns how many invoices still owe money.

    On PostgreSQL the table is locked against other writers first (readers go on), so two
    refreshes at once (a run and a what-if, two runs) take turns: without it, the second one's
    DELETE missed the rows the first had just inserted, and its INSERT collided with them.
    SQLite lets one writer at a time anyway.
    """
    if conn.dialect.name == "postgresql":
        conn.execute(text(f"LOCK TABLE {BALANCES.name} IN EXCLUSIVE MODE"))
    conn.execute(delete(BALANCES))
    positions = invoice_positions(as_of)
    under_dispute = select(DISPUTES.c.invoice_id).where(DISPUTES.c.resolved_on.is_(None))
    awaited = held_by_claim(as_of)
    owing = select(
        positions.c.invoice_id,
        positions.c.customer_id,
        literal(as_of, BALANCES.c.as_of.type),
        positions.c.due_on,
        positions.c.currency,
        positions.c.owed,
        and_(
            positions.c.status != "disputed",
            positions.c.invoice_id.not_in(under_dispute),
            positions.c.invoice_id.not_in(awaited),
        ),
    ).where(and_(positions.c.owed > ZERO, positions.c.status.in_(("open", "disputed"))))
    result = conn.execute(
        insert(BALANCES).from_select(
            ["invoice_id", "customer_id", "as_of", "due_on", "currency", "owed", "remindable"],
            owing,
        )
    )
    refresh_statistics(conn, BALANCES.name)
    return result.rowcount


def held_by_claim(as_of: date) -> Any:
    """Invoices the customer says are paid, whose payment is awaited on `as_of`: not remindable
    until their hold ends (flows/feedback/claims.py decides the claims)."""
    return select(CLAIMS.c.invoice_id).where(
        CLAIMS.c.status == "open", CLAIMS.c.hold_until >= as_of
    )


def refresh_statistics(conn: Connection, table: str) -> None:
    """Let PostgreSQL's planner see a table just rebuilt, so every later step joins it well.

    Autovacuum would get there eventually; the rest of this run can't wait for it.
    """
    if conn.dialect.name == "postgresql":
        conn.execute(text(f"ANALYZE {table}"))
