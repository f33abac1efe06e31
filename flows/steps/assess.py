"""Step 1, assess: behaviour features per customer as of a date, and the segment they imply.

Features are one INSERT ... SELECT over the ledger; segments are one CASE compiled from the
policy's ordered rules (first match wins). Each customer keeps the rule that matched, and every
move between segments is appended to `segment_history`, so "why is this customer chronic?" has
an answer: the rule, and the features row it matched on.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, timedelta
from decimal import Decimal
from typing import Any

from sqlalchemy import (
    Connection,
    Float,
    Integer,
    and_,
    case,
    cast,
    delete,
    func,
    insert,
    literal,
    literal_column,
    or_,
    select,
    type_coerce,
    update,
)
from sqlalchemy.sql.expression import ColumnElement, FromClause, Select, Subquery

from collectflow.flows.ledger.balances import (
    ZERO,
    invoice_positions,
    invoice_positions_at,
    refresh_balances,
    refresh_statistics,
)
from collectflow.flows.ledger.failures import failure_class_sql
from collectflow.flows.policy.document import Policy, condition_sql
from collectflow.models import (
    Case,
    CaseEvent,
    Customer,
    CustomerFeatures,
    Dispute,
    Invoice,
    InvoiceBalance,
    Payment,
    SegmentChange,
    days_between,
    json_object,
)
from collectflow.models.money import SCALE

CASES = Case.__table__
EVENTS = CaseEvent.__table__
CUSTOMERS = Customer.__table__
DISPUTES = Dispute.__table__
FEATURES = CustomerFeatures.__table__
HISTORY = SegmentChange.__table__
INVOICES = Invoice.__table__
BALANCES = InvoiceBalance.__table__
PAYMENTS = Payment.__table__


@dataclass(frozen=True)
class AssessReport:
    """What assess found: invoices still owing, customers per segment, segment moves."""

    owing_invoices: int
    segments: dict[str, int]
    moved: int


def assess(conn: Connection, policy: Policy, as_of: date) -> AssessReport:
    """Refresh balances and features for `as_of`, then segment every customer.

    The daily run does the same in two steps with the risk step between them
    (flows/pipeline.py), so that segment rules can read the day's `risk`; here, as in any
    call without it, `risk` is empty and a rule comparing it matches no one.
    """
    measure_behaviour(conn, policy, as_of)
    return segment_customers(conn, policy, as_of)


def measure_behaviour(conn: Connection, policy: Policy, as_of: date) -> int:
    """What is owed on each invoice and every customer's behaviour features, as of `as_of`;
    returns how many invoices still owe money."""
    owing = refresh_balances(conn, as_of)
    compute_features(conn, policy, as_of)
    return owing


def segment_customers(conn: Connection, policy: Policy, as_of: date) -> AssessReport:
    """Segment every customer from today's features (risk included once scored)."""
    moved = assign_segments(conn, policy, as_of)
    owing = conn.execute(select(func.count()).select_from(BALANCES)).scalar_one()
    return AssessReport(owing_invoices=owing, segments=segment_counts(conn), moved=moved)


def reads_risk(policy: Policy) -> bool:
    """Whether a segment rule compares `risk` (then segmenting needs the day's scores)."""
    return any("risk" in _features_in(segment.when) for segment in policy.segments)


FEATURE_COLUMNS = (
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
    "p90_days_late",
    "failed_technical_30d",
    "failed_customer_30d",
    "broken_promises",
    "failed_order_30d",
    "very_late_ratio",
)
"""The behaviour features `feature_select` computes, in its column order (after customer_id
and as_of); `risk` is set later, by the risk step."""


