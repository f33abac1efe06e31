"""Business days: a ladder may count its stage offsets in working days, skipping weekends and
the public holidays of the customer's country (the `holidays` package), or of the policy's
`contact.holidays_country` for customers without one.

Set-based: `fill_calendar` writes a small table of (country, day, ordinal) for the countries
and the dates plan needs, where `ordinal` counts business days up to `day`; business days
between two dates are then one subtraction in SQL (`days_elapsed`).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from datetime import date, timedelta
from typing import Any

import holidays
from sqlalchemy import Connection, case, delete, func, insert, select
from sqlalchemy.sql.expression import ColumnElement

from collectflow.flows.policy.document import Policy
from collectflow.models import BusinessDay, Customer, InvoiceBalance, days_between

log = logging.getLogger(__name__)

CALENDAR = BusinessDay.__table__
CUSTOMERS = Customer.__table__
BALANCES = InvoiceBalance.__table__
DEFAULT = ""  # the calendar of customers without a country
MARGIN = timedelta(days=7)


def fill_calendar(conn: Connection, policy: Policy, as_of: date) -> int:
    """Rebuild the calendar for every customer country, from the earliest to the latest due
    date owed (and `as_of`), when some ladder counts business days (offsets or pacing). Returns
    the rows written."""
    conn.execute(delete(CALENDAR))
    if not any(ladder.needs_calendar for ladder in policy.ladders.values()):
        return 0
    first, last = conn.execute(
        select(func.min(BALANCES.c.due_on), func.max(BALANCES.c.due_on))
    ).one()
    start = min(first or as_of, as_of) - MARGIN
    end = max(last or as_of, as_of) + MARGIN
    countries = set(conn.scalars(select(customer_country(CUSTOMERS.c.country)).distinct()))
    rows: list[dict[str, Any]] = []
    for country in countries | {DEFAULT}:
        observed = country or policy.contact.holidays_country
        days_off = public_holidays(observed, range(start.year, end.year + 1))
        rows += calendar_rows(country, days_off, start, end)
    conn.execute(insert(CALENDAR), rows)
    return len(rows)


def calendar_rows(
    country: str, days_off: set[date], start: date, end: date
) -> list[dict[str, Any]]:
    """One row per day from `start` to `end`; a weekend or holiday keeps the ordinal before it."""
    rows = []
    ordinal = 0
    for offset in range((end - start).days + 1):
        day = start + timedelta(days=offset)
        if day.weekday() < 5 and day not in days_off:
            ordinal += 1
        rows.append({"country": country, "day": day, "ordinal": ordinal})
    return rows


def public_holidays(country: str | None, years: Iterable[int]) -> set[date]:
    """The country's public holidays in those years; none (weekends only) when unknown."""
    if not country:
        return set()
    try:
        return set(holidays.country_holidays(country, years=list(years)))
    except NotImplementedError:
        log.warning("no holiday calendar for country %r: counting weekends only", country)
        return set()


def customer_country(column: ColumnElement[str | None]) -> ColumnElement[str]:
    """The calendar key of a customer's country column: upper-case code, '' when unknown."""
    return func.coalesce(func.nullif(func.upper(func.trim(column)), ""), DEFAULT)


def days_elapsed(
    as_of: date,
    since: ColumnElement[date],
    country: ColumnElement[str | None],
    business: ColumnElement[bool],
) -> ColumnElement[int]:
    """Days from `since` to `as_of`: business days in `country` where `business`, else
    calendar days. Negative when `since` is later."""

    def ordinal(day: Any) -> ColumnElement[int]:
        return (
            select(CALENDAR.c.ordinal)
            .where(CALENDAR.c.country == customer_country(country), CALENDAR.c.day == day)
            .scalar_subquery()
        )

    return case((business, ordinal(as_of) - ordinal(since)), else_=days_between(as_of, since))
