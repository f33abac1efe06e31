"""The operator queue: cases that need a person, with the reason; claimed by one operator.

Reasons (`REASONS`): `escalated` (past the ladder), `disputed` (a dispute to decide),
`bounced` (the address refused mail), `refund_due` (paid twice or overpaid), `write_off` (a
proposed write-off to confirm) and `delivery_in_doubt` (a message that may or may not have
gone). An order issue (a payment failed for an order reason) opens a dispute, so it is queued
as `disputed`. Steps add items with `queue_cases`; an item is added once per case and reason,
logged in the case's events, and resolved when its matter is settled: by the action that
settles it (resolve a dispute, confirm a write-off) or, for matters settled outside
Collectflow (a refund paid, an address corrected), by the operator marking it done
(`complete_item`).

Read back from the inbox (flows/feedback/): `no_valid_address` (a bounce said the customer's
address does not exist: it is blocked and nothing more goes out until the ledger gives a new
address and the operator marks the item done) and `reply_needs_reading` (a reply the rules
could not read surely enough; settled by `confirm-reply`, which applies what it says). Like
every item, both are resolved when their case closes, and neither is set aside while the case
is paused: a customer's words and a dead address need a person whatever the case waits for.
"""

from __future__ import annotations

from datetime import date
from typing import Any

from sqlalchemy import Connection, Select, and_, func, insert, literal, select, update
from sqlalchemy.sql.expression import ColumnElement

from collectflow.flows.cases.events import json_detail, record_events
from collectflow.flows.errors import ClaimRefused
from collectflow.models import QueueItem, insert_ignoring_conflicts

QUEUE = QueueItem.__table__
REASONS = frozenset(
    {
        "escalated",
        "disputed",
        "bounced",
        "refund_due",
        "write_off",
        "delivery_in_doubt",
        "claimed_paid_not_found",  # the customer said paid; nothing arrived (feedback/claims.py)
        "no_valid_address",  # a bounce: the address does not exist (feedback/filing.py)
        "reply_needs_reading",  # a reply to read and confirm (feedback/replies.py)
    }
)


# Reasons an operator action settles; marking such an item done by hand would hide the matter.
SETTLED_BY_ACTION = {
    "disputed": "resolve-dispute",
    "write_off": "write-off",
    "reply_needs_reading": "confirm-reply",
}


def queue_cases(conn: Connection, cases: Select[Any], reason: str, as_of: date) -> int:
    """Put the selected (case id, customer id) rows in the operator queue, once per reason.

    An item resolved earlier for the same case and reason stays resolved (the queue keeps one
    row per case and reason); `reopen_item` brings it back when the matter comes up again.
    """
    if reason not in REASONS:
        raise ValueError(f"{reason!r} is not a queue reason ({', '.join(sorted(REASONS))})")
    selected = cases.subquery()
    source = select(
        selected.c[0], selected.c[1], literal(reason), literal(as_of, QUEUE.c.created_on.type)
    )
    before = conn.execute(select(func.coalesce(func.max(QUEUE.c.id), 0))).scalar_one()
    statement = insert_ignoring_conflicts(
        conn.dialect.name,
        QUEUE,
        ["case_id", "reason"],
        ["case_id", "customer_id", "reason", "created_on"],
        source,
    )
    queued = conn.execute(statement).rowcount
    record_events(
        conn,
        select(QUEUE.c.case_id, json_detail("reason", QUEUE.c.reason)).where(QUEUE.c.id > before),
        "queued",
        as_of,
    )
    return queued


def queue_invoices(
    conn: Connection,
    reason: str,
    customer_id: ColumnElement[Any],
    invoice_id: ColumnElement[Any],
    where: ColumnElement[bool],
    as_of: date,
) -> int:
    """Queue one item per invoice selected by `where`, with no case (detail = invoice id);
    returns how many. For matters of an invoice rather than a case: a refund due, a dispute
    of a customer with no open case."""
    source = select(
        literal(None, QUEUE.c.case_id.type),
        customer_id,
        literal(reason),
        invoice_id,
        literal(as_of, QUEUE.c.created_on.type),
    ).where(where)
    columns = ["case_id", "customer_id", "reason", "detail", "created_on"]
    return conn.execute(insert(QUEUE).from_select(columns, source)).rowcount


def reopened(on: date) -> dict[str, Any]:
    """What an item coming back to the queue gets: open again, unclaimed, dated `on`."""
    return {"resolved_on": None, "claimed_by": None, "created_on": on}


def reopen_item(conn: Connection, case_id: int, reason: str, as_of: date) -> None:
    """Bring back a resolved item of the case for `reason`, unclaimed and dated today."""
    conn.execute(
        update(QUEUE)
        .where(
            QUEUE.c.case_id == case_id, QUEUE.c.reason == reason, QUEUE.c.resolved_on.is_not(None)
        )
        .values(**reopened(as_of))
    )


SET_ASIDE = "set aside: case "
"""The detail of an item set aside while its case waits, followed by the case's state."""


def resolve_open_items(conn: Connection, cases: Select[Any], on: date) -> None:
    """Resolve every open item of the selected cases (ids): nothing is left to do on them."""
    conn.execute(
        update(QUEUE)
        .where(QUEUE.c.case_id.in_(cases.scalar_subquery()), QUEUE.c.resolved_on.is_(None))
        .values(resolved_on=on)
    )


