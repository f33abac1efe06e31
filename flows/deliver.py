"""Step 5, deliver: send what is rendered and due, and record what happened to each message.

Per batch: claim (re-check that the money is still owed, then mark the rest 'sending', in one
committed transaction), send concurrently, record every result in one transaction. Sending is
a side effect, so each batch commits before and after it. Messages are claimed in id order
from a moving cursor, so a message sent back to 'planned' by a transient failure waits for
the next delivery instead of being retried in a tight loop.

Without `settings.smtp_host` mail goes to a Maildir at `settings.outbox` that any mail client
can open; otherwise through aiosmtplib, one reused connection per concurrent sender.
"""

from __future__ import annotations

import asyncio
import logging
import mailbox
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from email.message import EmailMessage
from pathlib import Path
from typing import Any, Protocol

import aiosmtplib
from sqlalchemy import (
    Connection,
    Engine,
    Select,
    String,
    and_,
    bindparam,
    case,
    func,
    or_,
    select,
    update,
)
from sqlalchemy.sql.expression import ColumnElement, Exists

from flows.config import Settings
from flows.errors import DeliveryError
from flows.mail import build_email, sender_domain
from models import Customer, Invoice, Message, MessageItem, Payment

log = logging.getLogger(__name__)

MESSAGES = Message.__table__
ITEMS = MessageItem.__table__
INVOICES = Invoice.__table__
PAYMENTS = Payment.__table__
CUSTOMERS = Customer.__table__

MAX_ATTEMPTS = 5
SEND_FAILURES = (aiosmtplib.SMTPException, DeliveryError, OSError, TimeoutError)


@dataclass
class DeliveryReport:
    """What one delivery did: counts of sent, suppressed and failed (by reason) messages.

    `retrying` counts transient failures put back to 'planned' for the next delivery.
    """

    sent: int = 0
    suppressed: dict[str, int] = field(default_factory=dict)
    failed: dict[str, int] = field(default_factory=dict)
    retrying: int = 0


class Transport(Protocol):
    """Hands one email to the mail system; raises when it was not accepted."""

    async def send(self, email: EmailMessage) -> None: ...

    async def close(self) -> None: ...


class MaildirTransport:
    """Writes each email into a Maildir's `new/` folder, readable by any mail client."""

    def __init__(self, path: Path):
        self._maildir = mailbox.Maildir(path, create=True)

    async def send(self, email: EmailMessage) -> None:
        self._maildir.add(email)

    async def close(self) -> None:
        self._maildir.close()


class SmtpTransport:
    """Sends through an SMTP server, each concurrent sender reusing its own connection.

    A connection found closed is reopened before the next email; one that failed mid-send is
    closed, since its state is unknown. Failing to open a session (refused, timed out, login
    rejected) raises DeliveryError: that is the server's or the settings' fault, not the
    message's, so it counts as transient.
    """

    def __init__(self, settings: Settings):
        self._settings = settings
        self._clients: list[aiosmtplib.SMTP] = []
        self._idle: list[aiosmtplib.SMTP] = []

    async def send(self, email: EmailMessage) -> None:
        client = self._idle.pop() if self._idle else self._new_client()
        try:
            if not client.is_connected:
                await self._connect(client)
            await client.send_message(email)
        except (ConnectionError, TimeoutError):
            client.close()
            raise
        finally:
            self._idle.append(client)

    async def close(self) -> None:
        for client in self._clients:
            if client.is_connected:
                try:
                    await client.quit()
                except aiosmtplib.SMTPException:
                    client.close()

    def _new_client(self) -> aiosmtplib.SMTP:
        settings = self._settings
        password = settings.smtp_password.get_secret_value() if settings.smtp_password else None
        client = aiosmtplib.SMTP(
            hostname=settings.smtp_host,
            port=settings.smtp_port,
            username=settings.smtp_username,
            password=password,
            start_tls=settings.smtp_starttls,
            timeout=settings.smtp_timeout,
        )
        self._clients.append(client)
        return client

    async def _connect(self, client: aiosmtplib.SMTP) -> None:
        try:
            await client.connect()
        except aiosmtplib.SMTPException as exc:
            client.close()
            raise DeliveryError(
                f"could not open an SMTP session with {client.hostname}:{client.port}: {exc}; "
                "check COLLECTFLOW_SMTP_HOST, _PORT, _USERNAME, _PASSWORD and _STARTTLS"
            ) from exc


