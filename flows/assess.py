"""Step 1, assess: behaviour features per customer as of a date, and the segment they imply.

Features are one INSERT ... SELECT over the ledger; segments are one CASE compiled from the
policy's ordered rules (first match wins). Each customer keeps the rule that matched, and every
move between segments is appended to `segment_history`, so "why is this customer chronic?" has
an answer: the rule, and the features row it matched on.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, timedelta

from sqlalchemy import (
    Connection,
    Float,
    and_,
    case,
    cast,
    delete,
    func,
    insert,
    literal,
    select,
    update,
)

from flows.balances import ZERO, invoice_positions, refresh_balances
from flows.policy import Policy, condition_sql
from models import Customer, CustomerFeatures, Invoice, Payment, SegmentChange, days_between

CUSTOMERS = Customer.__table__
FEATURES = CustomerFeatures.__table__
HISTORY = SegmentChange.__table__
INVOICES = Invoice.__table__
PAYMENTS = Payment.__table__


@dataclass(frozen=True)
class AssessReport:
    """What assess found: invoices still owing, customers per segment, segment moves."""

    owing_invoices: int
    segments: dict[str, int]
    moved: int


def assess(conn: Connection, policy: Policy, as_of: date) -> AssessReport:
    """Refresh balances and features for `as_of`, then segment every customer."""
    owing = refresh_balances(conn, as_of)
    compute_features(conn, policy, as_of)
    moved = assign_segments(conn, policy, as_of)
    return AssessReport(owing_invoices=owing, segments=segment_counts(conn), moved=moved)


def compute_features(conn: Connection, policy: Policy, as_of: date) -> None:
    """Rebuild `customer_features` for every customer, as of `as_of`."""
    window_start = as_of - timedelta(days=policy.features.window_days)
    p = invoice_positions(as_of)
    live = p.c.status != "void"
    in_window = and_(live, p.c.issued_on > window_start)
    paid = and_(in_window, p.c.status != "disputed", p.c.owed <= ZERO)
    timed = and_(paid, p.c.last_paid_on.is_not(None))
    days_late = days_between(p.c.last_paid_on, p.c.due_on)
    owing = and_(p.c.owed > ZERO, p.c.status.in_(("open", "disputed")))
    overdue = and_(owing, p.c.due_on < as_of)
    per_customer = (
        select(
            p.c.customer_id,
            func.count().filter(in_window).label("invoices_issued"),
            func.count().filter(paid).label("invoices_paid"),
            cast(func.avg(case((timed, case((days_late <= 0, 1), else_=0)))), Float).label(
                "on_time_ratio"
            ),
            cast(func.avg(case((timed, case((days_late > 0, days_late), else_=0)))), Float).label(
                "avg_days_late"
            ),
            func.coalesce(func.sum(p.c.owed).filter(owing), ZERO).label("open_balance"),
            func.coalesce(func.sum(p.c.owed).filter(overdue), ZERO).label("overdue_balance"),
            func.count().filter(owing).label("open_invoices"),
            func.coalesce(func.max(days_between(as_of, p.c.due_on)).filter(overdue), 0).label(
                "oldest_overdue_days"
            ),
            func.count().filter(and_(owing, p.c.status == "disputed")).label("disputes"),
            func.coalesce(func.max(days_between(as_of, p.c.issued_on)), 0).label("tenure_days"),
        )
        .where(live)
        .group_by(p.c.customer_id)
        .subquery("per_customer")
    )
    failed = _failed_payments(as_of, policy.features.failed_payment_days)
    source = select(
        CUSTOMERS.c.customer_id,
        literal(as_of, FEATURES.c.as_of.type),
        func.coalesce(per_customer.c.invoices_issued, 0),
        func.coalesce(per_customer.c.invoices_paid, 0),
        per_customer.c.on_time_ratio,
        per_customer.c.avg_days_late,
        func.coalesce(per_customer.c.open_balance, ZERO),
        func.coalesce(per_customer.c.overdue_balance, ZERO),
        func.coalesce(per_customer.c.open_invoices, 0),
        func.coalesce(per_customer.c.oldest_overdue_days, 0),
        func.coalesce(failed.c.failed, 0),
        func.coalesce(per_customer.c.disputes, 0),
        func.coalesce(per_customer.c.tenure_days, 0),
    ).select_from(
        CUSTOMERS.outerjoin(
            per_customer, per_customer.c.customer_id == CUSTOMERS.c.customer_id
        ).outerjoin(failed, failed.c.customer_id == CUSTOMERS.c.customer_id)
    )
    columns = [
        "customer_id",
        "as_of",
        "invoices_issued",
        "invoices_paid",
        "on_time_ratio",
        "avg_days_late",
        "open_balance",
        "overdue_balance",
        "open_invoices",
        "oldest_overdue_days",
        "failed_payments_30d",
        "disputes",
        "tenure_days",
    ]
    conn.execute(delete(FEATURES))
    conn.execute(insert(FEATURES).from_select(columns, source))


def _failed_payments(as_of: date, days: int):
    since = as_of - timedelta(days=days)
    return (
        select(INVOICES.c.customer_id, func.count().label("failed"))
        .select_from(PAYMENTS.join(INVOICES, INVOICES.c.invoice_id == PAYMENTS.c.invoice_id))
        .where(
            PAYMENTS.c.status == "failed",
            PAYMENTS.c.attempted_on > since,
            PAYMENTS.c.attempted_on <= as_of,
        )
        .group_by(INVOICES.c.customer_id)
        .subquery("failed_payments")
    )


def segment_expression(policy: Policy):
    """The policy's ordered segment rules as one SQL CASE over `customer_features`."""
    whens = [(condition_sql(segment.when, FEATURES), segment.name) for segment in policy.segments]
    return case(*whens[:-1], else_=whens[-1][1])


def assign_segments(conn: Connection, policy: Policy, as_of: date) -> int:
    """Store each customer's segment; append a history row for every customer who moved."""
    new_segment = segment_expression(policy)
    joined = FEATURES.c.customer_id == CUSTOMERS.c.customer_id
    moved = CUSTOMERS.c.segment.is_distinct_from(new_segment)
    history = select(
        CUSTOMERS.c.customer_id,
        literal(as_of, HISTORY.c.as_of.type),
        new_segment,
        new_segment,
        CUSTOMERS.c.segment,
    ).where(joined, moved)
    result = conn.execute(
        insert(HISTORY).from_select(
            ["customer_id", "as_of", "segment", "rule", "previous"], history
        )
    )
    conn.execute(
        update(CUSTOMERS)
        .where(joined, moved)
        .values(segment=new_segment, segment_rule=new_segment, segment_since=as_of)
    )
    return result.rowcount


def segment_counts(conn: Connection) -> dict[str, int]:
    """Customers per current segment."""
    rows = conn.execute(
        select(CUSTOMERS.c.segment, func.count()).group_by(CUSTOMERS.c.segment)
    ).all()
    return {segment or "unassessed": count for segment, count in rows}
