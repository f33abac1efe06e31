"""Delivery: what reaches the customer's mailbox, and what must not."""

from __future__ import annotations

import json
import mailbox
import threading
import time
from collections.abc import Iterator
from datetime import UTC, date, datetime
from decimal import Decimal
from email import policy
from email.message import EmailMessage
from email.parser import BytesParser
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Connection, Engine, delete, insert, select, update
from typer.testing import CliRunner

from collectflow.flows.cli.app import app
from collectflow.flows.config import Settings, get_settings
from collectflow.flows.delivery import deliver as deliver_flow
from collectflow.flows.errors import ConfigError
from collectflow.flows.mail import Composer, message_id_for, mime_body
from collectflow.flows.mail.retry import MAX_ATTEMPTS
from collectflow.flows.steps import deliver_due
from collectflow.models import (
    Case,
    ContactBlock,
    Customer,
    Invoice,
    Message,
    MessageContent,
    MessageEvent,
    MessageItem,
    Payment,
    QueueItem,
)
from tests.smtp_server import SmtpServer, free_port, self_signed_tls

AS_OF = date(2025, 3, 10)
FRENCH_AMOUNT = "1\u202f234,56\xa0€"  # what babel's format_currency gives for fr_FR

CUSTOMERS = Customer.__table__
INVOICES = Invoice.__table__
PAYMENTS = Payment.__table__
CASES = Case.__table__
MESSAGES = Message.__table__
CONTENTS = MessageContent.__table__
ITEMS = MessageItem.__table__
BLOCKS = ContactBlock.__table__
QUEUE = QueueItem.__table__
EVENTS = MessageEvent.__table__


# --- a small ledger, built with Core -------------------------------------------------------


def add_customer(
    conn: Connection,
    customer_id: str = "C1",
    name: str = "Ada Lovelace",
    email: str = "ada@example.org",
    locale: str = "en",
    do_not_contact: bool = False,
) -> str:
    conn.execute(
        insert(CUSTOMERS).values(
            customer_id=customer_id,
            name=name,
            email=email,
            locale=locale,
            do_not_contact=do_not_contact,
        )
    )
    return customer_id


def add_invoice(
    conn: Connection,
    customer_id: str,
    invoice_id: str = "INV-1",
    amount: Decimal = Decimal("1234.56"),
    status: str = "open",
) -> str:
    conn.execute(
        insert(INVOICES).values(
            invoice_id=invoice_id,
            customer_id=customer_id,
            issued_on=date(2025, 1, 10),
            due_on=date(2025, 2, 10),
            amount=amount,
            currency="EUR",
            status=status,
        )
    )
    return invoice_id


def add_payment(
    conn: Connection,
    invoice_id: str,
    amount: Decimal,
    on: date,
    status: str = "succeeded",
    payment_id: str = "PAY-1",
) -> None:
    conn.execute(
        insert(PAYMENTS).values(
            payment_id=payment_id,
            invoice_id=invoice_id,
            attempted_at=datetime(on.year, on.month, on.day, 9, tzinfo=UTC),
            attempted_on=on,
            amount=amount,
            status=status,
        )
    )


def add_case(conn: Connection, customer_id: str) -> int:
    return conn.execute(
        insert(CASES)
        .values(customer_id=customer_id, segment="standard", ladder="standard", opened_on=AS_OF)
        .returning(CASES.c.id)
    ).scalar_one()


def add_message(
    conn: Connection,
    case_id: int,
    customer_id: str,
    invoice_ids: list[str],
    stage_index: int = 0,
    to_address: str = "ada@example.org",
    kind: str = "reminder",
    subject: str | None = "Invoice INV-1 is overdue",
    body_text: str = "Hello, 1,234.56 EUR is due.",
    body_html: str = "<p>Hello, <b>1,234.56 EUR</b> is due.</p>",
    planned_on: date = AS_OF,
    attempts: int = 0,
) -> int:
    """A rendered message, planned for `planned_on`, asking for `invoice_ids`."""
    message_id = conn.execute(
        insert(MESSAGES)
        .values(
            key=f"{case_id}:{kind}:{stage_index}",
            case_id=case_id,
            customer_id=customer_id,
            kind=kind,
            stage=f"stage_{stage_index}",
            stage_index=stage_index,
            template=f"stage_{stage_index}",
            to_address=to_address,
            planned_on=planned_on,
            subject=subject,
            rendered_at=datetime(2025, 3, 10, 6, tzinfo=UTC),
            attempts=attempts,
        )
        .returning(MESSAGES.c.id)
    ).scalar_one()
    body_mime = mime_body(body_text, body_html, f"{case_id}:{kind}:{stage_index}")
    conn.execute(insert(CONTENTS).values(message_id=message_id, body_mime=body_mime))
    for invoice_id in invoice_ids:
        owed = conn.execute(
            select(INVOICES.c.amount).where(INVOICES.c.invoice_id == invoice_id)
        ).scalar_one()
        conn.execute(
            insert(ITEMS).values(
                message_id=message_id, invoice_id=invoice_id, currency="EUR", owed=owed
            )
        )
    return message_id