@dataclass(frozen=True)
class Cuts:
    """Whose behaviour, as of when: every customer on one date (`on`, the daily run), or the
    rows (customer_id, cut) of `rows`, each customer as of its own date, all in one statement
    (the risk model's training invoices, each described as of its issue date)."""

    on: date | None = None
    rows: FromClause | None = None

    def key(self, source: FromClause) -> list[ColumnElement[Any]]:
        """What one row of features is per: the customer, and its cut when there are many."""
        return [source.c.customer_id] if self.on is not None else [source.c.customer_id,
                                                                    source.c.cut]  # fmt: skip

    def joined(self, left: FromClause, right: FromClause) -> ColumnElement[bool]:
        return and_(*(a == b for a, b in zip(self.key(left), self.key(right), strict=True)))

    def recent(self, column: Any, at: Any, days: int) -> ColumnElement[bool]:
        """`column` (a date) is after `at` less `days`: in the trailing window. On one date
        it is a plain range (an index on the column serves it)."""
        if self.on is not None:
            return column > self.on - timedelta(days=days)
        return days_between(at, column) < days


def compute_features(conn: Connection, policy: Policy, as_of: date) -> None:
    """Rebuild `customer_features` for every customer, as of `as_of`."""
    conn.execute(delete(FEATURES))
    conn.execute(
        insert(FEATURES).from_select(
            ["customer_id", "as_of", *FEATURE_COLUMNS], feature_select(policy, Cuts(on=as_of))
        )
    )
    refresh_statistics(conn, FEATURES.name)


def feature_select(policy: Policy, cuts: Cuts) -> Select[Any]:
    """customer_id, as_of, then FEATURE_COLUMNS: every customer as of `cuts.on`, or each row
    of `cuts.rows` as of its cut. The one definition of the features, whoever asks."""
    if cuts.on is not None:
        positions, at = invoice_positions(cuts.on), literal(cuts.on, FEATURES.c.as_of.type)
    else:
        positions = invoice_positions_at(cuts.rows)
        at = positions.c.cut
    p = ranked_positions(positions, cuts, at, policy.features.window_days)
    at = at if cuts.on is not None else p.c.cut
    live = p.c.status != "void"
    in_window = and_(live, cuts.recent(p.c.issued_on, at, policy.features.window_days))
    paid = and_(in_window, p.c.status != "disputed", p.c.owed <= ZERO)
    timed = p.c.timed == 1
    owing = and_(p.c.owed > ZERO, p.c.status.in_(("open", "disputed")))
    overdue = and_(owing, p.c.due_on < at)
    disputed = or_(p.c.status == "disputed", p.c.invoice_id.in_(_open_disputes(at)))
    p90_rank = (9 * p.c.timed_count + 9) // 10  # ceil(0.9 n) in integers: the nearest rank
    per_customer = (
        select(
            *cuts.key(p),
            func.count().filter(in_window).label("invoices_issued"),
            func.count().filter(paid).label("invoices_paid"),
            cast(func.avg(case((timed, case((p.c.days_late <= 0, 1), else_=0)))), Float).label(
                "on_time_ratio"
            ),
            cast(func.avg(case((timed, p.c.days_late))), Float).label("avg_days_late"),
            cast(
                func.avg(case((timed, case((p.c.days_late > policy.risk.late_days, 1), else_=0)))),
                Float,
            ).label("very_late_ratio"),
            cast(
                func.max(case((and_(timed, p.c.late_rank == p90_rank), p.c.days_late))), Float
            ).label("p90_days_late"),
            func.coalesce(func.sum(p.c.owed).filter(owing), ZERO).label("open_balance"),
            func.coalesce(func.sum(p.c.owed).filter(overdue), ZERO).label("overdue_balance"),
            func.count().filter(owing).label("open_invoices"),
            func.coalesce(func.max(days_between(at, p.c.due_on)).filter(overdue), 0).label(
                "oldest_overdue_days"
            ),
            func.count().filter(and_(owing, disputed)).label("disputes"),
            func.coalesce(func.max(days_between(at, p.c.issued_on)), 0).label("tenure_days"),
        )
        .where(live)
        .group_by(*cuts.key(p))
        .subquery("per_customer")
    )
    failed = _failed_payments(policy, cuts)
    promises = _broken_promises(policy, cuts)
    base = CUSTOMERS if cuts.on is not None else cuts.rows
    values = [
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
        per_customer.c.p90_days_late,
        func.coalesce(failed.c.technical, 0),
        func.coalesce(failed.c.customer, 0),
        func.coalesce(promises.c.broken, 0),
        func.coalesce(failed.c.order, 0),
        per_customer.c.very_late_ratio,
    ]
    return select(
        base.c.customer_id,
        (at if cuts.on is not None else base.c.cut).label("as_of"),
        *(value.label(name) for value, name in zip(values, FEATURE_COLUMNS, strict=True)),
    ).select_from(
        base.outerjoin(per_customer, cuts.joined(per_customer, base))
        .outerjoin(failed, cuts.joined(failed, base))
        .outerjoin(promises, cuts.joined(promises, base))
    )


