"""Portfolio metrics: how the ledger as a whole pays (DSO, best possible DSO, ADD, CEI).

Computed per currency from the ledger as of dates (`invoice_positions`), so they hold for
backfilled ledgers too; docs/metrics.md has every formula with a worked example.
"""

from __future__ import annotations

import calendar
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date, timedelta
from decimal import Decimal
from typing import Any

from sqlalchemy import Connection, and_, case, func, select, type_coerce

from collectflow.flows.ledger.balances import ZERO, invoice_positions
from collectflow.flows.measure.metrics import round_tenth
from collectflow.models import (
    Invoice,
    Money,
    month_of,
)

INVOICES = Invoice.__table__


@dataclass(frozen=True)
class Portfolio:
    """Receivables figures of one currency over a period of `days` days (docs/metrics.md)."""

    currency: str
    since: date
    until: date
    days: int
    beginning: Decimal  # receivables at the end of the day before `since`
    ending: Decimal  # receivables at the end of `until`
    ending_current: Decimal  # of which not yet due
    sales: Decimal  # credit sales: invoices issued in the period, void ones excluded
    simple_dso: Decimal | None
    countback_dso: Decimal | None
    best_possible_dso: Decimal | None
    add: Decimal | None
    cei: Decimal | None
    cei_variant: str = "total credit sales of the period"

    def to_dict(self) -> dict[str, Any]:
        return {key: _plain(value) for key, value in self.__dict__.items()}


def _plain(value: Any) -> Any:
    if isinstance(value, Decimal):
        return str(value)
    if isinstance(value, date):
        return value.isoformat()
    return value


def simple_dso(ending: Decimal, sales: Decimal, days: int) -> Decimal | None:
    """Ending receivables / credit sales of the period * its days."""
    return ending / sales * days if sales else None


def countback_dso(receivables: Decimal, months: Sequence[tuple[Decimal, int]]) -> Decimal | None:
    """Exhaustion DSO: walk back month by month (latest first: (sales, days)) until the
    receivables are used up; the last month counts for its used share of days."""
    left, days = receivables, Decimal(0)
    for sales, month_days in months:
        if left <= 0:
            break
        if left >= sales:
            left -= sales
            days += month_days
        else:
            return days + left / sales * month_days
    return days if months else None


def cei(beginning: Decimal, sales: Decimal, ending: Decimal, current: Decimal) -> Decimal | None:
    """(beginning + sales - ending total) / (beginning + sales - ending current) * 100."""
    collectible = beginning + sales - current
    return (beginning + sales - ending) / collectible * 100 if collectible else None


def receivables(conn: Connection, as_of: date) -> dict[str, tuple[Decimal, Decimal]]:
    """Per currency: money owed at the end of `as_of`, and the part of it not yet due."""
    positions = invoice_positions(as_of)
    owing = and_(positions.c.owed > ZERO, positions.c.status.in_(("open", "disputed")))
    current = case((positions.c.due_on >= as_of, positions.c.owed), else_=ZERO)
    rows = conn.execute(
        select(
            positions.c.currency,
            type_coerce(func.sum(positions.c.owed), Money),
            type_coerce(func.sum(current), Money),
        )
        .where(owing)
        .group_by(positions.c.currency)
    )
    return {currency: (total, not_due) for currency, total, not_due in rows}


def monthly_sales(conn: Connection, start: date, end: date) -> dict[tuple[str, str], Decimal]:
    """Credit sales per (currency, YYYY-MM) of invoices issued from `start` to `end`."""
    rows = conn.execute(
        select(
            INVOICES.c.currency,
            month_of(INVOICES.c.issued_on),
            type_coerce(func.sum(INVOICES.c.amount), Money),
        )
        .where(
            INVOICES.c.issued_on >= start,
            INVOICES.c.issued_on <= end,
            INVOICES.c.status != "void",
        )
        .group_by(INVOICES.c.currency, month_of(INVOICES.c.issued_on))
    )
    return {(currency, month): amount for currency, month, amount in rows}


def months_back(until: date, count: int) -> list[tuple[str, date, int]]:
    """The `count` calendar months ending with `until`'s, latest first: (YYYY-MM, first day,
    days counted); the latest month counts only up to `until`."""
    months = []
    first = until.replace(day=1)
    for index in range(count):
        days = until.day if index == 0 else calendar.monthrange(first.year, first.month)[1]
        months.append((first.strftime("%Y-%m"), first, days))
        first = (first - timedelta(days=1)).replace(day=1)
    return months


def portfolio(
    conn: Connection, since: date, until: date, countback_months: int = 24
) -> list[Portfolio]:
    """DSO (simple and countback), best possible DSO, ADD and CEI per currency for the period."""
    days = (until - since).days + 1
    beginning = receivables(conn, since - timedelta(days=1))
    ending = receivables(conn, until)
    history = months_back(until, countback_months)
    sales_by_month = monthly_sales(conn, history[-1][1], until)
    period_sales: dict[str, Decimal] = defaultdict(Decimal)
    for (currency, _month), amount in monthly_sales(conn, since, until).items():
        period_sales[currency] += amount
    currencies = sorted(set(beginning) | set(ending) | set(period_sales))
    figures = []
    for currency in currencies:
        begin = beginning.get(currency, (Decimal(0), Decimal(0)))[0]
        end, current = ending.get(currency, (Decimal(0), Decimal(0)))
        sales = period_sales.get(currency, Decimal(0))
        months = [(sales_by_month.get((currency, m), Decimal(0)), n) for m, _, n in history]
        dso = simple_dso(end, sales, days)
        best = simple_dso(current, sales, days)
        figures.append(
            Portfolio(
                currency=currency,
                since=since,
                until=until,
                days=days,
                beginning=begin,
                ending=end,
                ending_current=current,
                sales=sales,
                simple_dso=_tenth(dso),
                countback_dso=_tenth(countback_dso(end, months)),
                best_possible_dso=_tenth(best),
                add=_tenth(average_days_delinquent(dso, best))
                if dso and best is not None
                else None,
                cei=_tenth(cei(begin, sales, end, current)),
            )
        )
    return figures


def _tenth(value: Decimal | None) -> Decimal | None:
    return None if value is None else round_tenth(value)


def average_days_delinquent(dso: Decimal, best_possible_dso: Decimal) -> Decimal:
    """ADD = DSO - best possible DSO: the days receivables are outstanding beyond terms."""
    return dso - best_possible_dso
