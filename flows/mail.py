"""Turning a rendered message row into an email that clients and filters treat well.

The Message-ID is derived from the message's idempotency key, so a retry carries the same id
and later stages can thread under it. Names and the subject are folded onto one line and the
address must be one plain addr-spec (checked by `email.headerregistry`, which also quotes the
name), so no data in the row can add a header or a recipient.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Mapping
from datetime import UTC, datetime
from email.charset import QP, Charset
from email.header import Header
from email.headerregistry import Address
from email.message import Message
from email.mime.multipart import MIMEMultipart
from email.mime.nonmultipart import MIMENonMultipart
from email.utils import format_datetime, formataddr, parseaddr
from typing import Any
from urllib.parse import quote

from flows.config import Settings
from flows.errors import ConfigError, DeliveryError

UTF8_QP = Charset("utf-8")
UTF8_QP.body_encoding = QP


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
    """The mailto part of List-Unsubscribe: a mailto whose subject names the customer."""
    mailbox = (settings.unsubscribe_mailto or f"unsubscribe@{domain}").removeprefix("mailto:")
    if "?" not in mailbox:
        mailbox += "?subject=" + quote(f"unsubscribe-{customer_id}")
    return f"<mailto:{mailbox}>"


def unsubscribe_token(settings: Settings, customer_id: str) -> str:
    """A token only Collectflow can compute: an opt-out URL can't be forged for another customer."""
    if settings.unsubscribe_secret is None:
        raise ConfigError(
            "COLLECTFLOW_UNSUBSCRIBE_URL uses {token}: set COLLECTFLOW_UNSUBSCRIBE_SECRET too"
        )
    key = settings.unsubscribe_secret.get_secret_value().encode("utf-8")
    return hmac.new(key, customer_id.encode("utf-8"), hashlib.sha256).hexdigest()[:32]


def unsubscribe_url(settings: Settings, customer_id: str) -> str | None:
    """The one-click opt-out URL from the `unsubscribe_url` template, or None when unset."""
    template = settings.unsubscribe_url
    if not template:
        return None
    token = unsubscribe_token(settings, customer_id) if "{token}" in template else ""
    return template.format(customer_id=quote(customer_id, safe=""), token=token)


def list_unsubscribe(settings: Settings, domain: str, customer_id: str) -> dict[str, str]:
    """List-Unsubscribe (mailto, and the URL when configured) and, with a URL, RFC 8058's
    List-Unsubscribe-Post, which lets mail clients unsubscribe in one click."""
    mailto = unsubscribe_mailto(settings, domain, customer_id)
    url = unsubscribe_url(settings, customer_id)
    if url is None:
        return {"List-Unsubscribe": mailto}
    return {
        "List-Unsubscribe": f"{mailto}, <{url}>",
        "List-Unsubscribe-Post": "List-Unsubscribe=One-Click",
    }


def build_email(row: Mapping[str, Any], settings: Settings, thread_root: str | None) -> Message:
    """The email for a rendered message row.

    `row` holds the message's key, kind, customer_id, customer_name, to_address, subject,
    body_text, body_html and message_id_header. `thread_root` is the Message-ID of the first
    reminder sent in the case; later stages reply to it so clients show one conversation.
    Raises DeliveryError when the address is unusable.

    Built with the stdlib's plain (compat32) message classes: every value is first made one
    safe line here, so the header registry's re-parsing (a millisecond an email) is not needed.
    """
    domain = sender_domain(settings)
    message_id = row["message_id_header"] or message_id_for(row["key"], domain)
    to = recipient(row["customer_name"], row["to_address"])
    email = _body(row["body_text"] or "", row["body_html"])
    email["From"] = _mailbox(settings.smtp_from)
    email["To"] = formataddr((to.display_name, to.addr_spec), charset="utf-8")
    email["Subject"] = _unstructured(row["subject"])
    email["Date"] = format_datetime(datetime.now(UTC))
    email["Message-ID"] = message_id
    if settings.reply_to:
        email["Reply-To"] = _mailbox(settings.reply_to)
    if row["kind"] != "internal":
        for name, value in list_unsubscribe(settings, domain, row["customer_id"]).items():
            email[name] = value
    if thread_root and thread_root != message_id:
        email["In-Reply-To"] = thread_root
        email["References"] = thread_root
    return email


def _body(text: str, html: str | None) -> Message:
    """text/plain, or multipart/alternative with text and HTML; UTF-8, quoted-printable."""
    plain = _part(text, "plain")
    if not html:
        return plain
    alternative = MIMEMultipart("alternative")
    alternative.attach(plain)
    alternative.attach(_part(html, "html"))
    return alternative


def _part(content: str, subtype: str) -> Message:
    part = MIMENonMultipart("text", subtype)
    part.set_payload(content if content.endswith("\n") else content + "\n", UTF8_QP)
    return part


def _unstructured(value: str) -> str:
    """One line (CR/LF and runs of whitespace become one space), RFC 2047 encoded if needed."""
    line = " ".join(value.split())
    return line if line.isascii() else Header(line, "utf-8").encode()


def _mailbox(value: str) -> str:
    """A configured `Name <address>` as one safe header value."""
    name, address = parseaddr(" ".join(value.split()))
    return formataddr((name, address), charset="utf-8")
