"""Rendering in batches: each planned message not rendered yet gets its subject and MIME body.

Messages are read a batch at a time (bounded memory), rendered with the catalog (catalog.py)
from a context built set-based per batch (context.py), and stored once: the subject on the
message, the MIME part in `message_contents`.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, date, datetime
from typing import Any

from sqlalchemy import (
    Connection,
    Row,
    String,
    bindparam,
    delete,
    exists,
    func,
    insert,
    select,
    update,
)

from collectflow.flows.errors import TemplateError
from collectflow.flows.mail.compose import message_id_for, mime_body
from collectflow.flows.policy.document import Policy, Sender
from collectflow.flows.steps.render.catalog import TemplateCatalog
from collectflow.flows.steps.render.context import FALLBACK_LOCALE, build_context, formatting_locale
from collectflow.models import Customer, Invoice, Message, MessageContent, MessageItem

MESSAGES = Message.__table__
CONTENTS = MessageContent.__table__
ITEMS = MessageItem.__table__
INVOICES = Invoice.__table__
CUSTOMERS = Customer.__table__
EARLIER = MESSAGES.alias("earlier")


_STORE = (
    update(MESSAGES)
    .where(MESSAGES.c.id == bindparam("message_id"), MESSAGES.c.subject.is_(None))
    .values(
        subject=bindparam("subject"),
        rendered_at=bindparam("rendered_at"),
        message_id_header=func.coalesce(
            MESSAGES.c.message_id_header, bindparam("message_id_header", type_=String)
        ),
    )
)


def render_planned(
    conn: Connection,
    catalog: TemplateCatalog,
    policy: Policy,
    as_of: date,
    batch_size: int = 1000,
    *,
    domain: str | None = None,
) -> int:
    """Render every planned message not rendered yet, storing subject, bodies and rendered_at.

    The text and HTML go to `message_contents` as the email's MIME part (`mail.mime_body`):
    what is sent, built once, so that delivery only adds the headers.

    With `domain` (the sender's, `mail.sender_domain`), each message also gets its Message-ID
    now, with its content, so delivery does not write it per message; without, delivery
    names it just before sending.

    Streams in batches of `batch_size` (bounded memory, keyset-paged by id): one query for the
    batch's messages and customers, one for all their items joined with invoices, rendering in
    Python, one executemany UPDATE of the messages and one INSERT of their bodies. The caller
    owns the transaction. Returns how many were rendered; a second call renders nothing.
    """
    rendered = 0
    after = 0
    while batch := _next_batch(conn, after, batch_size):
        rows = _render_batch(conn, catalog, policy.sender, as_of, batch)
        for row in rows:
            row["message_id_header"] = message_id_for(row["key"], domain) if domain else None
        conn.execute(_STORE, rows)
        _store_contents(conn, rows)
        rendered += len(rows)
        after = batch[-1].id
    return rendered


def _store_contents(conn: Connection, rows: list[dict[str, Any]]) -> None:
    """The batch's bodies as their emails' MIME parts, replacing any left from an earlier
    rendering."""
    ids = [row["message_id"] for row in rows]
    conn.execute(delete(CONTENTS).where(CONTENTS.c.message_id.in_(ids)))
    conn.execute(
        insert(CONTENTS),
        [
            {
                "message_id": row["message_id"],
                "body_mime": mime_body(row["body_text"], row["body_html"], row["key"]),
            }
            for row in rows
        ],
    )


def _next_batch(conn: Connection, after: int, size: int) -> Sequence[Row[Any]]:
    """The next `size` unrendered planned messages after id `after`, with their customer."""
    query = (
        select(
            MESSAGES.c.id,
            MESSAGES.c.key,
            MESSAGES.c.kind,
            MESSAGES.c.template,
            MESSAGES.c.locale,
            MESSAGES.c.stage,
            MESSAGES.c.case_id,
            CUSTOMERS.c.customer_id,
            CUSTOMERS.c.name,
            CUSTOMERS.c.email,
            exists()
            .where(
                EARLIER.c.case_id == MESSAGES.c.case_id,
                EARLIER.c.kind == "reminder",
                EARLIER.c.status == "sent",
                EARLIER.c.id < MESSAGES.c.id,
            )
            .label("reminded"),
        )
        .join_from(MESSAGES, CUSTOMERS, MESSAGES.c.customer_id == CUSTOMERS.c.customer_id)
        .where(MESSAGES.c.status == "planned", MESSAGES.c.subject.is_(None), MESSAGES.c.id > after)
        .order_by(MESSAGES.c.id)
        .limit(size)
    )
    return conn.execute(query).all()


def _render_batch(
    conn: Connection,
    catalog: TemplateCatalog,
    sender: Sender,
    as_of: date,
    batch: Sequence[Row[Any]],
) -> list[dict[str, Any]]:
    items = _items_by_message(conn, [message.id for message in batch])
    internal_cases = [message.case_id for message in batch if message.kind == "internal"]
    history = _history_by_case(conn, internal_cases) if internal_cases else {}
    rendered_at = datetime.now(UTC)
    rows = []
    for message in batch:
        locale = FALLBACK_LOCALE if message.kind == "internal" else message.locale
        folder = catalog.locale_for(locale, message.template)
        context = build_context(
            message._mapping,
            items.get(message.id, []),
            message._mapping,
            sender,
            as_of,
            formatting_locale(locale, folder),
            history.get(message.case_id, []) if message.kind == "internal" else (),
            message.reminded,
        )
        try:
            result = catalog.render(message.template, locale, context)
        except TemplateError as exc:
            raise TemplateError(f"message {message.id}: {exc}") from exc
        rows.append(
            {
                "message_id": message.id,
                "key": message.key,
                "subject": result.subject,
                "body_text": result.text,
                "body_html": result.html,
                "rendered_at": rendered_at,
            }
        )
    return rows


def _items_by_message(conn: Connection, ids: list[int]) -> dict[int, list[Mapping[str, Any]]]:
    query = (
        select(
            ITEMS.c.message_id,
            ITEMS.c.invoice_id,
            ITEMS.c.currency,
            ITEMS.c.owed,
            INVOICES.c.number,
            INVOICES.c.issued_on,
            INVOICES.c.due_on,
            INVOICES.c.amount,
        )
        .join_from(ITEMS, INVOICES, ITEMS.c.invoice_id == INVOICES.c.invoice_id)
        .where(ITEMS.c.message_id.in_(ids))
        .order_by(ITEMS.c.message_id, INVOICES.c.due_on, ITEMS.c.invoice_id)
    )
    return _group(conn.execute(query).mappings(), "message_id")


def _history_by_case(conn: Connection, case_ids: list[int]) -> dict[int, list[Mapping[str, Any]]]:
    query = (
        select(MESSAGES.c.case_id, MESSAGES.c.stage, MESSAGES.c.sent_on)
        .where(
            MESSAGES.c.case_id.in_(case_ids),
            MESSAGES.c.kind == "reminder",
            MESSAGES.c.status == "sent",
        )
        .order_by(MESSAGES.c.case_id, MESSAGES.c.sent_on, MESSAGES.c.id)
    )
    return _group(conn.execute(query).mappings(), "case_id")


def _group(rows: Iterable[Mapping[str, Any]], key: str) -> dict[Any, list[Mapping[str, Any]]]:
    grouped: dict[Any, list[Mapping[str, Any]]] = defaultdict(list)
    for row in rows:
        grouped[row[key]].append(row)
    return grouped