def ranked_positions(positions: Subquery, cuts: Cuts, at: Any, window_days: int) -> Subquery:
    """Invoice positions with days late at payment (0 when on time) and, among a customer's
    invoices paid in the window with a known payment date ("timed"), each one's rank by days
    late and their count: the window functions a portable percentile needs (SQLite has no
    percentile_cont)."""
    p = positions
    timed = and_(
        p.c.status.not_in(("void", "disputed")),
        cuts.recent(p.c.issued_on, at, window_days),
        p.c.owed <= ZERO,
        p.c.last_paid_on.is_not(None),
    )
    late = days_between(p.c.last_paid_on, p.c.due_on)
    days_late = case((late > 0, late), else_=0)
    timed_flag = case((timed, 1), else_=0)
    partition = (*cuts.key(p), timed_flag)
    return select(
        *p.c,
        timed_flag.label("timed"),
        days_late.label("days_late"),
        func.row_number().over(partition_by=partition, order_by=days_late).label("late_rank"),
        func.count().over(partition_by=partition).label("timed_count"),
    ).subquery("ranked_positions")


def _failed_payments(policy: Policy, cuts: Cuts) -> Subquery:
    """Per customer, failed attempts in the last `failed_payment_days`, in total and by class."""
    failure_class = failure_class_sql(policy.diagnosis, PAYMENTS.c.failure_code)
    source = PAYMENTS.join(INVOICES, INVOICES.c.invoice_id == PAYMENTS.c.invoice_id)
    at: Any = cuts.on
    if cuts.rows is not None:
        source = source.join(cuts.rows, cuts.rows.c.customer_id == INVOICES.c.customer_id)
        at = cuts.rows.c.cut
    keys = cuts.key(INVOICES) if cuts.on is not None else cuts.key(cuts.rows)
    return (
        select(
            *keys,
            func.count().label("failed"),
            func.count().filter(failure_class == "technical").label("technical"),
            func.count().filter(failure_class == "customer").label("customer"),
            func.count().filter(failure_class == "order").label("order"),
        )
        .select_from(source)
        .where(
            PAYMENTS.c.status == "failed",
            cuts.recent(PAYMENTS.c.attempted_on, at, policy.features.failed_payment_days),
            PAYMENTS.c.attempted_on <= at,
        )
        .group_by(*keys)
        .subquery("failed_payments")
    )


def _open_disputes(at: Any) -> Any:
    """Invoices an operator (or diagnosis) put in a dispute open on `at` (a date, or the
    cut of the row it is correlated with)."""
    return select(DISPUTES.c.invoice_id).where(
        DISPUTES.c.opened_on <= at,
        or_(DISPUTES.c.resolved_on.is_(None), DISPUTES.c.resolved_on > at),
    )