def reminders_to_customers(engine: Engine, count: int) -> list[int]:
    """`count` customers C0, C1, ..., each owing one invoice and due one reminder: their ids."""
    with engine.begin() as conn:
        ids = []
        for n in range(count):
            customer_id = add_customer(conn, f"C{n}", email=f"c{n}@example.org")
            add_invoice(conn, customer_id, f"INV-{n}")
            ids.append(add_message(conn, add_case(conn, customer_id), customer_id, [f"INV-{n}"],
                                   to_address=f"c{n}@example.org"))  # fmt: skip
    return ids


def overdue_reminder(engine: Engine, **message: Any) -> int:
    """One customer, one overdue invoice, one case, one rendered reminder: its id."""
    customer = {key: message.pop(key) for key in ("name", "locale") if key in message}
    with engine.begin() as conn:
        customer_id = add_customer(conn, **customer)
        invoice_id = add_invoice(conn, customer_id)
        case_id = add_case(conn, customer_id)
        return add_message(conn, case_id, customer_id, [invoice_id], **message)


def message_row(engine: Engine, message_id: int) -> Any:
    with engine.connect() as conn:
        return conn.execute(select(MESSAGES).where(MESSAGES.c.id == message_id)).one()


def bodies(email: EmailMessage) -> tuple[str, str]:
    """The text and html parts of a multipart/alternative email."""
    text = email.get_body(preferencelist=("plain",))
    html = email.get_body(preferencelist=("html",))
    assert text is not None and html is not None
    return text.get_content(), html.get_content()


@pytest.fixture
def smtp(settings: Settings, monkeypatch: pytest.MonkeyPatch) -> Iterator[SmtpServer]:
    """A real SMTP server on 127.0.0.1, with the settings pointing at it."""
    with SmtpServer() as server:
        for name, value in server.env().items():
            monkeypatch.setenv(name, value)
        get_settings.cache_clear()
        yield server


# --- Maildir --------------------------------------------------------------------------------


def test_without_smtp_host_each_message_lands_in_the_maildir_once(
    engine: Engine, settings: Settings
) -> None:
    first = overdue_reminder(engine)
    with engine.begin() as conn:
        customer_id = add_customer(conn, "C2", "Grace Hopper", "grace@example.org")
        add_invoice(conn, customer_id, "INV-2")
        second = add_message(
            conn,
            add_case(conn, customer_id),
            customer_id,
            ["INV-2"],
            to_address="grace@example.org",
        )

    report = deliver_due(engine, settings, AS_OF)

    assert report.sent == 2
    outbox = mailbox.Maildir(settings.outbox, create=False)
    files = sorted((settings.outbox / "new").iterdir())
    assert len(files) == 2 == len(outbox)
    parsed = [BytesParser(policy=policy.default).parsebytes(f.read_bytes()) for f in files]
    by_to = {str(email["To"]): email for email in parsed}
    ada = by_to["Ada Lovelace <ada@example.org>"]
    assert ada["From"] == settings.smtp_from
    assert ada["Subject"] == "Invoice INV-1 is overdue"
    assert ada["Message-ID"] == message_id_for(message_row(engine, first).key, "example.com")
    assert ada["Date"].datetime.tzinfo is not None
    assert ada["List-Unsubscribe"] == "<mailto:unsubscribe@example.com?subject=unsubscribe-C1>"
    assert ada["List-Unsubscribe-Post"] is None  # RFC 8058 needs an https URL; we have mailto
    assert ada.get_content_type() == "multipart/alternative"
    assert bodies(ada) == (
        "Hello, 1,234.56 EUR is due.\n",
        "<p>Hello, <b>1,234.56 EUR</b> is due.</p>\n",
    )
    for message_id in (first, second):
        row = message_row(engine, message_id)
        assert (row.status, row.sent_on, row.attempts) == ("sent", AS_OF, 1)
        assert row.sent_at is not None and row.message_id_header is not None

    again = deliver_due(engine, settings, AS_OF)

    assert (again.sent, again.suppressed, again.failed) == (0, {}, {})
    assert len(list((settings.outbox / "new").iterdir())) == 2


