"""Payments after a message, by gateway: where customers paid once reminded.

Each succeeded payment credited to a message (last touch, `payment_attributions`, rebuilt by
the outcomes step) is counted under the gateway that took it (payments.csv `gateway`; a
payment naming none, such as a bank transfer, under "none"). While a gateway's outage window is
open, messages offer the next one (flows/ledger/paylinks.py): the backup's share shows here.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import date
from decimal import Decimal
from typing import Any

from sqlalchemy import Connection, func, select, type_coerce

from collectflow.flows.measure.metrics import message_facts
from collectflow.models import Invoice, Money, Payment, PaymentAttribution

ATTRIBUTIONS = PaymentAttribution.__table__
INVOICES = Invoice.__table__
PAYMENTS = Payment.__table__

NO_GATEWAY = "none"


@dataclass
class GatewayPayments:
    """The payments one gateway took after a message: how many, for how many messages, and
    how much per currency."""

    gateway: str
    payments: int = 0
    messages: int = 0
    amounts: dict[str, Decimal] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "gateway": self.gateway,
            "payments": self.payments,
            "messages": self.messages,
            "amounts": {currency: str(amount) for currency, amount in sorted(self.amounts.items())},
        }


def payments_by_gateway(
    conn: Connection,
    as_of: date,
    cure_days: int,
    since: date | None = None,
    until: date | None = None,
) -> list[GatewayPayments]:
    """Per gateway, the payments credited to the messages the report covers (touched in
    [since, until]), most payments first."""
    facts = message_facts(as_of, cure_days, since, until)
    gateway = func.coalesce(PAYMENTS.c.gateway, NO_GATEWAY).label("gateway")
    credited = (
        facts.join(ATTRIBUTIONS, ATTRIBUTIONS.c.message_id == facts.c.message_id)
        .join(PAYMENTS, PAYMENTS.c.payment_id == ATTRIBUTIONS.c.payment_id)
        .join(INVOICES, INVOICES.c.invoice_id == ATTRIBUTIONS.c.invoice_id)
    )
    paid = ATTRIBUTIONS.c.paid_on <= as_of
    groups = {
        name: GatewayPayments(name, payments, messages)
        for name, payments, messages in conn.execute(
            select(gateway, func.count(), func.count(ATTRIBUTIONS.c.message_id.distinct()))
            .select_from(credited)
            .where(paid)
            .group_by(gateway)
        )
    }
    for name, currency, amount in conn.execute(
        select(gateway, INVOICES.c.currency, type_coerce(func.sum(ATTRIBUTIONS.c.amount), Money))
        .select_from(credited)
        .where(paid)
        .group_by(gateway, INVOICES.c.currency)
    ):
        groups[name].amounts[currency] = amount
    return sorted(groups.values(), key=lambda group: (-group.payments, group.gateway))
