"""Filing inbound mail: each mail once (`inbound_mail`, keyed by its Message-ID), matched to
our message, customer and case, and what it means done, for a batch in one transaction.

Matching, for the batch at once (one query each):
- a reply or auto-reply: by In-Reply-To / References, our Message-IDs (`messages.
  message_id_header`); else by its sender, a customer's address (`customers.email`). An
  address several customers share matches none for sure: the reply goes to a person;
- a bounce: by the Message-ID of the returned mail; else by the failed recipient.

What each means:
- a permanent bounce (5.x.x) of a message we sent: its address is blocked as bounced (as a
  5xx at sending blocks it: `mail.contact.block`), so nothing more goes to it; the message is
  `bounced`; the cases of customers whose address it is are queued `no_valid_address`. A
  transient one (4.x.x) is recorded: the sending server retries, and the ladder goes on;
- an automatic reply is recorded;
- a reply is read (flows/feedback/classify.py) in its customer's language: sure enough, it
  is left `pending` for `replies.apply_pending`; otherwise it is queued for an operator;
- a mail that matches nothing of ours is `unmatched` (kept in the mailbox, counted).

A mail filed before (same key) changes nothing: its row exists, the insert skips it.
"""

from __future__ import annotations

import json
from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import date, datetime
from typing import Any

from sqlalchemy import Connection, func, or_, select
from sqlalchemy.dialects import postgresql, sqlite

from collectflow.flows.cases.events import record_events
from collectflow.flows.cases.queue import QUEUE, queue_cases, reopened
from collectflow.flows.feedback.classify import OTHER, Classifier, Reading
from collectflow.flows.feedback.dates import dates_in
from collectflow.flows.feedback.replies import (
    APPLIED,
    PENDING,
    QUEUED,
    RECORDED,
    queue_for_reading,
)
from collectflow.flows.feedback.triage import AUTO_REPLY, BOUNCE, REPLY, Sorted
from collectflow.flows.mail.contact import BOUNCED, INTERNAL, block
from collectflow.flows.mail.outbox import BOUNCED as MESSAGE_BOUNCED
from collectflow.flows.mail.outbox import SENT, move
from collectflow.models import Case, Customer, InboundMail, Message, json_object

INBOUND = InboundMail.__table__
MESSAGES = Message.__table__
CUSTOMERS = Customer.__table__
CASES = Case.__table__

UNMATCHED = "unmatched"
NO_VALID_ADDRESS = "no_valid_address"
COLUMNS = (
    "mail_key", "source", "filed_at", "filed_on", "sent_at", "sender", "subject", "kind",
    "status", "matched_by", "message_id", "customer_id", "case_id", "intent", "confidence",
    "said_on", "bounce", "queue_item_id", "excerpt", "detail",
)  # fmt: skip


@dataclass
class Filed:
    """What filing a batch did: counts per kind, intent and status, and bounces hard/soft."""

    kinds: Counter[str] = field(default_factory=Counter)
    intents: Counter[str] = field(default_factory=Counter)
    statuses: Counter[str] = field(default_factory=Counter)
    bounces: Counter[str] = field(default_factory=Counter)
    already_filed: int = 0

    def add(self, other: Filed) -> None:
        for mine, theirs in (
            (self.kinds, other.kinds),
            (self.intents, other.intents),
            (self.statuses, other.statuses),
            (self.bounces, other.bounces),
        ):
            mine.update(theirs)
        self.already_filed += other.already_filed


@dataclass(frozen=True)
class _Known:
    """What the batch's mails point at, looked up at once."""

    messages: dict[str, dict[str, Any]]  # Message-ID -> message row
    customers: dict[str, dict[str, Any]]  # customer id -> customer row
    by_address: dict[str, list[str]]  # lower-case address -> customer ids
    open_cases: dict[str, int]  # customer id -> open case id


def file_batch(
    conn: Connection,
    mails: Sequence[Sorted],
    classifier: Classifier,
    today: date,
    now: datetime,
) -> Filed:
    """File a batch of read mails in the caller's transaction (see the module docstring)."""
    unique = list({mail.key: mail for mail in reversed(mails)}.values())[::-1]
    known = _look_up(conn, unique)
    rows = [_row(mail, known, classifier, today, now) for mail in unique]
    inserted = _insert(conn, rows)
    filed = Filed(already_filed=len(mails) - len(inserted))
    fresh = [row | {"id": inserted[row["mail_key"]]} for row in rows if row["mail_key"] in inserted]
    for row in fresh:
        filed.kinds[row["kind"]] += 1
        filed.statuses[row["status"]] += 1
        if row["kind"] == REPLY:
            filed.intents[row["intent"] or OTHER] += 1
        if row["bounce"]:
            filed.bounces[row["bounce"].split()[0]] += 1
    _bounce(conn, [row for row in fresh if row["kind"] == BOUNCE and row["status"] == APPLIED],
            today, now)  # fmt: skip
    waiting = [row for row in fresh if row["kind"] == REPLY and row["status"] == QUEUED]
    if waiting:
        queue_for_reading(conn, waiting, today)
    return filed


