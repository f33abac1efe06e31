"""Pay links: where a customer pays an invoice today, even while a payment system is down.

An invoice's own `payment_url` (from the billing system, invoices.csv) comes first. Without
one, the link is built from the first gateway in the policy's order (`Policy.payment_gateways`)
whose outage window is not open on the day: while the outage detector (flows/steps/outage.py)
holds a gateway's window open, customers are offered the next healthy gateway instead. When
every gateway is down, the first is offered anyway, so a message never lacks a way to pay.

Render looks the open windows up once per run (`pay_offer`) and builds each invoice's link with
`pay_link`; the customer page asks `payment_links` for the invoices of one message.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass
from datetime import date
from typing import Any
from urllib.parse import quote

from sqlalchemy import Connection, Select, func, or_, select

from collectflow.flows.ledger.balances import ZERO, settled_amount, settling
from collectflow.flows.policy.document import Policy
from collectflow.flows.policy.gateways import Gateway
from collectflow.models import Invoice, OutageWindow, Payment

INVOICES = Invoice.__table__
OUTAGES = OutageWindow.__table__
PAYMENTS = Payment.__table__

LEDGER = "ledger"
"""The gateway of a PayLink that is the invoice's own URL from the ledger."""


@dataclass(frozen=True)
class PayLink:
    """Where to pay one invoice: the gateway whose link it is ("ledger" for the invoice's own
    URL) and the URL."""

    invoice_id: str
    gateway: str
    url: str


@dataclass(frozen=True)
class PayOffer:
    """The gateway a day's messages offer for invoices without their own URL, and whether it
    stands in for a preferred one that is down (messages then say so)."""

    gateway: Gateway
    fallback: bool = False


def pay_offer(conn: Connection, policy: Policy, as_of: date) -> PayOffer:
    """The day's offer: one query for the open outage windows, whatever the number of messages."""
    gateway = offered_gateway(policy, open_outages(conn, as_of))
    return PayOffer(gateway, gateway.name != policy.payment_gateways()[0].name)


def open_outages(conn: Connection, as_of: date) -> frozenset[str]:
    """The gateways whose outage window is open on `as_of` (started by then, not ended before)."""
    return frozenset(
        conn.execute(
            select(OUTAGES.c.gateway)
            .where(
                OUTAGES.c.started_on <= as_of,
                or_(OUTAGES.c.ended_on.is_(None), OUTAGES.c.ended_on >= as_of),
            )
            .distinct()
        ).scalars()
    )


def offered_gateway(policy: Policy, down: Collection[str]) -> Gateway:
    """The first gateway in policy order that is not `down`; the first one when all are."""
    gateways = policy.payment_gateways()
    return next((gateway for gateway in gateways if gateway.name not in down), gateways[0])


def pay_link(invoice_id: str, ledger_url: str | None, gateway: Gateway) -> PayLink:
    """The invoice's own URL when the ledger has one, else the gateway's, for one invoice."""
    if ledger_url:
        return PayLink(invoice_id, LEDGER, ledger_url)
    return PayLink(
        invoice_id, gateway.name, gateway.url.format(invoice_id=quote(invoice_id, safe=""))
    )


def payment_links(
    conn: Connection, policy: Policy, invoice_ids: Sequence[str], as_of: date
) -> dict[str, PayLink]:
    """Today's pay link per invoice of `invoice_ids` still owed as of `as_of`.

    Paid, credited and void invoices are absent (nobody is asked to pay them again); an
    invoice owed and disputed keeps its link (the customer may still pay it). Owed follows
    flows/ledger/balances.py's rule, over the given invoices' payments only.
    """
    if not invoice_ids:
        return {}
    gateway = offered_gateway(policy, open_outages(conn, as_of))
    return {
        row.invoice_id: pay_link(row.invoice_id, row.payment_url, gateway)
        for row in conn.execute(_owed_invoices(invoice_ids, as_of))
    }


def _owed_invoices(invoice_ids: Sequence[str], as_of: date) -> Select[Any]:
    """The given invoices that still owe money on `as_of`, with their own URL."""
    settled = (
        select(PAYMENTS.c.invoice_id, settled_amount().label("settled"))
        .where(
            PAYMENTS.c.invoice_id.in_(invoice_ids),
            PAYMENTS.c.attempted_on <= as_of,
            settling(),
        )
        .group_by(PAYMENTS.c.invoice_id)
        .subquery("settled")
    )
    owed = INVOICES.c.amount - func.coalesce(settled.c.settled, ZERO)
    return (
        select(INVOICES.c.invoice_id, INVOICES.c.payment_url)
        .select_from(INVOICES.outerjoin(settled, settled.c.invoice_id == INVOICES.c.invoice_id))
        .where(
            INVOICES.c.invoice_id.in_(invoice_ids),
            INVOICES.c.issued_on <= as_of,
            INVOICES.c.status.in_(("open", "disputed")),
            owed > ZERO,
        )
    )