def transport_for(settings: Settings) -> Transport:
    """SMTP when a host is configured, else the Maildir outbox."""
    if settings.smtp_host:
        return SmtpTransport(settings)
    return MaildirTransport(settings.outbox)


def deliver_due(
    engine: Engine, settings: Settings, as_of: date, batch_size: int = 200
) -> DeliveryReport:
    """Send every rendered message planned on or before `as_of` that is still owed.

    Safe to run again and from several workers at once: a message is claimed by one worker
    before it is sent, and a sent message is never claimed again.
    """
    sender_domain(settings)  # a bad From address stops the run before anything is claimed
    report = DeliveryReport()
    transport = transport_for(settings)
    after = 0
    with asyncio.Runner() as runner:
        try:
            while batch := _claim_batch(engine, as_of, after, batch_size, report):
                after, claimed = batch
                if claimed:
                    _deliver_batch(engine, settings, runner, transport, claimed, as_of, report)
        finally:
            runner.run(transport.close())
    return report


def _claim_batch(
    engine: Engine, as_of: date, after: int, batch_size: int, report: DeliveryReport
) -> tuple[int, list[int]] | None:
    """Suppress what is no longer owed among the next due messages, claim the rest.

    Returns the last id looked at and the claimed ids, or None when nothing is due past
    `after`. The guarded UPDATEs (`status = 'planned'`) make a message claimable by one worker only;
    on PostgreSQL, SKIP LOCKED also lets concurrent workers take different batches.
    """
    with engine.begin() as conn:
        ids = list(
            conn.scalars(
                select(MESSAGES.c.id)
                .where(_due(as_of), MESSAGES.c.id > after)
                .order_by(MESSAGES.c.id)
                .limit(batch_size)
                .with_for_update(skip_locked=True)
            )
        )
        if not ids:
            return None
        _count(report.suppressed, _suppress(conn, ids, as_of))
        claimed = conn.scalars(
            update(MESSAGES)
            .where(MESSAGES.c.id.in_(ids), MESSAGES.c.status == "planned")
            .values(status="sending", attempts=MESSAGES.c.attempts + 1)
            .returning(MESSAGES.c.id)
        )
        return ids[-1], sorted(claimed)


def _due(as_of: date) -> ColumnElement[bool]:
    return and_(
        MESSAGES.c.status == "planned",
        MESSAGES.c.subject.is_not(None),
        MESSAGES.c.planned_on <= as_of,
    )


def _suppress(conn: Connection, ids: Sequence[int], as_of: date) -> list[str]:
    """Mark messages that must not go out as 'suppressed'; returns their reasons."""
    candidates = and_(MESSAGES.c.id.in_(ids), MESSAGES.c.status == "planned")
    do_not_contact = MESSAGES.c.customer_id.in_(
        select(CUSTOMERS.c.customer_id).where(CUSTOMERS.c.do_not_contact)
    )
    opted_out = conn.scalars(
        update(MESSAGES)
        .where(candidates, MESSAGES.c.kind != "internal", do_not_contact)
        .values(status="suppressed", status_reason="do_not_contact")
        .returning(MESSAGES.c.status_reason)
    )
    reasons = list(opted_out)
    settled = conn.scalars(
        update(MESSAGES)
        .where(candidates, ~_items_owed(as_of, disputed=False))
        .values(
            status="suppressed",
            status_reason=case(
                (_items_owed(as_of, disputed=True), "disputed"), else_="paid_before_send"
            ),
        )
        .returning(MESSAGES.c.status_reason)
    )
    return reasons + list(settled)