def set_aside(
    conn: Connection, cases: Select[Any], reasons: tuple[str, ...], state: str, on: date
) -> None:
    """Resolve the selected cases' open items for `reasons` while the cases wait in `state`,
    saying so in the detail, so that `bring_back` finds exactly them."""
    conn.execute(
        update(QUEUE)
        .where(
            QUEUE.c.case_id.in_(cases.scalar_subquery()),
            QUEUE.c.resolved_on.is_(None),
            QUEUE.c.reason.in_(reasons),
        )
        .values(resolved_on=on, detail=SET_ASIDE + state)
    )


def bring_back(conn: Connection, cases: Select[Any], reasons: tuple[str, ...], on: date) -> None:
    """Reopen the selected cases' items for `reasons` that `set_aside` resolved."""
    conn.execute(
        update(QUEUE)
        .where(
            QUEUE.c.case_id.in_(cases.scalar_subquery()),
            QUEUE.c.resolved_on.is_not(None),
            QUEUE.c.reason.in_(reasons),
            QUEUE.c.detail.like(SET_ASIDE + "%"),
        )
        .values(**reopened(on), detail=None)
    )


def resolve_items(conn: Connection, case_id: int, reason: str, as_of: date) -> int:
    """Mark the case's open item for `reason` done."""
    return conn.execute(
        update(QUEUE)
        .where(QUEUE.c.case_id == case_id, QUEUE.c.reason == reason, QUEUE.c.resolved_on.is_(None))
        .values(resolved_on=as_of)
    ).rowcount


def open_items(conn: Connection, case_id: int) -> dict[int, str]:
    """The case's open queue items: id -> reason."""
    rows = conn.execute(
        select(QUEUE.c.id, QUEUE.c.reason).where(
            QUEUE.c.case_id == case_id, QUEUE.c.resolved_on.is_(None)
        )
    ).all()
    return dict(rows)


def queue_changes(
    conn: Connection, case_id: int, before: dict[int, str], own: str | None = None
) -> list[str]:
    """What an action did to the case's queue items, given its open items before (one line
    per item that left or came back), for the action's result; items of reason `own` are
    left out (the action says what it did to its own item)."""
    before = {id_: reason for id_, reason in before.items() if reason != own}
    after = {id_: reason for id_, reason in open_items(conn, case_id).items() if reason != own}
    left = [f"queue item {id_} ({before[id_]}) set aside" for id_ in before if id_ not in after]
    back = [
        f"queue item {id_} ({after[id_]}) back in the queue" for id_ in after if id_ not in before
    ]
    return left + back


def claim_item(conn: Connection, item_id: int, operator: str, as_of: date) -> dict[str, Any]:
    """Claim an open queue item for `operator`, so two people don't work the same case.

    One guarded UPDATE (`claimed_by IS NULL`) decides: of two operators claiming at once,
    exactly one wins. Claiming an item one already holds is a no-op.
    """
    unclaimed = and_(QUEUE.c.id == item_id, QUEUE.c.resolved_on.is_(None))
    won = conn.execute(
        update(QUEUE).where(unclaimed, QUEUE.c.claimed_by.is_(None)).values(claimed_by=operator)
    ).rowcount
    item = conn.execute(select(QUEUE).where(QUEUE.c.id == item_id)).mappings().first()
    if item is None:
        raise ClaimRefused(f"no queue item {item_id} (see `collectflow queue`)")
    if item["resolved_on"] is not None:
        raise ClaimRefused(f"queue item {item_id} was resolved on {item['resolved_on']}")
    if item["claimed_by"] != operator:
        raise ClaimRefused(f"queue item {item_id} is already claimed by {item['claimed_by']}")
    if won and item["case_id"] is not None:  # a refund due may stand without a case
        record_events(
            conn,
            select(literal(item["case_id"])),
            "queue_claimed",
            as_of,
            {"item": item_id, "reason": item["reason"]},
            actor=operator,
        )
    return dict(item)


def complete_item(
    conn: Connection, item_id: int, operator: str, note: str, as_of: date
) -> dict[str, Any]:
    """Mark an open queue item done: the operator settled its matter outside Collectflow.

    For items no other action settles (a refund paid back, a bounced address corrected, a
    message in doubt checked with the customer, an escalation handled). The item must be
    unclaimed or claimed by `operator`; an item whose matter an action settles (a dispute, a
    write-off) is refused and names that action. The case's event log keeps who, when and the
    note.
    """
    item = conn.execute(select(QUEUE).where(QUEUE.c.id == item_id)).mappings().first()
    if item is None:
        raise ClaimRefused(f"no queue item {item_id} (see `collectflow queue`)")
    if item["resolved_on"] is not None:
        raise ClaimRefused(f"queue item {item_id} was resolved on {item['resolved_on']}")
    if item["reason"] in SETTLED_BY_ACTION:
        raise ClaimRefused(
            f"queue item {item_id} ({item['reason']}) is settled with "
            f"`collectflow {SETTLED_BY_ACTION[item['reason']]}`, not marked done by hand"
        )
    done = conn.execute(
        update(QUEUE)
        .where(
            QUEUE.c.id == item_id,
            QUEUE.c.resolved_on.is_(None),
            (QUEUE.c.claimed_by.is_(None)) | (QUEUE.c.claimed_by == operator),
        )
        .values(resolved_on=as_of, claimed_by=operator)
    ).rowcount
    if not done:
        holder = conn.execute(select(QUEUE.c.claimed_by).where(QUEUE.c.id == item_id)).scalar()
        raise ClaimRefused(f"queue item {item_id} is claimed by {holder}")
    if item["case_id"] is not None:
        record_events(
            conn,
            select(literal(item["case_id"])),
            "queue_done",
            as_of,
            {"item": item_id, "reason": item["reason"], "note": note},
            actor=operator,
        )
    return dict(item) | {"resolved_on": as_of, "claimed_by": operator}
