"""What is at stake on each queue item, and the worklist order it gives.

Expected loss = overdue balance x risk x the age factor of the oldest overdue invoice
(policy `risk.age_factors`): the money owed past due, how likely this customer is to keep
paying late (the day's risk score), and how much of a late balance that old is usually lost.
The overdue balance is what the last run found owing (`invoice_balances`), per currency.

Currencies are never added together silently. With `risk.reference_currency` and a rate for
every currency in the queue, expected losses are converted and the queue is one ranking.
Without, each currency is ranked on its own and the lists are interleaved by rank (every
currency's first, then every currency's second, ...): nobody can say whether 900 GBP at
stake is more than 1,000 EUR without a rate, so the order does not pretend to.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from datetime import date
from decimal import ROUND_HALF_UP, Decimal
from typing import Any

from babel.numbers import format_currency
from sqlalchemy import Connection, func, select, type_coerce

from collectflow.flows.policy.risk import Risk
from collectflow.flows.steps.render.context import babel_locale_for
from collectflow.models import CustomerFeatures, InvoiceBalance, Money, days_between

BALANCES = InvoiceBalance.__table__
FEATURES = CustomerFeatures.__table__
CENT = Decimal("0.01")


@dataclass(frozen=True)
class Stake:
    """One customer's overdue money in one currency, and what is expected to be lost of it."""

    customer_id: str
    currency: str
    overdue: Decimal
    days_overdue: int
    risk: float | None
    factor: float

    @property
    def expected_loss(self) -> Decimal | None:
        if self.risk is None:
            return None
        loss = self.overdue * Decimal(str(self.risk)) * Decimal(str(self.factor))
        return loss.quantize(CENT, rounding=ROUND_HALF_UP)


def customer_stakes(
    conn: Connection, policy: Risk, as_of: date, customers: Any
) -> dict[str, list[Stake]]:
    """Per customer of the `customers` subquery (ids), its stakes, one per currency owed past
    due on `as_of`, the largest expected loss first."""
    rows = conn.execute(
        select(
            BALANCES.c.customer_id,
            BALANCES.c.currency,
            type_coerce(func.sum(BALANCES.c.owed), Money),
            func.max(days_between(as_of, BALANCES.c.due_on)),
            FEATURES.c.risk,
        )
        .select_from(BALANCES.outerjoin(FEATURES, FEATURES.c.customer_id == BALANCES.c.customer_id))
        .where(BALANCES.c.due_on < as_of, BALANCES.c.customer_id.in_(customers))
        .group_by(BALANCES.c.customer_id, BALANCES.c.currency, FEATURES.c.risk)
    ).all()
    stakes: dict[str, list[Stake]] = defaultdict(list)
    for customer_id, currency, owed, days, risk in rows:
        stakes[customer_id].append(
            Stake(customer_id, currency, owed, int(days), risk, policy.age_factor(int(days)))
        )
    for lines in stakes.values():
        lines.sort(key=lambda s: (s.expected_loss is None, -(s.expected_loss or 0), s.currency))
    return stakes


def comparable(policy: Risk, currencies: set[str]) -> bool:
    """Whether every currency has a rate to the reference currency."""
    return all(policy.rate(currency) is not None for currency in currencies)


def in_reference(policy: Risk, stakes: list[Stake]) -> Decimal | None:
    """The customer's expected loss in the reference currency (None: nothing at stake)."""
    losses = [s.expected_loss * policy.rate(s.currency) for s in stakes if s.expected_loss]
    return sum(losses, Decimal(0)).quantize(CENT) if losses else None


def rank_items(policy: Risk, items: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Order queue items by expected loss (see the module's docstring) and give each its
    `rank` and `rank_scope` (the reference currency, or its own currency)."""
    at_stake = [item for item in items if item["expected_loss"] is not None]
    rest = [item for item in items if item["expected_loss"] is None]
    currencies = {item["currency"] for item in at_stake}
    if policy.reference_currency and comparable(policy, currencies):
        at_stake.sort(key=lambda item: (-item["expected_loss_reference"], item["id"]))
        for number, item in enumerate(at_stake, 1):
            item["rank"], item["rank_scope"] = number, policy.reference_currency
    else:
        by_currency: dict[str, list[dict[str, Any]]] = defaultdict(list)
        for item in sorted(at_stake, key=lambda item: (-item["expected_loss"], item["id"])):
            by_currency[item["currency"]].append(item)
        for currency, ranked in by_currency.items():
            for number, item in enumerate(ranked, 1):
                item["rank"], item["rank_scope"] = number, currency
        at_stake.sort(key=lambda item: (item["rank"], item["currency"], item["id"]))
    for item in rest:
        item["rank"], item["rank_scope"] = None, None
    return at_stake + rest


def money(amount: Decimal, currency: str, locale: str) -> str:
    """An amount as the customer's emails write it (Babel, the customer's locale)."""
    return format_currency(amount, currency, locale=babel_locale_for(locale or "en"))


def why(item: dict[str, Any], locale: str) -> str:
    """One line: how the expected loss is made, and where that puts the item."""
    if item["overdue"] is None:
        return "nothing overdue on record: listed after the money at stake, oldest first"
    owed = money(Decimal(item["overdue"]), item["currency"], locale)
    if item["risk"] is None:
        return f"{owed} overdue, not scored yet (run the daily run): listed after the scored"
    loss = money(Decimal(item["expected_loss"]), item["currency"], locale)
    scope = (
        f"in {item['rank_scope']} at the policy's rates"
        if item["rank_scope"] != item["currency"]
        else f"among {item['currency']} items (no rate set: currencies are not added)"
    )
    return (
        f"{owed} overdue x risk {item['risk']:.2f} x {item['age_factor']:g} "
        f"({item['days_overdue']} days overdue) = {loss} at stake; #{item['rank']} {scope}"
    )
