"""Rendering in batches: each planned message not rendered yet gets its subject and MIME body.

Messages are read a batch at a time (bounded memory), rendered with the catalog (catalog.py)
from a context built set-based per batch (context.py), and stored once: the subject on the
message, the MIME part in `message_contents`. The day's pay offer (which gateway, given the open
outage windows) is looked up once per call, and each customer message gets its signed answer
link, whose expiry is stored with the body for delivery's List-Unsubscribe URL.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
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
from collectflow.flows.feedback.links import expiry
from collectflow.flows.feedback.message_links import MessageLinks
from collectflow.flows.ledger.paylinks import PayOffer, pay_offer
from collectflow.flows.mail.compose import message_id_for, mime_body
from collectflow.flows.policy.document import Policy
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
    links: MessageLinks,
    domain: str | None = None,
) -> int:
    """Render every planned message not rendered yet, storing subject, bodies and rendered_at.

    The text and HTML go to `message_contents` as the email's MIME part (`mail.mime_body`):
    what is sent, built once, so that delivery only adds the headers.

    With `domain` (the sender's, `mail.sender_domain`), each message also gets its Message-ID
    now, with its content, so delivery does not write it per message; without, delivery
    names it just before sending. `links` signs each customer message's answer link, valid
    `policy.feedback.link_expiry_days` from `as_of`.

    Streams in batches of `batch_size` (bounded memory, keyset-paged by id): one query for the
    batch's messages and customers, one for all their items joined with invoices, rendering in
    Python, one executemany UPDATE of the messages and one INSERT of their bodies; one query
    for the day's pay offer before the first batch. The caller owns the transaction. Returns
    how many were rendered; a second call renders nothing.
    """
    rendered = 0
    after = 0
    day = _Day(policy, as_of, pay_offer(conn, policy, as_of), links)
    while batch := _next_batch(conn, after, batch_size):
        rows = _render_batch(conn, catalog, day, batch)
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
                "link_expires_on": row["link_expires_on"],
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


@dataclass(frozen=True)
class _Day:
    """What every message rendered in one call shares: the policy, the date, the pay offer
    and the answer links' signer with their expiry."""

    policy: Policy
    as_of: date
    offer: PayOffer
    links: MessageLinks

    @property
    def link_expires_on(self) -> date:
        return expiry(self.as_of, self.policy.feedback.link_expiry_days)


def _render_batch(
    conn: Connection, catalog: TemplateCatalog, day: _Day, batch: Sequence[Row[Any]]
) -> list[dict[str, Any]]:
    items = _items_by_message(conn, [message.id for message in batch])
    internal_cases = [message.case_id for message in batch if message.kind == "internal"]
    history = _history_by_case(conn, internal_cases) if internal_cases else {}
    rendered_at = datetime.now(UTC)
    expires_on = day.link_expires_on
    rows = []
    for message in batch:
        internal = message.kind == "internal"
        locale = FALLBACK_LOCALE if internal else message.locale
        folder = catalog.locale_for(locale, message.template)
        link_expires_on = None if internal else expires_on
        context = build_context(
            message._mapping,
            items.get(message.id, []),
            message._mapping,
            day.policy.sender,
            day.as_of,
            formatting_locale(locale, folder),
            history.get(message.case_id, []) if internal else (),
            message.reminded,
            offer=day.offer,
            answer_url=None
            if internal
            else day.links.answer_url(message.id, message.customer_id, expires_on),
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
                "link_expires_on": link_expires_on,
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
            INVOICES.c.payment_url,
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