def test_messages_not_yet_due_or_not_rendered_wait(engine: Engine, settings: Settings) -> None:
    later = overdue_reminder(engine, planned_on=date(2025, 3, 11))
    case_id = message_row(engine, later).case_id
    with engine.begin() as conn:
        unrendered = add_message(conn, case_id, "C1", ["INV-1"], stage_index=1, subject=None)

    assert deliver_due(engine, settings, AS_OF).sent == 0
    assert message_row(engine, later).status == message_row(engine, unrendered).status == "planned"


# --- SMTP -----------------------------------------------------------------------------------


def test_a_french_reminder_arrives_over_smtp_with_both_parts(
    engine: Engine, smtp: SmtpServer
) -> None:
    message_id = overdue_reminder(
        engine,
        name="Élodie Dupont",
        locale="fr",
        to_address="elodie@exemple.fr",
        subject="Rappel : facture INV-1 échue",
        body_text=f"Bonjour Élodie, il reste {FRENCH_AMOUNT} à régler.",
        body_html=f"<p>Bonjour Élodie, il reste <b>{FRENCH_AMOUNT}</b> à régler.</p>",
    )

    report = deliver_due(engine, get_settings(), AS_OF)

    assert report.sent == 1
    [envelope] = smtp.envelopes
    assert envelope.mail_from == "billing@example.com"
    assert envelope.rcpt_tos == ["elodie@exemple.fr"]
    email = envelope.parse()
    assert email["To"].addresses[0].display_name == "Élodie Dupont"
    assert email["To"].addresses[0].addr_spec == "elodie@exemple.fr"
    assert email["Subject"] == "Rappel : facture INV-1 échue"
    assert email["Message-ID"] == message_row(engine, message_id).message_id_header
    assert email["List-Unsubscribe"].startswith("<mailto:unsubscribe@example.com")
    assert email["In-Reply-To"] is None and email["References"] is None
    text, html = bodies(email)
    assert FRENCH_AMOUNT in text and FRENCH_AMOUNT in html
    assert html.startswith("<p>Bonjour Élodie")
    assert email.get_body(preferencelist=("plain",)).get_content_charset() == "utf-8"


def test_the_mime_body_stored_at_render_is_what_goes_out(engine: Engine, smtp: SmtpServer) -> None:
    message_id = overdue_reminder(engine)
    stored = mime_body("Stored at render: 1,234.56 EUR.", "<p>Stored</p>", "k")
    with engine.begin() as conn:
        conn.execute(
            update(CONTENTS).where(CONTENTS.c.message_id == message_id).values(body_mime=stored)
        )

    assert deliver_due(engine, get_settings(), AS_OF).sent == 1

    [envelope] = smtp.envelopes
    email = envelope.parse()
    text, html = bodies(email)
    assert (text.strip(), html.strip()) == ("Stored at render: 1,234.56 EUR.", "<p>Stored</p>")
    assert email["Message-ID"] == message_row(engine, message_id).message_id_header


def test_a_message_without_its_body_fails_unsent_and_says_so(
    engine: Engine, smtp: SmtpServer
) -> None:
    message_id = overdue_reminder(engine)
    with engine.begin() as conn:  # not a state render leaves, but a row can be lost
        conn.execute(delete(CONTENTS).where(CONTENTS.c.message_id == message_id))

    report = deliver_due(engine, get_settings(), AS_OF)

    assert (report.sent, report.failed) == (0, {"not_rendered": 1})
    assert message_row(engine, message_id).status == "failed"
    assert "no rendered body" in message_row(engine, message_id).last_error
    assert smtp.envelopes == []


def test_later_stages_reply_to_the_previous_one_and_reference_them_all(
    engine: Engine, smtp: SmtpServer
) -> None:
    ids = [overdue_reminder(engine)]
    case_id = message_row(engine, ids[0]).case_id
    deliver_due(engine, get_settings(), AS_OF)
    for stage, day in ((1, date(2025, 3, 17)), (2, date(2025, 3, 24))):
        with engine.begin() as conn:
            ids.append(add_message(conn, case_id, "C1", ["INV-1"], stage_index=stage,
                                   planned_on=day))  # fmt: skip
        deliver_due(engine, get_settings(), day)

    root, second, third = smtp.emails
    headers = [message_row(engine, message_id).message_id_header for message_id in ids]
    assert [email["Message-ID"] for email in (root, second, third)] == headers
    assert len(set(headers)) == 3
    assert root["In-Reply-To"] is None and root["References"] is None
    assert (second["In-Reply-To"], second["References"]) == (headers[0], headers[0])
    assert third["In-Reply-To"] == headers[1]
    assert third["References"] == f"{headers[0]} {headers[1]}"


