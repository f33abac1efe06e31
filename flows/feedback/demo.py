"""The demo's customers answer: a few of them use the answer link of a recent reminder, so the
report's "What customers say" and the case stories show the loop on the first run.

Who answers, and what, is drawn from a hash of the message's key (stable: rerunning the demo the
same day records nothing new, as answers are idempotent) and fits the message's diagnosed cause:
a failed payment answers "my payment failed", the others mostly need time, say they have paid,
or report a problem with the order, and one customer asks to stop.
"""

from __future__ import annotations

import hashlib
import mailbox
from collections.abc import Sequence
from datetime import UTC, date, datetime, timedelta
from email.message import EmailMessage
from email.utils import format_datetime
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, exists, select

from collectflow.flows.feedback.answers import (
    ALREADY_PAID,
    NEED_TIME,
    ORDER_PROBLEM,
    ORDER_REASONS,
    PAYMENT_FAILED,
    UNSUBSCRIBE,
    Answer,
    AnswerRefused,
    apply_answer,
)
from collectflow.flows.policy.document import Policy
from collectflow.models import InvoiceBalance, Message, MessageItem

MESSAGES = Message.__table__
ITEMS = MessageItem.__table__
BALANCES = InvoiceBalance.__table__
ANSWER_SHARE = 3  # about one recent reminder still owed in this many is answered
RECENT_DAYS = 21
FAILED_CAUSES = ("payment_failed_technical", "payment_failed_customer", "outage")


def simulate_answers(engine: Engine, policy: Policy, today: date) -> dict[str, int]:
    """Answer some reminders sent in the last days that still ask for money owed (as the last
    run's balances say); returns the answers recorded per intent."""
    with engine.connect() as conn:
        sent = conn.execute(
            select(MESSAGES.c.id, MESSAGES.c.key, MESSAGES.c.customer_id, MESSAGES.c.cause)
            .where(
                MESSAGES.c.status == "sent",
                MESSAGES.c.kind == "reminder",
                MESSAGES.c.sent_on >= today - timedelta(days=RECENT_DAYS),
                exists().where(
                    ITEMS.c.message_id == MESSAGES.c.id,
                    BALANCES.c.invoice_id == ITEMS.c.invoice_id,
                    BALANCES.c.remindable,
                ),
            )
            .order_by(MESSAGES.c.id)
        ).all()
    recorded: dict[str, int] = {}
    unsubscribed = False
    answered: set[str] = set()
    for row in sent:
        draw = int(hashlib.sha256(row.key.encode()).hexdigest()[:8], 16)
        if draw % ANSWER_SHARE or row.customer_id in answered:
            continue
        answered.add(row.customer_id)
        fields = _answer_fields(row, draw, today, unsubscribed)
        unsubscribed |= fields["intent"] == UNSUBSCRIBE
        answer = Answer(customer_id=row.customer_id, source="page", message_id=row.id, **fields)
        try:
            with engine.begin() as conn:
                result = apply_answer(conn, policy, answer, today)
        except AnswerRefused:  # paid or disputed since: a real customer would not answer either
            continue
        if result.recorded:
            recorded[answer.intent] = recorded.get(answer.intent, 0) + 1
    return recorded