def _items_owed(as_of: date, disputed: bool) -> Exists:
    """Whether the message (correlated) asks for an invoice still owed as of `as_of`.

    A reminder's items are its own; an internal message's are those of its whole case.
    `disputed` picks owed invoices under dispute, or else the ones a reminder may ask for.
    """
    source = MESSAGES.alias("item_source")
    dispute = INVOICES.c.status == "disputed"
    return (
        select(ITEMS.c.invoice_id)
        .select_from(
            ITEMS.join(source, source.c.id == ITEMS.c.message_id).join(
                INVOICES, INVOICES.c.invoice_id == ITEMS.c.invoice_id
            )
        )
        .where(
            source.c.case_id == MESSAGES.c.case_id,
            or_(source.c.id == MESSAGES.c.id, MESSAGES.c.kind == "internal"),
            INVOICES.c.status.not_in(("paid", "void")),
            INVOICES.c.amount - _settled(as_of) > 0,
            dispute if disputed else ~dispute,
        )
        .exists()
    )


def _settled(as_of: date) -> ColumnElement[Any]:
    """Succeeded payments less refunds on the (correlated) invoice, up to `as_of`."""
    signed = case((PAYMENTS.c.status == "refunded", -PAYMENTS.c.amount), else_=PAYMENTS.c.amount)
    return (
        select(func.coalesce(func.sum(signed), 0))
        .where(
            PAYMENTS.c.invoice_id == INVOICES.c.invoice_id,
            PAYMENTS.c.attempted_on <= as_of,
            PAYMENTS.c.status.in_(("succeeded", "refunded")),
        )
        .scalar_subquery()
    )


@dataclass(frozen=True)
class _Result:
    """What happened to one claimed message, as it will be written back."""

    message_id: int
    status: str
    reason: str | None = None
    error: str | None = None
    sent_at: datetime | None = None
    sent_on: date | None = None
    message_id_header: str | None = None


def _deliver_batch(
    engine: Engine,
    settings: Settings,
    runner: asyncio.Runner,
    transport: Transport,
    claimed: list[int],
    as_of: date,
    report: DeliveryReport,
) -> None:
    """Build, send and record one claimed batch; DB work stays outside the event loop."""
    with engine.connect() as conn:
        rows = conn.execute(_batch_rows(claimed)).mappings().all()
        roots = _thread_roots(conn, {row["case_id"] for row in rows})
    emails: dict[int, EmailMessage] = {}
    results: list[_Result] = []
    for row in rows:
        thread_root = roots.get(row["case_id"]) if row["kind"] == "reminder" else None
        try:
            emails[row["id"]] = build_email(row, settings, thread_root)
        except DeliveryError as exc:
            results.append(_Result(row["id"], "failed", reason="invalid_address", error=str(exc)))
    outcomes = runner.run(_send_all(transport, emails, settings.smtp_concurrency))
    attempts = {row["id"]: row["attempts"] for row in rows}
    unexpected = [exc for exc in outcomes.values() if _is_unexpected(exc)]
    results += [
        _result(message_id, outcome, emails[message_id], attempts[message_id], as_of)
        for message_id, outcome in outcomes.items()
        if not _is_unexpected(outcome)
    ]
    _record(engine, results, report)
    if unexpected:  # left 'sending': whether they went out is unknown, never resend blindly
        raise unexpected[0]


def _is_unexpected(outcome: datetime | BaseException) -> bool:
    return isinstance(outcome, BaseException) and not isinstance(outcome, SEND_FAILURES)


def _batch_rows(claimed: list[int]) -> Select[Any]:
    return (
        select(
            MESSAGES.c.id,
            MESSAGES.c.key,
            MESSAGES.c.kind,
            MESSAGES.c.case_id,
            MESSAGES.c.customer_id,
            MESSAGES.c.to_address,
            MESSAGES.c.subject,
            MESSAGES.c.body_text,
            MESSAGES.c.body_html,
            MESSAGES.c.message_id_header,
            MESSAGES.c.attempts,
            CUSTOMERS.c.name.label("customer_name"),
        )
        .select_from(
            MESSAGES.outerjoin(CUSTOMERS, CUSTOMERS.c.customer_id == MESSAGES.c.customer_id)
        )
        .where(MESSAGES.c.id.in_(claimed))
        .order_by(MESSAGES.c.id)
    )


