"""Effectiveness metrics: what followed each message.

Message metrics (docs/metrics.md has every definition) are aggregated in SQL by any of the
dimensions in `DIMENSIONS`; only the days-to-pay histogram comes back to Python, for exact
medians. How the portfolio as a whole pays (DSO, CEI) is portfolio.py.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import date
from decimal import ROUND_HALF_UP, Decimal
from typing import Any

from sqlalchemy import Connection, and_, case, func, select, type_coerce
from sqlalchemy.sql.expression import ColumnElement, Subquery

from collectflow.flows.ledger.balances import ZERO, settled_amount, settling
from collectflow.flows.steps.outcomes import measured, touch_on
from collectflow.models import (
    Case,
    Message,
    MessageItem,
    Money,
    Outcome,
    Payment,
    PaymentAttribution,
    days_between,
    month_of,
)

MESSAGES = Message.__table__
ITEMS = MessageItem.__table__
CASES = Case.__table__
OUTCOMES = Outcome.__table__
PAYMENTS = Payment.__table__
ATTRIBUTIONS = PaymentAttribution.__table__

DIMENSIONS = ("stage", "template", "variant", "segment", "cause", "month", "kind")
NONE_LABEL = "-"
CAMPAIGN_RANK = 1000  # campaigns are listed after every ladder stage
TENTH = Decimal("0.1")


def round_tenth(value: Decimal) -> Decimal:
    """Days and percentages are shown to one decimal, rounding halves up (73.65 -> 73.7)."""
    return value.quantize(TENTH, rounding=ROUND_HALF_UP)


def ratio(part: int, whole: int) -> float | None:
    return round(part / whole, 4) if whole else None


def item_cures(cure_days: int, touch: ColumnElement[date]) -> Subquery:
    """Per message item: what was owed at send and what of it was paid within `cure_days`.

    Payments count from the touch day to `cure_days` after it, net of refunds, whoever is
    credited with them: cure is about the money, attribution about the message.
    """
    since = days_between(PAYMENTS.c.attempted_on, touch)
    paid = (
        select(
            ITEMS.c.message_id,
            ITEMS.c.invoice_id,
            settled_amount().label("paid"),
        )
        .select_from(
            ITEMS.join(MESSAGES, MESSAGES.c.id == ITEMS.c.message_id).join(
                PAYMENTS, PAYMENTS.c.invoice_id == ITEMS.c.invoice_id
            )
        )
        .where(settling(), since >= 0, since <= cure_days)
        .group_by(ITEMS.c.message_id, ITEMS.c.invoice_id)
        .subquery("paid_in_window")
    )
    paid_amount = type_coerce(func.coalesce(paid.c.paid, ZERO), Money)
    return (
        select(
            ITEMS.c.message_id,
            ITEMS.c.invoice_id,
            ITEMS.c.currency,
            ITEMS.c.owed,
            ITEMS.c.recovered,
            case((paid_amount >= ITEMS.c.owed, 1), else_=0).label("cured"),
            type_coerce(
                case((paid_amount >= ITEMS.c.owed, ITEMS.c.owed), else_=paid_amount), Money
            ).label("cured_amount"),
        )
        .select_from(
            ITEMS.outerjoin(
                paid,
                and_(
                    paid.c.message_id == ITEMS.c.message_id, paid.c.invoice_id == ITEMS.c.invoice_id
                ),
            )
        )
        .subquery("item_cures")
    )


def message_cures(cure_days: int, touch: ColumnElement[date]) -> Subquery:
    """Per message: 1 when every invoice it asked for was paid within `cure_days`, else 0."""
    items = item_cures(cure_days, touch)
    return (
        select(items.c.message_id, func.min(items.c.cured).label("cured"))
        .group_by(items.c.message_id)
        .subquery("message_cures")
    )


def message_facts(
    as_of: date, cure_days: int, since: date | None = None, until: date | None = None
) -> Subquery:
    """One row per measured message touched in [since, until]: its dimensions and results."""
    touch = touch_on()
    cures = message_cures(cure_days, touch)
    decided = days_between(as_of, touch) >= cure_days
    window = [measured()]
    if since:
        window.append(touch >= since)
    if until:
        window.append(touch <= until)
    return (
        select(
            MESSAGES.c.id.label("message_id"),
            MESSAGES.c.kind,
            MESSAGES.c.stage,
            case(
                (MESSAGES.c.kind == "campaign", CAMPAIGN_RANK), else_=MESSAGES.c.stage_index
            ).label("rank"),
            MESSAGES.c.template,
            func.coalesce(MESSAGES.c.variant, NONE_LABEL).label("variant"),
            CASES.c.segment,
            func.coalesce(MESSAGES.c.cause, NONE_LABEL).label("cause"),
            month_of(touch).label("month"),
            OUTCOMES.c.outcome,
            OUTCOMES.c.days_to_pay,
            case((decided, 1), else_=0).label("decided"),
            case((and_(decided, cures.c.cured == 1), 1), else_=0).label("cured"),
        )
        .select_from(
            MESSAGES.join(CASES, CASES.c.id == MESSAGES.c.case_id)
            .outerjoin(OUTCOMES, OUTCOMES.c.message_id == MESSAGES.c.id)
            .outerjoin(cures, cures.c.message_id == MESSAGES.c.id)
        )
        .where(*window)
        .subquery("facts")
    )


@dataclass
class Figures:
    """The message metrics of one group (one stage, one template and month, ...)."""

    key: dict[str, str]
    messages: int = 0
    decided: int = 0  # messages whose cure window has closed
    cured: int = 0
    outcomes: dict[str, int] = field(default_factory=dict)
    median_days_to_pay: float | None = None
    p90_days_to_pay: int | None = None
    asked: dict[str, Decimal] = field(default_factory=dict)
    recovered: dict[str, Decimal] = field(default_factory=dict)  # last touch
    recovered_first_touch: dict[str, Decimal] = field(default_factory=dict)
    asked_decided: dict[str, Decimal] = field(default_factory=dict)
    cured_amount: dict[str, Decimal] = field(default_factory=dict)

    @property
    def cure_rate(self) -> float | None:
        return ratio(self.cured, self.decided)

    @property
    def bounce_rate(self) -> float | None:
        return ratio(self.outcomes.get("bounced", 0), self.messages)

    @property
    def opt_out_rate(self) -> float | None:
        return ratio(self.outcomes.get("opted_out", 0), self.messages)

    def amount_cure_rate(self, currency: str) -> float | None:
        asked = self.asked_decided.get(currency, Decimal(0))
        return round(float(self.cured_amount.get(currency, 0) / asked), 4) if asked else None

    def to_dict(self) -> dict[str, Any]:
        money = ("asked", "recovered", "recovered_first_touch", "asked_decided", "cured_amount")
        document: dict[str, Any] = {
            **self.key,
            "messages": self.messages,
            "decided": self.decided,
            "cured": self.cured,
            "cure_rate": self.cure_rate,
            "outcomes": self.outcomes,
            "bounce_rate": self.bounce_rate,
            "opt_out_rate": self.opt_out_rate,
            "median_days_to_pay": self.median_days_to_pay,
            "p90_days_to_pay": self.p90_days_to_pay,
        }
        for name in money:
            document[name] = {k: str(v) for k, v in sorted(getattr(self, name).items())}
        document["amount_cure_rate"] = {c: self.amount_cure_rate(c) for c in sorted(self.asked)}
        return document


def breakdown(
    conn: Connection,
    dims: Sequence[str],
    as_of: date,
    cure_days: int,
    since: date | None = None,
    until: date | None = None,
) -> list[Figures]:
    """Message metrics grouped by `dims` (names from DIMENSIONS), ordered by them."""
    unknown = set(dims) - set(DIMENSIONS)
    if unknown:
        raise ValueError(f"unknown dimension(s) {', '.join(sorted(unknown))}")
    facts = message_facts(as_of, cure_days, since, until)
    keys = [facts.c[name] for name in dims]
    groups: dict[tuple[str, ...], Figures] = {}

    def figures(row: Iterable[Any]) -> Figures:
        values = tuple(str(value) for value in row)
        if values not in groups:
            groups[values] = Figures(dict(zip(dims, values, strict=True)))
        return groups[values]

    order = [func.avg(facts.c.rank) if name == "stage" else facts.c[name] for name in dims]
    counts = select(*keys, func.count(), func.sum(facts.c.decided), func.sum(facts.c.cured))
    for row in conn.execute(counts.group_by(*keys).order_by(*order)):
        group = figures(row[: len(dims)])
        group.messages, group.decided, group.cured = (int(n or 0) for n in row[len(dims) :])
    outcome = func.coalesce(facts.c.outcome, "pending")
    for *key, name, count in conn.execute(
        select(*keys, outcome, func.count()).group_by(*keys, outcome)
    ):
        figures(key).outcomes[name] = count
    _days_to_pay(conn, facts, keys, figures)
    _money(conn, facts, keys, cure_days, figures)
    return list(groups.values())


def _days_to_pay(conn: Connection, facts: Subquery, keys: list[Any], figures: Any) -> None:
    """Median and 90th percentile (nearest rank) of days to pay, from a histogram."""
    days = facts.c.days_to_pay
    histograms: dict[tuple[str, ...], list[tuple[int, int]]] = defaultdict(list)
    rows = conn.execute(
        select(*keys, days, func.count())
        .where(days.is_not(None))
        .group_by(*keys, days)
        .order_by(*keys, days)
    )
    for *key, value, count in rows:
        histograms[tuple(key)].append((int(value), int(count)))
    for key, histogram in histograms.items():
        group = figures(key)
        group.median_days_to_pay = median(histogram)
        group.p90_days_to_pay = nearest_rank(histogram, 0.9)


def _money(
    conn: Connection, facts: Subquery, keys: list[Any], cure_days: int, figures: Any
) -> None:
    """Asked, recovered (last and first touch) and cured amounts, per group and currency."""
    items = item_cures(cure_days, touch_on())
    decided = facts.c.decided == 1

    def total(amount: Any) -> Any:
        return type_coerce(func.coalesce(func.sum(amount), ZERO), Money)

    rows = conn.execute(
        select(
            *keys,
            items.c.currency,
            total(items.c.owed),
            total(items.c.recovered),
            total(case((decided, items.c.owed), else_=ZERO)),
            total(case((decided, items.c.cured_amount), else_=ZERO)),
        )
        .select_from(facts.join(items, items.c.message_id == facts.c.message_id))
        .group_by(*keys, items.c.currency)
    )
    for *key, currency, asked, recovered, asked_decided, cured in rows:
        group = figures(key)
        group.asked[currency] = asked
        group.recovered[currency] = recovered
        group.asked_decided[currency] = asked_decided
        group.cured_amount[currency] = cured
        group.recovered_first_touch[currency] = Decimal("0.0000")
    credited = (
        select(
            ATTRIBUTIONS.c.first_message_id.label("message_id"),
            ATTRIBUTIONS.c.invoice_id,
            type_coerce(func.sum(ATTRIBUTIONS.c.amount), Money).label("paid"),
        )
        .group_by(ATTRIBUTIONS.c.first_message_id, ATTRIBUTIONS.c.invoice_id)
        .subquery("first_touch")
    )
    capped = case((credited.c.paid < ITEMS.c.owed, credited.c.paid), else_=ITEMS.c.owed)
    rows = conn.execute(
        select(*keys, ITEMS.c.currency, total(capped))
        .select_from(
            facts.join(credited, credited.c.message_id == facts.c.message_id).join(
                ITEMS,
                and_(
                    ITEMS.c.message_id == credited.c.message_id,
                    ITEMS.c.invoice_id == credited.c.invoice_id,
                ),
            )
        )
        .group_by(*keys, ITEMS.c.currency)
    )
    for *key, currency, amount in rows:
        figures(key).recovered_first_touch[currency] = amount


def median(histogram: Sequence[tuple[int, int]]) -> float | None:
    """The median of values given as (value, count) pairs in ascending order."""
    n = sum(count for _, count in histogram)
    if not n:
        return None
    lower = nearest_position(histogram, (n + 1) // 2)
    upper = nearest_position(histogram, n // 2 + 1)
    return (lower + upper) / 2


def nearest_rank(histogram: Sequence[tuple[int, int]], share: float) -> int | None:
    """The nearest-rank percentile (`share` of 1) of (value, count) pairs in ascending order."""
    n = sum(count for _, count in histogram)
    if not n:
        return None
    rank = max(1, math.ceil(Decimal(str(share)) * n))
    return nearest_position(histogram, rank)


def nearest_position(histogram: Sequence[tuple[int, int]], position: int) -> int:
    """The value at 1-based `position` in the sorted values the histogram describes."""
    seen = 0
    for value, count in histogram:
        seen += count
        if seen >= position:
            return value
    return histogram[-1][0]


def recovery_curves(
    conn: Connection,
    as_of: date,
    cure_days: int,
    since: date | None = None,
    until: date | None = None,
) -> dict[str, list[float]]:
    """Per stage, the share of messages paid in full (and credited to them) by each day after
    the send, day 0 to `cure_days`, over messages whose cure window has closed."""
    facts = message_facts(as_of, cure_days, since, until)
    closed = facts.c.decided == 1
    totals = dict(
        conn.execute(
            select(facts.c.stage, func.count())
            .where(closed)
            .group_by(facts.c.stage)
            .order_by(func.min(facts.c.rank))
        ).all()
    )
    curves = {stage: [0.0] * (cure_days + 1) for stage in totals}
    paid = conn.execute(
        select(facts.c.stage, facts.c.days_to_pay, func.count())
        .where(closed, facts.c.outcome == "paid", facts.c.days_to_pay <= cure_days)
        .group_by(facts.c.stage, facts.c.days_to_pay)
    )
    for stage, day, count in paid:
        for later in range(int(day), cure_days + 1):
            curves[stage][later] += count / totals[stage]
    return {stage: [round(share, 4) for share in curve] for stage, curve in curves.items()}
