"""Customers' replies, acted on: applied as their answers when the rules are sure, otherwise
put before an operator (`reply_needs_reading`), who confirms each in one action.

Filing leaves a reply the rules read with confidence `pending`; `apply_pending` then applies
each with `apply_answer` (source `reply`), exactly as the page would, each in a savepoint.
A reply the answers refuse (a promise date too far, a message not the sender's...) goes to
the operator queue with the refusal as its reason, except "already paid" about invoices no
longer owed: the money came, nothing is left to do, it is only recorded.

The queue keeps one item per case and reason, so a case's item shows its latest reply
waiting (`detail`: who wrote, the suggested intent, the first lines); replies of a customer
without an open case get an item each. `confirm_reply` applies the suggested intent (or the
one the operator names, with a date) to the item's latest reply and marks its earlier ones
read.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Sequence
from datetime import date
from typing import Any

from sqlalchemy import Connection, Engine, and_, bindparam, insert, literal, select, update
from sqlalchemy.engine import RowMapping

from collectflow.flows.cases import ActionResult
from collectflow.flows.cases.events import record_events
from collectflow.flows.cases.queue import QUEUE, queue_cases, reopened
from collectflow.flows.errors import ActionRefused, ClaimRefused
from collectflow.flows.feedback.answers import (
    ALREADY_PAID,
    INTENTS,
    NEED_TIME,
    ORDER_PROBLEM,
    Answer,
    AnswerRefused,
    apply_answer,
)
from collectflow.flows.mail.outbox import take_write_lock
from collectflow.flows.policy.document import Policy
from collectflow.models import InboundMail

INBOUND = InboundMail.__table__
REASON = "reply_needs_reading"
OTHER = "other"
CHUNK = 200

PENDING = "pending"
APPLIED = "applied"
QUEUED = "queued"
CONFIRMED = "confirmed"
READ = "read"
RECORDED = "recorded"


def answer_of(
    row: RowMapping | dict[str, Any], intent: str, said_on: date | None, actor: str, today: date
) -> Answer:
    """The answer a reply gives: its intent, the date it names, its first lines."""
    reason = json.loads(row["detail"] or "{}").get("reason")
    return Answer(
        customer_id=row["customer_id"],
        intent=intent,
        source="reply",
        message_id=row["message_id"],
        paid_on=said_on if intent == ALREADY_PAID and said_on and said_on <= today else None,
        promise_date=said_on if intent == NEED_TIME else None,
        reason=(reason or OTHER) if intent == ORDER_PROBLEM else None,
        text=row["excerpt"] or None,
        actor=actor,
    )


def apply_pending(engine: Engine, policy: Policy, today: date) -> Counter[str]:
    """Apply the replies filed `pending`, a chunk per transaction; returns how many ended
    applied, queued (refused) or recorded.

    Each answer is applied inside a savepoint: `apply_answer` may have written before it
    refuses, and only that answer is rolled back (on SQLite the transaction is begun
    explicitly first, so the driver's own transaction handling leaves savepoints alone).
    """
    counts: Counter[str] = Counter()
    while True:
        with engine.begin() as conn:
            take_write_lock(conn)
            rows = _pending(conn, CHUNK)
            for row in rows:
                counts[_apply_one(conn, policy, row, today)] += 1
        if len(rows) < CHUNK:
            return counts


def _pending(conn: Connection, limit: int) -> Sequence[RowMapping]:
    query = select(INBOUND).where(INBOUND.c.status == PENDING).order_by(INBOUND.c.id).limit(limit)
    if conn.dialect.name == "postgresql":  # two runs at once: each applies its own replies
        query = query.with_for_update(skip_locked=True)
    return conn.execute(query).mappings().all()


def _apply_one(conn: Connection, policy: Policy, row: RowMapping, today: date) -> str:
    answer = answer_of(row, row["intent"], row["said_on"], "customer", today)
    try:
        with conn.begin_nested():
            result = apply_answer(conn, policy, answer, today)
    except AnswerRefused as refusal:
        return _settle_refused(conn, row, refusal, today)
    detail = json.loads(row["detail"] or "{}") | {"changes": result.changes}
    conn.execute(
        update(INBOUND)
        .where(INBOUND.c.id == row["id"])
        .values(status=APPLIED, case_id=result.case_id, detail=json.dumps(detail, default=str))
    )
    return APPLIED


def _settle_refused(conn: Connection, row: RowMapping, refusal: AnswerRefused, today: date) -> str:
    """A reply its answer refused: recorded when it says "paid" of what is paid, else queued."""
    detail = json.loads(row["detail"] or "{}") | {"refused": str(refusal)}
    settled = row["intent"] == ALREADY_PAID and refusal.field == "invoices"
    status = RECORDED if settled else QUEUED
    conn.execute(
        update(INBOUND)
        .where(INBOUND.c.id == row["id"], INBOUND.c.status == PENDING)
        .values(status=status, detail=json.dumps(detail, default=str))
    )
    if not settled:
        queue_for_reading(conn, [dict(row) | {"why": str(refusal)}], today)
    return status


def queue_for_reading(conn: Connection, replies: Sequence[dict[str, Any]], today: date) -> None:
    """Put replies (inbound rows: id, customer_id, case_id, sender, intent, confidence,
    excerpt, and `why` they are not applied) before an operator, and link each to its item.

    One item per open case (brought back if it was done), showing the latest reply; one
    item per reply of a customer without an open case."""
    with_case = [reply for reply in replies if reply["case_id"] is not None]
    if with_case:
        replied = [reply["id"] for reply in with_case]
        cases = select(INBOUND.c.case_id, INBOUND.c.customer_id).where(INBOUND.c.id.in_(replied))
        queue_cases(conn, cases.distinct(), REASON, today)
        ids = sorted({reply["case_id"] for reply in with_case})
        conn.execute(
            update(QUEUE)
            .where(
                QUEUE.c.case_id.in_(ids), QUEUE.c.reason == REASON, QUEUE.c.resolved_on.is_not(None)
            )
            .values(**reopened(today))
        )
        latest = {reply["case_id"]: reply for reply in sorted(with_case, key=lambda r: r["id"])}
        conn.execute(
            update(QUEUE)
            .where(QUEUE.c.case_id == bindparam("b_case"), QUEUE.c.reason == REASON)
            .values(detail=bindparam("b_detail")),
            [{"b_case": case, "b_detail": item_detail(reply)} for case, reply in latest.items()],
        )
        item_of_case = select(QUEUE.c.id).where(
            QUEUE.c.case_id == INBOUND.c.case_id, QUEUE.c.reason == REASON
        )
        conn.execute(
            update(INBOUND)
            .where(INBOUND.c.id.in_(replied))
            .values(queue_item_id=item_of_case.scalar_subquery())
        )
    for reply in replies:
        if reply["case_id"] is None:
            _queue_alone(conn, reply, today)


def _queue_alone(conn: Connection, reply: dict[str, Any], today: date) -> None:
    """An item of its own for a reply of a customer without an open case."""
    item_id = conn.execute(
        insert(QUEUE)
        .values(
            case_id=None,
            customer_id=reply["customer_id"],
            reason=REASON,
            detail=item_detail(reply),
            created_on=today,
        )
        .returning(QUEUE.c.id)
    ).scalar_one()
    conn.execute(update(INBOUND).where(INBOUND.c.id == reply["id"]).values(queue_item_id=item_id))


def item_detail(reply: dict[str, Any]) -> str:
    """What an operator reads on the item: which reply, what it seems to say, its first lines."""
    confidence = reply.get("confidence") or 0.0
    lines = " / ".join((reply.get("excerpt") or "(no text)").splitlines())
    why = f"; {reply['why']}" if reply.get("why") else ""
    return (
        f"reply {reply['id']} from {reply.get('sender') or 'unknown sender'}: suggests "
        f"{reply.get('intent') or OTHER} ({confidence:.2f}{why}): {lines}"
    )


def confirm_reply(
    conn: Connection,
    policy: Policy,
    item_id: int,
    operator: str,
    today: date,
    intent: str | None = None,
    on: date | None = None,
    reason: str | None = None,
) -> ActionResult:
    """An operator's reading of a reply waiting on queue item `item_id`: apply its suggested
    intent, or `intent` (with the date `on` for a promise or a payment, `reason` for an order
    problem), as the customer's answer; `other` marks it read with nothing applied. The
    item's earlier waiting replies are marked read; the item is done.

    Refused (nothing changed): an unknown, resolved or someone else's item, an item that is
    not a reply's, no intent to apply, or an answer `apply_answer` refuses.
    """
    item = _reply_item(conn, item_id, operator)
    waiting = (
        conn.execute(
            select(INBOUND)
            .where(INBOUND.c.queue_item_id == item_id, INBOUND.c.status == QUEUED)
            .order_by(INBOUND.c.id)
        )
        .mappings()
        .all()
    )
    if not waiting:
        raise ActionRefused(f"queue item {item_id} has no reply waiting to be read")
    latest = waiting[-1]
    chosen = intent or latest["intent"]
    if chosen not in (*INTENTS, OTHER) or (chosen == OTHER and intent is None):
        raise ActionRefused(
            f"reply {latest['id']} says nothing the rules know: name its intent with --intent "
            f"({', '.join(INTENTS)}), or --intent other to mark it read"
        )
    said_on = on or latest["said_on"]
    changes = [f"reply {latest['id']} read as {chosen} by {operator}"]
    case_id = latest["case_id"]
    if chosen != OTHER:
        row = dict(latest)
        if reason is not None:
            row["detail"] = json.dumps(json.loads(row["detail"] or "{}") | {"reason": reason})
        result = apply_answer(conn, policy, answer_of(row, chosen, said_on, operator, today), today)
        changes += result.changes
        case_id = result.case_id if result.case_id is not None else case_id
    _close_reading(conn, latest, waiting, chosen, said_on, item_id, operator, today)
    earlier = len(waiting) - 1
    if earlier:
        changes.append(f"{earlier} earlier reply(ies) of the item marked read")
    if case_id is not None:
        record_events(
            conn,
            select(literal(case_id)),
            "reply_confirmed",
            today,
            {"item": item_id, "reply": latest["id"], "intent": chosen},
            actor=operator,
        )
    return ActionResult("Reply confirmed", case_id, item["customer_id"], operator, changes)


def _reply_item(conn: Connection, item_id: int, operator: str) -> RowMapping:
    item = conn.execute(select(QUEUE).where(QUEUE.c.id == item_id)).mappings().first()
    if item is None:
        raise ClaimRefused(f"no queue item {item_id} (see `collectflow queue`)")
    if item["reason"] != REASON:
        raise ActionRefused(f"queue item {item_id} is {item['reason']}, not a reply to read")
    if item["resolved_on"] is not None:
        raise ClaimRefused(f"queue item {item_id} was resolved on {item['resolved_on']}")
    if item["claimed_by"] not in (None, operator):
        raise ClaimRefused(f"queue item {item_id} is claimed by {item['claimed_by']}")
    return item


def _close_reading(
    conn: Connection,
    latest: RowMapping,
    waiting: Sequence[RowMapping],
    intent: str,
    said_on: date | None,
    item_id: int,
    operator: str,
    today: date,
) -> None:
    conn.execute(
        update(INBOUND)
        .where(INBOUND.c.id == latest["id"])
        .values(status=READ if intent == OTHER else CONFIRMED, intent=intent, said_on=said_on)
    )
    earlier = [row["id"] for row in waiting if row["id"] != latest["id"]]
    if earlier:
        conn.execute(update(INBOUND).where(INBOUND.c.id.in_(earlier)).values(status=READ))
    conn.execute(
        update(QUEUE)
        .where(and_(QUEUE.c.id == item_id, QUEUE.c.resolved_on.is_(None)))
        .values(resolved_on=today, claimed_by=operator)
    )
