"""Turning a rendered message row into an email that clients and filters treat well.

The Message-ID is derived from the message's idempotency key, so a retry carries the same id
and later stages can thread under it. Names and the subject are folded onto one line and the
address must be one plain addr-spec (checked by `email.headerregistry`, which also quotes the
name), so no data in the row can add a header or a recipient.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from datetime import UTC, datetime
from email.headerregistry import Address
from email.message import EmailMessage
from email.utils import format_datetime, parseaddr
from typing import Any
from urllib.parse import quote

from flows.config import Settings
from flows.errors import ConfigError, DeliveryError


def message_id_for(key: str, domain: str) -> str:
    """The Message-ID of the message with idempotency `key`: the same on every attempt."""
    digest = hashlib.sha256(key.encode("utf-8")).hexdigest()[:32]
    return f"<{digest}@{domain}>"


def sender_domain(settings: Settings) -> str:
    """The domain of `settings.smtp_from`, which names Message-IDs and the unsubscribe box."""
    _, address = parseaddr(settings.smtp_from)
    _, _, domain = address.rpartition("@")
    if not domain:
        raise ConfigError(
            f"COLLECTFLOW_SMTP_FROM {settings.smtp_from!r} has no email address with a domain; "
            "set it like 'Accounts Receivable <billing@yourcompany.com>'"
        )
    return domain


def recipient(name: str | None, address: str) -> Address:
    """The To mailbox; refuses anything but one plain addr-spec.

    Whitespace in the name (CR/LF included) is folded to single spaces: a name is display
    text, and folding it keeps a hostile name inside the quoted display name.
    """
    if "\r" in address or "\n" in address:
        raise DeliveryError(f"{address!r} contains a line break; fix the customer's email")
    try:
        mailbox = Address(display_name=" ".join((name or "").split()), addr_spec=address)
    except (ValueError, IndexError) as exc:  # IndexError: the stdlib parser on "name@"
        raise DeliveryError(
            f"{address!r} is not a single email address ({exc}); fix the customer's email"
        ) from exc
    if not mailbox.username or not mailbox.domain:
        raise DeliveryError(f"{address!r} lacks a user or a domain; fix the customer's email")
    return mailbox


def unsubscribe_mailto(settings: Settings, domain: str, customer_id: str) -> str:
    """The List-Unsubscribe value: a mailto whose subject names the customer."""
    mailbox = (settings.unsubscribe_mailto or f"unsubscribe@{domain}").removeprefix("mailto:")
    if "?" not in mailbox:
        mailbox += "?subject=" + quote(f"unsubscribe-{customer_id}")
    return f"<mailto:{mailbox}>"


def build_email(
    row: Mapping[str, Any], settings: Settings, thread_root: str | None
) -> EmailMessage:
    """The email for a rendered message row.

    `row` holds the message's key, kind, customer_id, customer_name, to_address, subject,
    body_text, body_html and message_id_header. `thread_root` is the Message-ID of the first
    reminder sent in the case; later stages reply to it so clients show one conversation.
    Raises DeliveryError when the address is unusable.
    """
    domain = sender_domain(settings)
    message_id = row["message_id_header"] or message_id_for(row["key"], domain)
    email = EmailMessage()
    email["From"] = settings.smtp_from
    email["To"] = recipient(row["customer_name"], row["to_address"])
    email["Subject"] = " ".join(row["subject"].split())
    email["Date"] = format_datetime(datetime.now(UTC))
    email["Message-ID"] = message_id
    if settings.reply_to:
        email["Reply-To"] = settings.reply_to
    if row["kind"] != "internal":
        email["List-Unsubscribe"] = unsubscribe_mailto(settings, domain, row["customer_id"])
    if thread_root and thread_root != message_id:
        email["In-Reply-To"] = thread_root
        email["References"] = thread_root
    email.set_content(row["body_text"] or "", charset="utf-8", cte="quoted-printable")
    if row["body_html"]:
        email.add_alternative(
            row["body_html"], subtype="html", charset="utf-8", cte="quoted-printable"
        )
    return email