def _look_up(conn: Connection, mails: Sequence[Sorted]) -> _Known:
    ids = {mid for mail in mails for mid in (*mail.answers, *_returned(mail))}
    messages = {}
    if ids:
        query = select(
            MESSAGES.c.id, MESSAGES.c.case_id, MESSAGES.c.customer_id, MESSAGES.c.to_address,
            MESSAGES.c.kind, MESSAGES.c.message_id_header,
        ).where(MESSAGES.c.message_id_header.in_(sorted(ids)))  # fmt: skip
        messages = {row["message_id_header"]: dict(row) for row in conn.execute(query).mappings()}
    addresses = {address for mail in mails for address in _addresses(mail)}
    customer_ids = {row["customer_id"] for row in messages.values()}
    customers: dict[str, dict[str, Any]] = {}
    by_address: dict[str, list[str]] = defaultdict(list)
    if addresses or customer_ids:
        email = func.lower(CUSTOMERS.c.email)
        query = select(CUSTOMERS.c.customer_id, CUSTOMERS.c.locale, email.label("email")).where(
            or_(CUSTOMERS.c.customer_id.in_(sorted(customer_ids)), email.in_(sorted(addresses)))
        )
        for row in conn.execute(query.order_by(CUSTOMERS.c.customer_id)).mappings():
            customers[row["customer_id"]] = dict(row)
            by_address[row["email"]].append(row["customer_id"])
    open_cases = {}
    if customers:
        query = select(CASES.c.customer_id, CASES.c.id).where(
            CASES.c.customer_id.in_(sorted(customers)), CASES.c.closed_on.is_(None)
        )
        open_cases = dict(conn.execute(query).all())
    return _Known(messages, customers, dict(by_address), open_cases)


def _returned(mail: Sorted) -> tuple[str, ...]:
    return mail.bounce.returned_ids if mail.bounce else ()


def _addresses(mail: Sorted) -> set[str]:
    found = {failure.address for failure in mail.bounce.failures} if mail.bounce else set()
    return found | ({mail.sender} if mail.sender else set())


def _row(
    mail: Sorted, known: _Known, classifier: Classifier, today: date, now: datetime
) -> dict[str, Any]:
    row: dict[str, Any] = dict.fromkeys(COLUMNS) | {
        "mail_key": mail.key,
        "source": mail.source[:255],
        "filed_at": now,
        "filed_on": today,
        "sent_at": mail.sent_at,
        "sender": mail.sender,
        "subject": mail.subject,
        "kind": mail.kind,
        "status": RECORDED,
    }
    if mail.kind == BOUNCE:
        return _bounce_row(row, mail, known)
    if mail.kind == AUTO_REPLY:
        row |= _match(mail, known)
        row["detail"] = json.dumps({"why": mail.why})
        row["status"] = RECORDED if row["customer_id"] else UNMATCHED
        return row
    if mail.kind == REPLY:
        return _reply_row(row | _match(mail, known), mail, known, classifier, today)
    row["detail"] = json.dumps({"error": mail.why})
    return row


def _match(mail: Sorted, known: _Known) -> dict[str, Any]:
    """Who a reply is from: its thread's message, else its sender's (sole) customer."""
    for message_id in mail.answers:
        message = known.messages.get(message_id)
        if message is not None:
            customer_id = message["customer_id"]
            return {
                "matched_by": "thread",
                "message_id": message["id"],
                "customer_id": customer_id,
                "case_id": known.open_cases.get(customer_id),
            }
    owners = known.by_address.get(mail.sender or "", [])
    if not owners:
        return {}
    return {
        "matched_by": "sender" if len(owners) == 1 else "shared",
        "customer_id": owners[0],
        "case_id": known.open_cases.get(owners[0]),
        "shared_by": owners if len(owners) > 1 else None,
    }


def _reply_row(
    row: dict[str, Any], mail: Sorted, known: _Known, classifier: Classifier, today: date
) -> dict[str, Any]:
    shared = row.pop("shared_by", None)
    if not row["customer_id"]:
        row["status"] = UNMATCHED
        row["excerpt"] = mail.excerpt or None
        return row
    locale = known.customers.get(row["customer_id"], {}).get("locale")
    reading = classifier.read(mail.words, locale)
    said_on = said_date(reading.intent, mail.words, today, classifier.languages)
    why = not_applied(reading, said_on, classifier.threshold, shared)
    row |= {
        "intent": reading.intent,
        "confidence": reading.confidence,
        "said_on": said_on,
        "excerpt": mail.excerpt or None,
        "status": QUEUED if why else PENDING,
        "detail": json.dumps(
            {
                "rule": reading.rule,
                "matched": reading.matched,
                "reason": reading.reason,
                "also": list(reading.also),
                "why": why,
                "shared_by": shared,
            }
        ),
    }
    return row | {"why": why}


def said_date(intent: str, words: str, today: date, languages: Sequence[str]) -> date | None:
    """The date a reply names for its intent: the first one from today on for a promise,
    the first one up to today for a payment made."""
    if intent not in ("need_time", "already_paid"):
        return None
    written = dates_in(words, today, languages)
    if intent == "need_time":
        return next((day for day in written if day >= today), None)
    return next((day for day in written if day <= today), None)


