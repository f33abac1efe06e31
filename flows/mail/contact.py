"""Contact rules: who may be written to, when, and how often. They apply to every message
to a customer, whatever its kind (reminder, campaign, ...); internal mail to staff is exempt.

- Opt-outs and bounced addresses live in `contact_blocks`, apart from the ledger's
  `do_not_contact`, so importing customers again never lifts an opt-out.
- Quiet hours: plan gives each message a `not_before` instant, the start of the day's sending
  window in the customer's own timezone, and delivery sends only inside the window.
- The cap: at most N messages to one customer in any window of D business dates, counted
  over sent and in-flight messages, checked just before claiming (so campaigns count too).

The contact step of the day (steps/contact.py) and delivery's claims (claims.py) both apply
them; this module is the one place they are written.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import UTC, date, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from sqlalchemy import (
    Connection,
    Engine,
    and_,
    case,
    exists,
    func,
    or_,
    select,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.sql.expression import ColumnElement

from collectflow.flows.errors import CollectflowError
from collectflow.flows.policy.contact import Cap, QuietHours
from collectflow.models import ContactBlock, Customer, Message

MESSAGES = Message.__table__
CUSTOMERS = Customer.__table__
BLOCKS = ContactBlock.__table__

INTERNAL = "internal"
OPTED_OUT = "opted_out"
BOUNCED = "bounced"
KEY = ["scope", "value"]


def to_customer() -> ColumnElement[bool]:
    """The (correlated) message goes to a customer, so contact rules apply to it."""
    return MESSAGES.c.kind != INTERNAL


def opted_out() -> ColumnElement[bool]:
    """The (correlated) message's customer or address has opted out."""
    return exists().where(
        BLOCKS.c.reason == OPTED_OUT,
        or_(
            and_(BLOCKS.c.scope == "customer", BLOCKS.c.value == MESSAGES.c.customer_id),
            and_(BLOCKS.c.scope == "address", BLOCKS.c.value == func.lower(MESSAGES.c.to_address)),
        ),
    )


def address_bounced() -> ColumnElement[bool]:
    """The (correlated) message's address bounced permanently before."""
    return exists().where(
        BLOCKS.c.reason == BOUNCED,
        BLOCKS.c.scope == "address",
        BLOCKS.c.value == func.lower(MESSAGES.c.to_address),
    )


def block(
    conn: Connection, scope: str, values: Iterable[str], reason: str, detail: str, at: datetime
) -> int:
    """Record that customers (`scope='customer'`) or addresses must not be written to.

    The first reason recorded stays: an address that bounced and then opted out is blocked
    either way.
    """
    unique = {value.strip().lower() if scope == "address" else value for value in values}
    rows = [
        {"scope": scope, "value": value, "reason": reason, "detail": detail, "at": at}
        for value in sorted(unique)
    ]
    if not rows:
        return 0
    dialect = postgresql if conn.dialect.name == "postgresql" else sqlite
    statement = dialect.insert(BLOCKS).values(rows).on_conflict_do_nothing(index_elements=KEY)
    return conn.execute(statement).rowcount


def zone_of(name: str | None) -> ZoneInfo:
    """The customer's timezone; UTC when unknown (import validated it, so this is rare)."""
    try:
        return ZoneInfo(name or "UTC")
    except (ZoneInfoNotFoundError, ValueError):
        return ZoneInfo("UTC")


def window_start(day: date, zone: str | None, quiet: QuietHours) -> datetime:
    """When the sending window of `day` opens in `zone`, as a UTC instant."""
    local = datetime.combine(day, quiet.send_from, tzinfo=zone_of(zone))
    return local.astimezone(UTC)


def next_window_start(now: datetime, zone: str | None, quiet: QuietHours) -> datetime | None:
    """None when `now` is inside the customer's sending window, else when it next opens."""
    local = now.astimezone(zone_of(zone))
    if quiet.send_from <= local.time() < quiet.send_until:
        return None
    day = local.date() if local.time() < quiet.send_from else local.date() + timedelta(days=1)
    return window_start(day, zone, quiet)


def quiet_deferrals(
    rows: Iterable[Mapping[str, Any]], now: datetime, quiet: QuietHours | None
) -> dict[int, datetime]:
    """Among claimable rows (id, kind, timezone), those outside their window, and when to retry."""
    if quiet is None:
        return {}
    deferred = {}
    for row in rows:
        if row["kind"] == INTERNAL:
            continue
        opens = next_window_start(now, row["timezone"], quiet)
        if opens is not None:
            deferred[row["id"]] = opens
    return deferred


def _recent(other: Any, as_of: date, cap: Cap) -> ColumnElement[int]:
    """Messages sent to the (correlated) message's customer in the cap's window."""
    return (
        select(func.count())
        .where(
            other.c.customer_id == MESSAGES.c.customer_id,
            other.c.kind != INTERNAL,
            other.c.status == "sent",
            other.c.sent_on > as_of - timedelta(days=cap.days),
        )
        .scalar_subquery()
    )


def must_wait(as_of: date, cap: Cap | None) -> ColumnElement[str | None]:
    """Why the (correlated) message must wait, or NULL: 'cap' when its customer reached the
    cap, 'same_customer' when another of their messages is being sent. (Within one batch,
    `later_in_batch` holds back all but a customer's first message.)"""
    other = MESSAGES.alias("other")
    busy = exists().where(
        other.c.customer_id == MESSAGES.c.customer_id,
        other.c.kind != INTERNAL,
        other.c.status == "sending",
    )
    reasons: list[tuple[ColumnElement[bool], str]] = []
    if cap is not None:
        reasons.append((_recent(other, as_of, cap) >= cap.messages, "cap"))
    reasons.append((busy, "same_customer"))
    return case((~to_customer(), None), *reasons, else_=None)


def later_in_batch(rows: Iterable[Mapping[str, Any]]) -> set[int]:
    """Among a batch's rows (id, kind, customer_id) in id order, the customer messages whose
    customer has an earlier one in the batch: one message at a time per customer, so the cap
    holds within a batch too."""
    seen: set[str] = set()
    later = set()
    for row in rows:
        if row["kind"] == INTERNAL:
            continue
        if row["customer_id"] in seen:
            later.add(row["id"])
        seen.add(row["customer_id"])
    return later


def record_opt_out(
    engine: Engine, customer_id: str | None, address: str | None, detail: str
) -> int:
    """Record an opt-out by customer id (the unsubscribe link or mailto names it) or by
    address; from then on nothing but internal mail goes to them. Returns 1, or 0 if known.

    An unknown customer id is refused: an opt-out that matches no one would protect no one.
    """
    if (customer_id is None) == (address is None):
        raise CollectflowError("name either a customer id or an --address to opt out")
    with engine.begin() as conn:
        if customer_id is not None:
            customer_id = customer_id.removeprefix("unsubscribe-")
            known = conn.scalar(select(func.count()).where(CUSTOMERS.c.customer_id == customer_id))
            if not known:
                raise CollectflowError(f"no customer {customer_id!r} in the ledger")
            return block(conn, "customer", [customer_id], OPTED_OUT, detail, datetime.now(UTC))
        return block(conn, "address", [str(address)], OPTED_OUT, detail, datetime.now(UTC))