def _broken_promises(policy: Policy, cuts: Cuts) -> Subquery:
    """Per customer, `promise_broken` events on their cases in the trailing window."""
    source = EVENTS.join(CASES, CASES.c.id == EVENTS.c.case_id)
    at: Any = cuts.on
    if cuts.rows is not None:
        source = source.join(cuts.rows, cuts.rows.c.customer_id == CASES.c.customer_id)
        at = cuts.rows.c.cut
    keys = cuts.key(CASES) if cuts.on is not None else cuts.key(cuts.rows)
    return (
        select(*keys, func.count().label("broken"))
        .select_from(source)
        .where(
            EVENTS.c.kind == "promise_broken",
            cuts.recent(EVENTS.c.on, at, policy.features.window_days),
            EVENTS.c.on <= at,
        )
        .group_by(*keys)
        .subquery("broken_promises")
    )


def segment_expression(policy: Policy):
    """The policy's ordered segment rules as one SQL CASE over `customer_features`."""
    whens = [(condition_sql(segment.when, FEATURES), segment.name) for segment in policy.segments]
    return case(*whens[:-1], else_=whens[-1][1])


def rule_features(policy: Policy, index: int) -> list[str]:
    """The features segment `index`'s rule reads; for the catch-all, those every rule before
    it read (they are why nothing else matched)."""
    conditions = [policy.segments[index].when]
    if not policy.segments[index].when:
        conditions = [segment.when for segment in policy.segments[:index]]
    found: list[str] = []
    for condition in conditions:
        found.extend(name for name in _features_in(condition) if name not in found)
    return found


def _features_in(condition: Any) -> list[str]:
    names: list[str] = []
    for key, value in condition.items():
        if key in ("all", "any"):
            names.extend(name for item in value for name in _features_in(item))
        elif key == "not":
            names.extend(_features_in(value))
        else:
            names.append(key)
    return names


def snapshot_expression(policy: Policy) -> ColumnElement[str]:
    """Per customer, JSON of the feature values the matching rule read (the "why")."""
    whens = []
    for index, segment in enumerate(policy.segments):
        pairs = []
        for name in rule_features(policy, index):
            pairs += [literal_column(f"'{name}'"), _feature_value(name)]
        whens.append((condition_sql(segment.when, FEATURES), json_object(*pairs)))
    return case(*whens[:-1], else_=whens[-1][1])


def _feature_value(name: str) -> ColumnElement[Any]:
    """A feature as a JSON number: money columns are stored scaled, so scale them back."""
    column = FEATURES.c[name]
    if name in ("open_balance", "overdue_balance"):
        return type_coerce(column, Integer) * literal_column(f"{Decimal(1).scaleb(-SCALE)}")
    return column


def assign_segments(conn: Connection, policy: Policy, as_of: date) -> int:
    """Store each customer's segment with the rule and the feature values that matched; append
    a history row for every customer who moved."""
    new_segment = segment_expression(policy)
    snapshot = snapshot_expression(policy)
    joined = FEATURES.c.customer_id == CUSTOMERS.c.customer_id
    moved = CUSTOMERS.c.segment.is_distinct_from(new_segment)
    history = select(
        CUSTOMERS.c.customer_id,
        literal(as_of, HISTORY.c.as_of.type),
        new_segment,
        new_segment,
        CUSTOMERS.c.segment,
        snapshot,
    ).where(joined, moved)
    result = conn.execute(
        insert(HISTORY).from_select(
            ["customer_id", "as_of", "segment", "rule", "previous", "features"], history
        )
    )
    conn.execute(
        update(CUSTOMERS)
        .where(joined, moved)
        .values(
            segment=new_segment,
            segment_rule=new_segment,
            segment_since=as_of,
            segment_features=snapshot,
        )
    )
    return result.rowcount


def segment_counts(conn: Connection) -> dict[str, int]:
    """Customers per current segment."""
    rows = conn.execute(
        select(CUSTOMERS.c.segment, func.count()).group_by(CUSTOMERS.c.segment)
    ).all()
    return {segment or "unassessed": count for segment, count in rows}