def not_applied(
    reading: Reading, said_on: date | None, threshold: float, shared: list[str] | None
) -> str | None:
    """Why a reply's reading is not applied by itself, or None when it is."""
    if reading.intent == OTHER:
        return "no rule matched"
    if reading.confidence < threshold:
        also = f", also {', '.join(reading.also)}" if reading.also else ""
        return f"below the threshold {threshold:g}{also}"
    if shared:
        return f"the sender's address is shared by customers {', '.join(shared)}"
    if reading.intent == "need_time" and said_on is None:
        return "no date written"
    return None


def _bounce_row(row: dict[str, Any], mail: Sorted, known: _Known) -> dict[str, Any]:
    assert mail.bounce is not None
    failures = mail.bounce.failures
    message = next(
        (known.messages[mid] for mid in mail.bounce.returned_ids if mid in known.messages), None
    )
    blocked: str | None = None
    if message is not None:
        row |= {"matched_by": "returned", "message_id": message["id"]}
        row["customer_id"] = message["customer_id"]
        if message["kind"] != INTERNAL:  # a colleague's address is not the customer's
            blocked = message["to_address"].strip().lower()
        failure = next((f for f in failures if f.address == blocked), failures[0])
    else:
        ours = [f for f in failures if known.by_address.get(f.address)]
        failure = next((f for f in ours if f.permanent), ours[0] if ours else failures[0])
        if ours:
            row |= {"matched_by": "recipient", "customer_id": known.by_address[failure.address][0]}
            blocked = failure.address
    permanent = failure.permanent or (message is not None and mail.bounce.permanent)
    row["bounce"] = f"{'hard' if permanent else 'soft'} {failure.status or ''}".strip()
    row["case_id"] = known.open_cases.get(row["customer_id"]) if row["customer_id"] else None
    if blocked is not None and permanent:
        row["status"] = APPLIED
    else:
        row["status"] = RECORDED if row["customer_id"] else UNMATCHED
    row["detail"] = json.dumps(
        {
            "address": blocked,
            "failures": [
                {
                    "address": f.address,
                    "permanent": f.permanent,
                    "status": f.status,
                    "diagnostic": f.diagnostic,
                }
                for f in failures
            ],
            "returned": list(mail.bounce.returned_ids),
        }
    )
    return row


def _insert(conn: Connection, rows: list[dict[str, Any]]) -> dict[str, int]:
    """Insert the rows not filed before; returns mail key -> id of those inserted.

    One statement run with the list of rows (SQLAlchemy batches it as multi-row INSERTs with
    RETURNING): compiled once, where a VALUES clause built per batch is compiled every time."""
    if not rows:
        return {}
    dialect = postgresql if conn.dialect.name == "postgresql" else sqlite
    statement = (
        dialect.insert(INBOUND)
        .on_conflict_do_nothing(index_elements=["mail_key"])
        .returning(INBOUND.c.mail_key, INBOUND.c.id)
    )
    values = [{name: row[name] for name in COLUMNS} for row in rows]
    return dict(conn.execute(statement, values).all())


def _bounce(conn: Connection, rows: list[dict[str, Any]], today: date, now: datetime) -> None:
    """Permanent bounces, set-based: block the addresses, mark the messages bounced, log the
    bounce on the cases, queue the cases of the customers whose address it is as
    `no_valid_address` (an item done before comes back)."""
    if not rows:
        return
    by_kind: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for row in rows:  # one block and one move per kind of bounce ("hard 5.1.1", ...)
        by_kind[row["bounce"]].append(row)
    for label, group in by_kind.items():
        why = f"bounced ({label}), read from the inbox"
        addresses = [json.loads(row["detail"])["address"] for row in group]
        block(conn, "address", addresses, BOUNCED, why, now)
        ids = [row["message_id"] for row in group if row["message_id"] is not None]
        if ids:
            move(conn, MESSAGES.c.id.in_(ids), SENT, MESSAGE_BOUNCED, why, now, "inbox")
    filed = INBOUND.c.id.in_([row["id"] for row in rows])
    detail = json_object("bounce", INBOUND.c.bounce, "inbound", INBOUND.c.id)
    logged = select(INBOUND.c.case_id, detail).where(filed, INBOUND.c.case_id.is_not(None))
    record_events(conn, logged, "mail_bounced", today)
    blocked = {json.loads(row["detail"])["address"] for row in rows}
    undeliverable = (
        select(CASES.c.id, CASES.c.customer_id)
        .join(CUSTOMERS, CUSTOMERS.c.customer_id == CASES.c.customer_id)
        .where(CASES.c.closed_on.is_(None), func.lower(CUSTOMERS.c.email).in_(sorted(blocked)))
    )
    queue_cases(conn, undeliverable, NO_VALID_ADDRESS, today)
    conn.execute(
        QUEUE.update()
        .where(
            QUEUE.c.case_id.in_(select(undeliverable.subquery().c.id)),
            QUEUE.c.reason == NO_VALID_ADDRESS,
            QUEUE.c.resolved_on.is_not(None),
        )
        .values(**reopened(today))
    )