def _thread_roots(conn: Connection, case_ids: set[int]) -> dict[int, str]:
    """Per case, the Message-ID of its earliest sent reminder: what later stages reply to."""
    rows = conn.execute(
        select(MESSAGES.c.case_id, MESSAGES.c.message_id_header)
        .where(
            MESSAGES.c.case_id.in_(case_ids),
            MESSAGES.c.kind == "reminder",
            MESSAGES.c.status == "sent",
            MESSAGES.c.message_id_header.is_not(None),
        )
        .order_by(MESSAGES.c.sent_at, MESSAGES.c.id)
    )
    roots: dict[int, str] = {}
    for case_id, message_id_header in rows:
        roots.setdefault(case_id, message_id_header)
    return roots


async def _send_all(
    transport: Transport, emails: Mapping[int, EmailMessage], concurrency: int
) -> dict[int, datetime | BaseException]:
    """Send concurrently, at most `concurrency` at a time; per message, when or why not."""
    gate = asyncio.Semaphore(max(concurrency, 1))

    async def send(email: EmailMessage) -> datetime:
        async with gate:
            await transport.send(email)
            return datetime.now(UTC)

    outcomes = await asyncio.gather(*map(send, emails.values()), return_exceptions=True)
    return dict(zip(emails, outcomes, strict=True))


def _result(
    message_id: int,
    outcome: datetime | BaseException,
    email: EmailMessage,
    attempts: int,
    as_of: date,
) -> _Result:
    """Sent, or failed for good on a 5xx answer, or else retried up to MAX_ATTEMPTS."""
    if isinstance(outcome, datetime):
        return _Result(
            message_id,
            "sent",
            sent_at=outcome,
            sent_on=as_of,
            message_id_header=str(email["Message-ID"]),
        )
    exc = outcome
    if isinstance(exc, aiosmtplib.SMTPRecipientsRefused) and exc.recipients:
        exc = exc.recipients[0]
    if isinstance(exc, aiosmtplib.SMTPResponseException) and 500 <= exc.code < 600:
        reason = f"smtp_5xx: {exc.code} {exc.message}"
        log.warning("message %s refused: %s", message_id, reason)
        return _Result(message_id, "failed", reason=reason, error=reason)
    error = f"{type(exc).__name__}: {exc}"
    log.warning("message %s not delivered (attempt %s): %s", message_id, attempts, error)
    if attempts >= MAX_ATTEMPTS:
        return _Result(message_id, "failed", reason="attempts_exhausted", error=error)
    return _Result(message_id, "planned", error=error)


def _record(engine: Engine, results: list[_Result], report: DeliveryReport) -> None:
    """Write every result of a batch in one transaction and count them in `report`."""
    if not results:
        return
    statement = (
        update(MESSAGES)
        .where(MESSAGES.c.id == bindparam("b_id"), MESSAGES.c.status == "sending")
        .values(
            status=bindparam("b_status"),
            status_reason=bindparam("b_reason"),
            last_error=func.coalesce(bindparam("b_error", type_=String), MESSAGES.c.last_error),
            sent_at=bindparam("b_sent_at"),
            sent_on=bindparam("b_sent_on"),
            message_id_header=bindparam("b_message_id_header"),
        )
    )
    with engine.begin() as conn:
        conn.execute(statement, [_params(result) for result in results])
    for result in results:
        if result.status == "sent":
            report.sent += 1
        elif result.status == "planned":
            report.retrying += 1
        else:
            _count(report.failed, [str(result.reason).split(":")[0]])


def _params(result: _Result) -> dict[str, Any]:
    return {
        "b_id": result.message_id,
        "b_status": result.status,
        "b_reason": result.reason,
        "b_error": result.error,
        "b_sent_at": result.sent_at,
        "b_sent_on": result.sent_on,
        "b_message_id_header": result.message_id_header,
    }


def _count(counts: dict[str, int], reasons: list[str]) -> None:
    for reason in reasons:
        counts[reason] = counts.get(reason, 0) + 1
