"""Hand-placed cases and messages, for tests that need an outbox with known send dates.

The daily run decides when messages go out; tests of what follows them (outcomes, metrics,
experiments) instead put messages exactly where the story needs them.
"""

from __future__ import annotations

from datetime import UTC, date, datetime, time
from decimal import Decimal
from types import SimpleNamespace
from typing import Any

from sqlalchemy import Connection, and_, func, insert, or_, select
from sqlalchemy.sql.expression import ColumnElement

from collectflow.flows.mail import mime_parts
from collectflow.models import Case, Invoice, Message, MessageContent, MessageEvent, MessageItem

CASES = Case.__table__
MESSAGES = Message.__table__
CONTENTS = MessageContent.__table__
ITEMS = MessageItem.__table__
INVOICES = Invoice.__table__
EVENTS = MessageEvent.__table__

STAGE_INDEX = {"pre_due": 0, "gentle": 1, "firm": 2, "final": 3}


def with_bodies(conn: Connection, *where: ColumnElement[bool]) -> list[SimpleNamespace]:
    """The messages `where` selects, by id, each with its stored MIME part (`body_mime`) and
    the text and HTML read back from it (`body_text`, `body_html`; None when not rendered)."""
    rows = conn.execute(
        select(MESSAGES, CONTENTS.c.body_mime)
        .join_from(MESSAGES, CONTENTS, CONTENTS.c.message_id == MESSAGES.c.id, isouter=True)
        .where(*where)
        .order_by(MESSAGES.c.id)
    )
    found = []
    for row in rows.mappings():
        text, html = mime_parts(row["body_mime"]) if row["body_mime"] else (None, None)
        found.append(SimpleNamespace(**row, body_text=text, body_html=html))
    return found


def open_case(conn: Connection, customer_id: str, on: date, segment: str = "on_time") -> int:
    """An open case for the customer, on the standard ladder."""
    return conn.execute(
        insert(CASES)
        .values(
            customer_id=customer_id,
            status="reminding",
            segment=segment,
            ladder="standard",
            stage_index=0,
            opened_on=on,
        )
        .returning(CASES.c.id)
    ).scalar_one()


def sent_message(
    conn: Connection,
    case_id: int,
    customer_id: str,
    stage: str,
    on: date,
    invoices: list[str],
    status: str = "sent",
    **values: Any,
) -> int:
    """A message sent at 09:00 UTC on `on`, asking for what is owed in full on `invoices`."""
    row = {
        "key": f"case:{case_id}:{stage}:{values.get('kind', 'reminder')}",
        "case_id": case_id,
        "customer_id": customer_id,
        "kind": "reminder",
        "stage": stage,
        "stage_index": STAGE_INDEX.get(stage, 0),
        "template": stage,
        "to_address": f"{customer_id.lower()}@example.com",
        "planned_on": on,
        "status": status,
        "sent_on": on if status in ("sent", "bounced") else None,
        "sent_at": datetime.combine(on, time(9), tzinfo=UTC) if status == "sent" else None,
    } | values
    message_id = conn.execute(insert(MESSAGES).values(**row).returning(MESSAGES.c.id)).scalar_one()
    for invoice_id in invoices:
        amount, currency = conn.execute(
            select(INVOICES.c.amount, INVOICES.c.currency).where(
                INVOICES.c.invoice_id == invoice_id
            )
        ).one()
        conn.execute(
            insert(ITEMS).values(
                message_id=message_id,
                invoice_id=invoice_id,
                currency=currency,
                owed=Decimal(amount),
            )
        )
    return message_id


def unlogged_moves(conn: Connection) -> list[tuple[int, str, str | None]]:
    """Messages whose status is not where their last logged move took them, as (id, status,
    target of the last move): every move must go through `mail.outbox.move`. A message still
    `planned` may have no move at all."""
    last = (
        select(EVENTS.c.message_id, func.max(EVENTS.c.id).label("event_id"))
        .group_by(EVENTS.c.message_id)
        .subquery()
    )
    moved_to = EVENTS.c.to_status
    return [
        (mid, status, target)
        for mid, status, target in conn.execute(
            select(MESSAGES.c.id, MESSAGES.c.status, moved_to)
            .select_from(
                MESSAGES.outerjoin(last, last.c.message_id == MESSAGES.c.id).outerjoin(
                    EVENTS, EVENTS.c.id == last.c.event_id
                )
            )
            .where(
                or_(
                    and_(MESSAGES.c.status != "planned", moved_to.is_(None)),
                    moved_to != MESSAGES.c.status,
                )
            )
            .order_by(MESSAGES.c.id)
        )
    ]