def _answer_fields(row: Any, draw: int, today: date, unsubscribed: bool) -> dict[str, Any]:
    """What this customer says, from the message's cause and the draw."""
    if row.cause in FAILED_CAUSES:
        return {"intent": PAYMENT_FAILED}
    choice = (draw // ANSWER_SHARE) % 7
    if choice == 0 and not unsubscribed:
        return {"intent": UNSUBSCRIBE}
    if choice in (1, 2):
        return {"intent": NEED_TIME, "promise_date": today + timedelta(days=7 + choice * 3)}
    if choice in (3, 4):
        return {
            "intent": ALREADY_PAID,
            "paid_on": today - timedelta(days=1),
            "reference": f"TRF-{draw % 100000:05d}",
        }
    reason = ORDER_REASONS[(draw // 7) % (len(ORDER_REASONS) - 1)]
    return {"intent": ORDER_PROBLEM, "reason": reason, "text": DEMO_TEXTS[reason]}


DEMO_TEXTS = {
    "not_received": "The goods on this invoice never arrived.",
    "wrong_amount": "The price does not match our order confirmation.",
    "damaged": "Two of the items arrived damaged; we sent photos to your support team.",
    "returned_or_cancelled": "We cancelled this order within the return period.",
    "charged_twice": "This was already charged to our card once.",
}


def simulate_inbox(engine: Engine, policy: Policy, today: date, folder: Path) -> dict[str, Any]:
    """Mail comes back to the demo: a customer's reply saying they paid, an out-of-office
    auto-reply and a delivery failure (RFC 3464), each to a reminder sent in the last days,
    left in the Maildir `folder` and read as `collectflow inbox` reads one. Written once: a
    rerun reads the same Maildir, which files nothing new."""
    from collectflow.flows.feedback.inbox import read_inbox
    from collectflow.flows.feedback.maildir_inbox import MaildirInbox

    if not folder.exists():
        with engine.connect() as conn:
            sent = conn.execute(
                select(MESSAGES.c.to_address, MESSAGES.c.message_id_header, MESSAGES.c.locale)
                .where(
                    MESSAGES.c.status == "sent",
                    MESSAGES.c.kind == "reminder",
                    MESSAGES.c.message_id_header.is_not(None),
                    MESSAGES.c.sent_on >= today - timedelta(days=RECENT_DAYS),
                )
                .order_by(MESSAGES.c.id.desc())
                .limit(3)
            ).all()
        box = mailbox.Maildir(folder, create=True)
        for raw in _returned_mail(sent):
            box.add(raw)
        box.close()
    return read_inbox(engine, policy, [MaildirInbox(folder)], today).to_dict()


def _returned_mail(sent: Sequence[Any]) -> list[bytes]:
    makers = (_paid_reply, _out_of_office, _bounce)
    return [_bytes(make(row)) for row, make in zip(sent, makers, strict=False)]


def _bytes(mail: EmailMessage | bytes) -> bytes:
    return mail if isinstance(mail, bytes) else mail.as_bytes()


def _answer_to(row: Any, subject: str) -> EmailMessage:
    mail = EmailMessage()
    mail["From"] = row.to_address
    mail["To"] = "Accounts Receivable <billing@example.com>"
    mail["Subject"] = subject
    mail["Date"] = format_datetime(datetime.now(UTC))
    mail["Message-ID"] = f"<demo-{_digest(row)}@customer.example>"
    mail["In-Reply-To"] = row.message_id_header
    mail["References"] = row.message_id_header
    return mail


def _paid_reply(row: Any) -> EmailMessage:
    mail = _answer_to(row, "Re: Payment reminder")
    mail.set_content(
        "Hello,\n\nWe have already paid this invoice by bank transfer yesterday, "
        "reference TRF-20931.\n\nBest regards\n"
    )
    return mail


def _out_of_office(row: Any) -> EmailMessage:
    mail = _answer_to(row, "Automatic reply: Payment reminder")
    mail["Auto-Submitted"] = "auto-replied"
    mail.set_content("I am out of the office until Monday and will reply when I am back.\n")
    return mail


def _bounce(row: Any) -> bytes:
    """A delivery status notification as an MTA writes one (RFC 3464): the address is gone."""
    return BOUNCE.format(
        date=format_datetime(datetime.now(UTC)),
        digest=_digest(row),
        recipient=row.to_address,
        message_id=row.message_id_header,
    ).encode()


BOUNCE = """From: Mail Delivery System <MAILER-DAEMON@mx.example.com>
To: billing@example.com
Subject: Undelivered Mail Returned to Sender
Date: {date}
Message-ID: <dsn-{digest}@mx.example.com>
Auto-Submitted: auto-replied
MIME-Version: 1.0
Content-Type: multipart/report; report-type=delivery-status; boundary="dsn-{digest}"

--dsn-{digest}
Content-Type: text/plain; charset=us-ascii

Your message could not be delivered to one or more recipients.

<{recipient}>: host mx.example.com said: 550 5.1.1 user unknown

--dsn-{digest}
Content-Type: message/delivery-status

Reporting-MTA: dns; mx.example.com

Final-Recipient: rfc822; {recipient}
Action: failed
Status: 5.1.1
Diagnostic-Code: smtp; 550 5.1.1 user unknown

--dsn-{digest}
Content-Type: text/rfc822-headers

Message-ID: {message_id}
To: {recipient}
Subject: Payment reminder

--dsn-{digest}--
"""


def _digest(row: Any) -> str:
    return hashlib.sha256(row.message_id_header.encode()).hexdigest()[:16]