def test_reply_to_and_a_configured_unsubscribe_box_are_used(
    engine: Engine, smtp: SmtpServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("COLLECTFLOW_REPLY_TO", "Collections <ar@example.com>")
    monkeypatch.setenv("COLLECTFLOW_UNSUBSCRIBE_MAILTO", "mailto:optout@example.com")
    get_settings.cache_clear()
    overdue_reminder(engine)

    deliver_due(engine, get_settings(), AS_OF)

    [email] = smtp.emails
    assert email["Reply-To"] == "Collections <ar@example.com>"
    assert email["List-Unsubscribe"] == "<mailto:optout@example.com?subject=unsubscribe-C1>"


def test_replies_go_to_the_from_address_when_no_reply_to_is_set(
    engine: Engine, smtp: SmtpServer
) -> None:
    overdue_reminder(engine)

    deliver_due(engine, get_settings(), AS_OF)

    [email] = smtp.emails
    assert email["Reply-To"] == email["From"] == "Accounts Receivable <billing@example.com>"


def test_mail_to_a_colleague_is_addressed_to_them_not_under_the_customers_name(
    engine: Engine, smtp: SmtpServer
) -> None:
    reminder = overdue_reminder(engine, name="Mary Garcia", to_address="mary@example.org")
    case_id = message_row(engine, reminder).case_id
    with engine.begin() as conn:
        add_message(conn, case_id, "C1", [], kind="internal",
                    to_address="emily.carter@example.com",
                    subject="Escalation: Mary Garcia (C1) owes 1,234.56 EUR")  # fmt: skip

    deliver_due(engine, get_settings(), AS_OF)

    by_address = {email["To"].addresses[0].addr_spec: email for email in smtp.emails}
    to_colleague = by_address["emily.carter@example.com"]
    assert str(to_colleague["To"]) == "emily.carter@example.com"
    assert "Mary Garcia" in to_colleague["Subject"]
    assert by_address["mary@example.org"]["To"].addresses[0].display_name == "Mary Garcia"


def test_internal_messages_carry_no_unsubscribe_header(engine: Engine, smtp: SmtpServer) -> None:
    reminder = overdue_reminder(engine)
    case_id = message_row(engine, reminder).case_id
    with engine.begin() as conn:
        note = add_message(
            conn, case_id, "C1", [], kind="internal", to_address="manager@example.com"
        )

    deliver_due(engine, get_settings(), AS_OF)

    assert message_row(engine, reminder).status == message_row(engine, note).status == "sent"
    [to_manager] = [
        email for email in smtp.emails if email["To"].addresses[0].username == "manager"
    ]
    assert to_manager["List-Unsubscribe"] is None


# --- the re-check just before sending -------------------------------------------------------


def test_an_invoice_paid_after_planning_is_not_reminded(engine: Engine, smtp: SmtpServer) -> None:
    message_id = overdue_reminder(engine)
    with engine.begin() as conn:
        add_payment(conn, "INV-1", Decimal("1234.56"), on=AS_OF)

    report = deliver_due(engine, get_settings(), AS_OF)

    assert (report.sent, report.suppressed) == (0, {"paid_before_send": 1})
    row = message_row(engine, message_id)
    assert (row.status, row.status_reason) == ("suppressed", "paid_before_send")
    assert smtp.envelopes == []


def test_what_is_still_owed_counts_refunds_and_ignores_later_or_failed_payments(
    engine: Engine, smtp: SmtpServer
) -> None:
    message_id = overdue_reminder(engine)
    with engine.begin() as conn:
        add_payment(conn, "INV-1", Decimal("1234.56"), on=AS_OF, payment_id="P1")
        add_payment(conn, "INV-1", Decimal("34.56"), on=AS_OF, status="refunded", payment_id="P2")
        add_payment(conn, "INV-1", Decimal("34.56"), on=date(2025, 3, 11), payment_id="P3")
        add_payment(conn, "INV-1", Decimal("34.56"), on=AS_OF, status="failed", payment_id="P4")

    report = deliver_due(engine, get_settings(), AS_OF)

    assert report.sent == 1
    assert message_row(engine, message_id).status == "sent"


@pytest.mark.parametrize(
    ("status", "reason"),
    [("paid", "paid_before_send"), ("void", "paid_before_send"), ("disputed", "disputed")],
)
def test_an_invoice_settled_or_disputed_after_planning_is_not_reminded(
    engine: Engine, settings: Settings, status: str, reason: str
) -> None:
    message_id = overdue_reminder(engine)
    with engine.begin() as conn:
        conn.execute(update(INVOICES).values(status=status))

    report = deliver_due(engine, settings, AS_OF)

    assert report.suppressed == {reason: 1}
    assert message_row(engine, message_id).status_reason == reason
    assert not (settings.outbox / "new").exists() or not any((settings.outbox / "new").iterdir())


def test_a_reminder_still_goes_out_while_one_of_its_invoices_is_owed(
    engine: Engine, settings: Settings
) -> None:
    with engine.begin() as conn:
        customer_id = add_customer(conn)
        add_invoice(conn, customer_id, "INV-1")
        add_invoice(conn, customer_id, "INV-2", status="disputed")
        add_invoice(conn, customer_id, "INV-3")
        add_payment(conn, "INV-3", Decimal("1234.56"), on=AS_OF)
        message_id = add_message(
            conn, add_case(conn, customer_id), customer_id, ["INV-1", "INV-2", "INV-3"]
        )

    assert deliver_due(engine, settings, AS_OF).sent == 1
    assert message_row(engine, message_id).status == "sent"


def test_an_internal_message_is_dropped_once_its_case_is_paid(
    engine: Engine, settings: Settings
) -> None:
    reminder = overdue_reminder(engine)
    case_id = message_row(engine, reminder).case_id
    with engine.begin() as conn:
        note = add_message(
            conn, case_id, "C1", [], kind="internal", to_address="manager@example.com"
        )
        add_payment(conn, "INV-1", Decimal("1234.56"), on=AS_OF)

    report = deliver_due(engine, settings, AS_OF)

    assert report.suppressed == {"paid_before_send": 2}
    assert message_row(engine, note).status == "suppressed"


def test_a_customer_marked_do_not_contact_gets_nothing(engine: Engine, settings: Settings) -> None:
    message_id = overdue_reminder(engine)
    with engine.begin() as conn:
        conn.execute(update(CUSTOMERS).values(do_not_contact=True))

    report = deliver_due(engine, settings, AS_OF)

    assert (report.sent, report.suppressed) == (0, {"do_not_contact": 1})
    assert message_row(engine, message_id).status_reason == "do_not_contact"


# --- SMTP faults ----------------------------------------------------------------------------


def test_a_4xx_answer_is_retried_on_the_next_delivery(engine: Engine, smtp: SmtpServer) -> None:
    message_id = overdue_reminder(engine)
    smtp.answer("451 4.3.0 Mailbox busy, try again later")

    report = deliver_due(engine, get_settings(), AS_OF)

    assert (report.sent, report.retrying, report.failed) == (0, 1, {})
    row = message_row(engine, message_id)
    assert (row.status, row.attempts) == ("planned", 1)
    assert "451" in row.last_error
    assert smtp.envelopes == []

    assert deliver_due(engine, get_settings(), AS_OF).sent == 0  # backing off
    assert row.next_attempt_at is not None

    report = deliver_due(engine, get_settings(), AS_OF, now=row.next_attempt_at)

    assert report.sent == 1
    assert message_row(engine, message_id).status == "sent"
    [email] = smtp.emails
    assert email["Message-ID"] == message_id_for(row.key, "example.com"), "the same every attempt"


@pytest.mark.parametrize("reply", ["421 4.7.0 Too many connections", "451 4.3.0 Try later"])
def test_the_backoff_doubles_with_each_attempt_up_to_the_cap(
    engine: Engine, smtp: SmtpServer, monkeypatch: pytest.MonkeyPatch, reply: str
) -> None:
    monkeypatch.setenv("COLLECTFLOW_DELIVERY_RETRY_SECONDS", "60")
    monkeypatch.setenv("COLLECTFLOW_DELIVERY_RETRY_CAP_SECONDS", "200")
    get_settings.cache_clear()
    message_id = overdue_reminder(engine)
    now = datetime(2025, 3, 10, 9, tzinfo=UTC)
    waits = []
    for _ in range(3):
        smtp.answer(reply)
        deliver_due(engine, get_settings(), AS_OF, now=now)
        retry_at = message_row(engine, message_id).next_attempt_at
        waits.append((retry_at - now).total_seconds())
        now = retry_at

    assert waits == [60, 120, 200]
    assert smtp.envelopes == []


def test_a_5xx_answer_bounces_blocks_the_address_and_queues_the_case(
    engine: Engine, smtp: SmtpServer
) -> None:
    message_id = overdue_reminder(engine)
    smtp.answer("550 5.1.1 No such user here")

    report = deliver_due(engine, get_settings(), AS_OF)

    assert (report.bounced, report.sent, report.failed) == (1, 0, {})
    row = message_row(engine, message_id)
    assert (row.status, row.status_reason) == ("bounced", "smtp 550 5.1.1 No such user here")
    with engine.connect() as conn:
        blocks = conn.execute(select(BLOCKS.c.scope, BLOCKS.c.value, BLOCKS.c.reason)).all()
        queued = conn.execute(select(QUEUE.c.case_id, QUEUE.c.reason)).all()
    assert blocks == [("address", "ada@example.org", "bounced")]
    assert queued == [(row.case_id, "bounced")]
    with engine.begin() as conn:  # the next stage of the case, to the same address
        later = add_message(conn, row.case_id, "C1", ["INV-1"], stage_index=1)

    report = deliver_due(engine, get_settings(), AS_OF)

    assert report.suppressed == {"address_bounced": 1}
    assert message_row(engine, later).status == "suppressed"
    assert smtp.envelopes == []


def test_a_stalled_server_times_out_and_the_message_is_retried(
    engine: Engine, smtp: SmtpServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("COLLECTFLOW_SMTP_TIMEOUT", "0.3")
    get_settings.cache_clear()
    message_id = overdue_reminder(engine)
    smtp.stall_recipient(2.0)  # silent before any data: nothing can have been accepted

    report = deliver_due(engine, get_settings(), AS_OF)

    assert (report.sent, report.retrying) == (0, 1)
    row = message_row(engine, message_id)
    assert row.status == "planned" and "Timeout" in row.last_error

    report = deliver_due(engine, get_settings(), AS_OF, now=row.next_attempt_at)

    assert report.sent == 1 and len(smtp.envelopes) == 1


def test_a_server_silent_after_the_end_of_data_leaves_the_message_in_doubt(
    engine: Engine, smtp: SmtpServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("COLLECTFLOW_SMTP_TIMEOUT", "0.3")
    get_settings.cache_clear()
    message_id = overdue_reminder(engine)
    smtp.stall(2.0)  # the whole message is in, the reply never comes in time

    report = deliver_due(engine, get_settings(), AS_OF)

    assert (report.sent, report.retrying, report.in_doubt) == (0, 0, [message_id])
    row = message_row(engine, message_id)
    assert row.status == "unknown" and "Timeout" in row.last_error
    assert (
        deliver_due(engine, get_settings(), AS_OF, now=datetime(2025, 3, 11, tzinfo=UTC)).sent == 0
    )


def test_an_unreachable_server_leaves_the_message_planned(
    engine: Engine, settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("COLLECTFLOW_SMTP_HOST", "127.0.0.1")
    monkeypatch.setenv("COLLECTFLOW_SMTP_PORT", str(free_port()))
    get_settings.cache_clear()
    message_id = overdue_reminder(engine)

    report = deliver_due(engine, get_settings(), AS_OF)

    assert report.retrying == 1
    row = message_row(engine, message_id)
    assert row.status == "planned"
    assert "could not open an SMTP session" in row.last_error


def test_transient_failures_give_up_after_the_last_attempt(
    engine: Engine, smtp: SmtpServer
) -> None:
    message_id = overdue_reminder(engine, attempts=MAX_ATTEMPTS - 1)
    smtp.answer("421 4.7.0 Too many connections")

    report = deliver_due(engine, get_settings(), AS_OF)

    assert report.failed == {"attempts_exhausted": 1}
    row = message_row(engine, message_id)
    assert (row.status, row.status_reason, row.attempts) == ("failed", "attempts_exhausted", 5)
    assert "421" in row.last_error


def test_a_dropped_connection_is_reopened_for_the_next_message(
    engine: Engine, smtp: SmtpServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("COLLECTFLOW_SMTP_CONCURRENCY", "1")
    get_settings.cache_clear()
    first, *_ = reminders_to_customers(engine, 3)
    smtp.drop_connection()  # after the first message's end of DATA: in doubt, not retried

    report = deliver_due(engine, get_settings(), AS_OF, batch_size=1)

    assert (report.sent, report.retrying, report.in_doubt) == (2, 0, [first])
    assert len(smtp.envelopes) == 2
    assert smtp.handler.greetings == 2


def test_after_a_421_the_session_is_closed_and_the_next_message_goes_on_a_new_one(
    engine: Engine, smtp: SmtpServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("COLLECTFLOW_SMTP_CONCURRENCY", "1")
    get_settings.cache_clear()
    first, *_ = reminders_to_customers(engine, 3)
    smtp.answer_and_close("421 4.7.0 Too busy, closing the connection")

    report = deliver_due(engine, get_settings(), AS_OF)

    assert (report.sent, report.retrying) == (2, 1)
    assert "421" in message_row(engine, first).last_error
    assert smtp.handler.greetings == 2


def test_connections_are_pooled_and_never_more_than_the_concurrency(
    engine: Engine, smtp: SmtpServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("COLLECTFLOW_SMTP_CONCURRENCY", "3")
    get_settings.cache_clear()
    reminders_to_customers(engine, 24)
    smtp.slow_down(0.03)

    report = deliver_due(engine, get_settings(), AS_OF)

    assert report.sent == 24
    assert smtp.handler.most_at_once == 3
    assert smtp.handler.greetings == 3, "one connection per sender, reused"


def test_the_rate_limit_spaces_the_sends(
    engine: Engine, smtp: SmtpServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("COLLECTFLOW_SMTP_RATE_PER_SECOND", "20")
    get_settings.cache_clear()
    reminders_to_customers(engine, 10)
    started = time.perf_counter()

    report = deliver_due(engine, get_settings(), AS_OF)

    assert report.sent == 10
    assert time.perf_counter() - started >= 9 / 20


# --- hostile data ---------------------------------------------------------------------------


def test_a_name_cannot_add_a_header(engine: Engine, smtp: SmtpServer) -> None:
    overdue_reminder(engine, name="Eve\r\nBcc: evil@example.net")

    deliver_due(engine, get_settings(), AS_OF)

    [envelope] = smtp.envelopes
    assert envelope.rcpt_tos == ["ada@example.org"]
    email = envelope.parse()
    assert email["Bcc"] is None
    assert [address.addr_spec for address in email["To"].addresses] == ["ada@example.org"]
    assert email["To"].addresses[0].display_name == "Eve Bcc: evil@example.net"


@pytest.mark.parametrize(
    "to_address",
    [
        "ada@example.org\r\nBcc: evil@example.net",
        "ada@example.org, evil@example.net",
        "ada",
        "ada@",
    ],
)
def test_an_unusable_address_fails_the_message(
    engine: Engine, smtp: SmtpServer, to_address: str
) -> None:
    message_id = overdue_reminder(engine, to_address=to_address)

    report = deliver_due(engine, get_settings(), AS_OF)

    assert report.failed == {"invalid_address": 1}
    assert message_row(engine, message_id).status_reason == "invalid_address"
    assert smtp.envelopes == []


@pytest.mark.parametrize(
    "subject",
    [
        "Northwind Supplies \u2013 rappel de paiement pour Boulangerie <Dupont> & Fils (réf. 7)",
        "é" * 100,  # two bytes a character: the words must not split one
        "😀" * 30 + " €",  # four bytes a character
        "a" * 41 + "é",  # a character across the first word's byte limit
        "=?utf-8?q?not_a_word?= _ ?",  # an encoded word's lookalike stays text
        "x" * 950,  # ASCII, but one word too long for a line
    ],
)
def test_subjects_are_encoded_in_lines_a_client_reads_back_exactly(
    settings: Settings, subject: str
) -> None:
    row = {"key": "k", "kind": "reminder", "customer_id": "C1", "customer_name": "Ada",
           "to_address": "ada@example.org", "subject": subject,
           "body_mime": mime_body("text", None, "k"), "message_id_header": None}  # fmt: skip

    data = Composer(settings).compose(row).data

    head = data.split(b"\n\n")[0].decode("ascii")
    assert max(len(line) for line in head.splitlines()) <= 78
    assert BytesParser(policy=policy.default).parsebytes(data)["Subject"] == subject


def test_the_subject_stays_on_one_line(settings: Settings) -> None:
    row = {
        "key": "k",
        "kind": "reminder",
        "customer_id": "C1",
        "customer_name": "Ada",
        "to_address": "ada@example.org",
        "subject": "Overdue\r\nBcc: evil@example.net",
        "body_mime": mime_body("text", None, "k"),
        "message_id_header": None,
    }

    built = Composer(settings).compose(row)

    email = BytesParser(policy=policy.default).parsebytes(built.data)
    assert email["Bcc"] is None
    assert email["Subject"] == "Overdue Bcc: evil@example.net"
    assert (built.sender, built.recipient) == ("billing@example.com", "ada@example.org")


# --- several workers ------------------------------------------------------------------------


def test_concurrent_deliveries_send_each_message_once(engine: Engine, smtp: SmtpServer) -> None:
    reminders_to_customers(engine, 40)
    reports = []

    def worker() -> None:
        reports.append(deliver_due(engine, get_settings(), AS_OF, batch_size=5))

    workers = [threading.Thread(target=worker) for _ in range(3)]
    for thread in workers:
        thread.start()
    for thread in workers:
        thread.join()

    recipients = sorted(rcpt for envelope in smtp.envelopes for rcpt in envelope.rcpt_tos)
    assert recipients == sorted(f"c{n}@example.org" for n in range(40))
    assert sum(report.sent for report in reports) == 40


# --- headers, TLS and login -----------------------------------------------------------------


@pytest.mark.parametrize("retired", ["UNSUBSCRIBE_URL", "UNSUBSCRIBE_SECRET"])
def test_a_retired_opt_out_url_setting_stops_delivery_before_claiming(
    engine: Engine, settings: Settings, monkeypatch: pytest.MonkeyPatch, retired: str
) -> None:
    """The one-click URL is the customer page's now (tests/test_paylinks_answer_links.py);
    the old template's settings are refused by name rather than ignored."""
    monkeypatch.setenv(f"COLLECTFLOW_{retired}", "https://x.example/{customer_id}/{token}")
    get_settings.cache_clear()
    message_id = overdue_reminder(engine)

    with pytest.raises(ConfigError, match=f"COLLECTFLOW_{retired}: retired"):
        deliver_due(engine, get_settings(), AS_OF)
    assert message_row(engine, message_id).status == "planned"


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
@pytest.mark.parametrize("mode", ["tls", "starttls"])
@pytest.mark.filterwarnings("ignore:Requiring AUTH while not requiring TLS")
def test_mail_goes_over_tls_with_a_login(
    engine: Engine, settings: Settings, monkeypatch: pytest.MonkeyPatch, tmp_path: Path, mode: str
) -> None:
    context, certificate = self_signed_tls(tmp_path)
    server_tls = {"tls": context} if mode == "tls" else {"starttls": context}
    with SmtpServer(login=("billing", "pw"), **server_tls) as server:
        for name, value in server.env().items():
            monkeypatch.setenv(name, value)
        monkeypatch.setenv("COLLECTFLOW_SMTP_HOST", "localhost")
        monkeypatch.setenv("COLLECTFLOW_SMTP_CA_FILE", str(certificate))
        monkeypatch.setenv("COLLECTFLOW_SMTP_USERNAME", "billing")
        monkeypatch.setenv("COLLECTFLOW_SMTP_PASSWORD", "pw")
        monkeypatch.setenv(f"COLLECTFLOW_SMTP_{mode.upper()}", "true")
        get_settings.cache_clear()
        overdue_reminder(engine)

        assert deliver_due(engine, get_settings(), AS_OF).sent == 1
        assert len(server.envelopes) == 1

        monkeypatch.setenv("COLLECTFLOW_SMTP_PASSWORD", "wrong")
        get_settings.cache_clear()
        with engine.begin() as conn:
            add_customer(conn, "C2", email="c2@example.org")
            add_invoice(conn, "C2", "INV-2")
            second = add_message(conn, add_case(conn, "C2"), "C2", ["INV-2"])

        report = deliver_due(engine, get_settings(), AS_OF)

    assert report.retrying == 1  # a refused login is the settings' fault, not the message's
    assert "could not open an SMTP session" in message_row(engine, second).last_error


# --- the command and the flow ---------------------------------------------------------------


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_the_deliver_command_and_the_hourly_flow_report_what_they_did(
    engine: Engine, smtp: SmtpServer
) -> None:
    overdue_reminder(engine)

    result = CliRunner().invoke(
        app, ["deliver", "--as-of", AS_OF.isoformat(), "--workers", "1", "--json"]
    )

    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout) | {"suppressed": {}} == {
        "sent": 1, "suppressed": {}, "failed": {}, "bounced": 0, "retrying": 0,
        "deferred": {}, "in_doubt": [],
    }  # fmt: skip
    with engine.begin() as conn:
        add_customer(conn, "C2", email="c2@example.org")
        add_invoice(conn, "C2", "INV-2")
        add_message(conn, add_case(conn, "C2"), "C2", ["INV-2"], to_address="c2@example.org")

    assert deliver_flow(as_of=AS_OF)["sent"] == 1
    assert [e.rcpt_tos for e in smtp.envelopes] == [["ada@example.org"], ["c2@example.org"]]
