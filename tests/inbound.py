"""Inbound mail for tests: customers who got a real reminder, and the mail that comes back
(replies written like mail clients write them, the bounce samples of tests/data/inbound/)."""

from __future__ import annotations

import mailbox
from datetime import date, timedelta
from email.message import EmailMessage
from email.utils import format_datetime, make_msgid
from pathlib import Path
from string import Template
from typing import Any

from sqlalchemy import Engine, select

from collectflow.flows.config import Settings
from collectflow.models import Message
from tests.ledger import Ledger

SAMPLES = Path(__file__).parent / "data" / "inbound"
MESSAGES = Message.__table__


def reminded(
    engine: Engine,
    settings: Settings,
    folder: Path,
    today: date,
    customers: dict[str, str],
    emails: dict[str, str] | None = None,
) -> dict[str, dict[str, Any]]:
    """Customers (id -> locale; `emails` gives some an address of their own choosing) each
    owing 250.00 due five days ago, reminded today by the daily run (a real rendered email
    each, in the outbox Maildir); returns customer id -> their message (id, case_id,
    to_address, message_id_header)."""
    from collectflow.flows.pipeline import open_run, run_day

    due = today - timedelta(days=5)
    ledger = Ledger()
    for customer_id, locale in customers.items():
        address = (emails or {}).get(customer_id, f"{customer_id.lower()}@example.com")
        ledger.customer(customer_id, locale=locale, email=address)
        ledger.history(customer_id, due)
        ledger.invoice(f"INV-{customer_id}", customer_id, due, amount="250.00")
    ledger.load(engine, folder, settings)
    with open_run(settings) as ctx:
        run_day(ctx, today)
    with engine.connect() as conn:
        rows = conn.execute(
            select(
                MESSAGES.c.id, MESSAGES.c.customer_id, MESSAGES.c.case_id, MESSAGES.c.to_address,
                MESSAGES.c.message_id_header, MESSAGES.c.subject,
            ).where(MESSAGES.c.status == "sent")
        ).mappings()  # fmt: skip
        sent = {row["customer_id"]: dict(row) for row in rows}
    assert set(sent) == set(customers), f"not every customer was reminded: {sorted(sent)}"
    return sent


def reply(
    sender: str,
    body: str,
    *,
    to: dict[str, Any] | None = None,
    subject: str = "Re: Reminder",
    headers: dict[str, str] | None = None,
) -> bytes:
    """A reply as a mail client writes it: to `to` (our message: threaded by In-Reply-To and
    References), or unthreaded when `to` is None."""
    mail = EmailMessage()
    mail["From"] = sender
    mail["To"] = "Accounts Receivable <billing@example.com>"
    mail["Subject"] = subject
    mail["Date"] = format_datetime(_now())
    mail["Message-ID"] = make_msgid(domain="customer-mail.example")
    if to is not None:
        mail["In-Reply-To"] = to["message_id_header"]
        mail["References"] = to["message_id_header"]
    for name, value in (headers or {}).items():
        mail[name] = value
    mail.set_content(body)
    return bytes(mail)


def bounce(sample: str, recipient: str, message_id: str) -> bytes:
    """A bounce sample with the failed recipient and the returned Message-ID filled in."""
    text = (SAMPLES / sample).read_text(encoding="utf-8")
    return Template(text).substitute(recipient=recipient, message_id=message_id).encode()


def inbox(path: Path, *mails: bytes) -> Path:
    """A Maildir holding `mails` in new/, as a delivery agent leaves them."""
    box = mailbox.Maildir(path, create=True)
    for raw in mails:
        box.add(raw)
    box.close()
    return path


def files(path: Path, folder: str) -> list[str]:
    """The mail files in a Maildir's `new` or `cur` folder."""
    return sorted(entry.name for entry in (path / folder).iterdir())


def _now() -> Any:
    from datetime import UTC, datetime

    return datetime.now(UTC)
