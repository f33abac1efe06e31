"""Turning a rendered message row into an email that clients and filters treat well.

The Message-ID is derived from the message's idempotency key, so a retry carries the same id
and later stages can thread under it. Names and the subject are made one line without control
characters, then quoted or RFC 2047 encoded, and the address must be one plain addr-spec
(checked by `email.headerregistry`), so no data in the row can add a header or a recipient.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from email import message_from_string, policy
from email.errors import HeaderParseError
from email.headerregistry import Address
from email.message import EmailMessage
from email.utils import format_datetime, parseaddr
from typing import Any, NamedTuple
from urllib.parse import quote

import idna

from collectflow.flows.config import Settings
from collectflow.flows.errors import ConfigError, DeliveryError, NotRendered, UndeliverableMessage
from collectflow.flows.feedback.message_links import message_links

MAX_LINE = 78  # RFC 5322's recommended header line length
CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_ATOM = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+"
_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
PLAIN_ADDRESS = re.compile(rf"{_ATOM}(?:\.{_ATOM})*@{_LABEL}(?:\.{_LABEL})+")


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


class Mailbox(NamedTuple):
    """A display name (one line, maybe empty) and one checked addr-spec, its domain in ASCII
    (IDNA); `smtputf8` when its local part is not ASCII (RFC 6531)."""

    name: str
    address: str
    smtputf8: bool = False


def recipient(name: str | None, address: str) -> Mailbox:
    """The To mailbox; refuses anything but one plain addr-spec.

    Whitespace and control characters in the name (CR/LF included) become single spaces: a
    name is display text, and this keeps a hostile name inside the quoted display name.
    Common addresses are checked by a strict pattern; the rest (quoted local parts,
    non-ASCII) by the stdlib's RFC 5322 parser, which is a hundred times slower. An
    internationalised domain is written as IDNA A-labels (punycode), which every server
    reads; a non-ASCII local part has no ASCII form and needs SMTPUTF8.
    """
    if "\r" in address or "\n" in address:
        raise DeliveryError(f"{address!r} contains a line break; fix the customer's email")
    if PLAIN_ADDRESS.fullmatch(address):
        return Mailbox(one_line(name or ""), address)
    # RFC 6531 allows any non-ASCII character where a letter may be; the stdlib parser
    # refuses them in a local part, so it checks the form with each one as an "x".
    probe = "".join(char if char.isascii() else "x" for char in address)
    try:
        mailbox = Address(addr_spec=probe)
    except (ValueError, IndexError, HeaderParseError) as exc:  # IndexError: on "name@"
        raise DeliveryError(
            f"{address!r} is not a single email address ({exc}); fix the customer's email"
        ) from exc
    if not mailbox.username or not mailbox.domain:
        raise DeliveryError(f"{address!r} lacks a user or a domain; fix the customer's email")
    local, _, domain = address.strip().rpartition("@")
    return Mailbox(one_line(name or ""), f"{local}@{ascii_domain(domain, address)}",
                   not local.isascii())  # fmt: skip


def ascii_domain(domain: str, address: str) -> str:
    """The domain as IDNA 2008 A-labels (UTS #46 mapping, as browsers and mail servers do).

    The `idna` package rather than Python's "idna" codec, which implements IDNA 2003 and
    maps "ß" to "ss": another domain than the customer's, so mail to the
    wrong people. Raises DeliveryError for a domain that IDNA refuses.
    """
    if domain.isascii():
        return domain
    try:
        return idna.encode(domain, uts46=True).decode("ascii")
    except idna.IDNAError as exc:
        raise DeliveryError(
            f"{address!r}: the domain is not a valid internationalised domain ({exc}); "
            "fix the customer's email"
        ) from exc


def unsubscribe_mailto(settings: Settings, domain: str, customer_id: str) -> str:
    """The mailto part of List-Unsubscribe: a mailto whose subject names the customer."""
    mailbox = (settings.unsubscribe_mailto or f"unsubscribe@{domain}").removeprefix("mailto:")
    if "?" not in mailbox:
        mailbox += "?subject=" + quote(f"unsubscribe-{customer_id}")
    return f"<mailto:{mailbox}>"


def list_unsubscribe(
    settings: Settings, domain: str, customer_id: str, one_click: str | None
) -> dict[str, str]:
    """List-Unsubscribe: the mailto and, when the message has one, its HTTPS one-click URL
    (the customer page's, `feedback.message_links`) with RFC 8058's List-Unsubscribe-Post,
    which lets mail clients unsubscribe in one click."""
    mailto = unsubscribe_mailto(settings, domain, customer_id)
    if one_click is None:
        return {"List-Unsubscribe": mailto}
    return {
        "List-Unsubscribe": f"{mailto}, <{one_click}>",
        "List-Unsubscribe-Post": "List-Unsubscribe=One-Click",
    }


def refuse_retired_settings(settings: Settings) -> None:
    """The opt-out URL template of old (`UNSUBSCRIBE_URL`, `UNSUBSCRIBE_SECRET`) is retired:
    the one-click URL is now each message's signed link under `COLLECTFLOW_PUBLIC_URL`. Set, it
    would be silently ignored, so it stops delivery with what to do instead."""
    retired = [
        name
        for name, value in (
            ("COLLECTFLOW_UNSUBSCRIBE_URL", settings.unsubscribe_url),
            ("COLLECTFLOW_UNSUBSCRIBE_SECRET", settings.unsubscribe_secret),
        )
        if value
    ]
    if retired:
        raise ConfigError(
            f"{' and '.join(retired)}: retired; the one-click opt-out URL is now the customer "
            "page's ({COLLECTFLOW_PUBLIC_URL}/r/<token>/unsubscribe, signed with "
            "COLLECTFLOW_LINK_SECRET, served by `collectflow serve`): unset it "
            '(docs/feedback.md, "Paying and answer links")'
        )


@dataclass(frozen=True)
class Email:
    """One email ready for the wire: the envelope, the Message-ID and the message's bytes."""

    sender: str
    recipient: str
    message_id: str
    data: bytes
    smtputf8: bool = False

    @classmethod
    def of(cls, message: EmailMessage) -> Email:
        """A message built with the stdlib (staff alerts), its envelope taken from From/To."""
        _, sender = parseaddr(str(message["From"]))
        _, to = parseaddr(str(message["To"]))
        return cls(sender, to, str(message["Message-ID"] or ""), message.as_bytes())


class Composer:
    """Builds emails from rendered message rows, with what the settings fix computed once.

    The bytes are assembled here rather than by `email.generator`: every header value is
    first made one safe line (so no data can add a header), and skipping the generator's
    re-parsing and re-folding makes building an email cheaper than sending it.
    """

    def __init__(self, settings: Settings):
        self.domain = sender_domain(settings)
        refuse_retired_settings(settings)
        self._links = message_links(settings)  # no link secret or public URL: stop here
        self._settings = settings
        sender = _configured(settings.smtp_from, "COLLECTFLOW_SMTP_FROM")
        self.sender = sender.address
        reply_to = (
            _configured(settings.reply_to, "COLLECTFLOW_REPLY_TO") if settings.reply_to else sender
        )
        fixed = [("From", _mailbox_of(sender)), ("Reply-To", _mailbox_of(reply_to))]
        self._fixed = "".join(_header(name, value) for name, value in fixed)
        self._date_second = -1
        self._date_value = ""

    def _date(self) -> str:
        """The Date header for now: RFC 5322 counts whole seconds, so it is formatted once a
        second rather than once a message."""
        second = int(time.time())
        if second != self._date_second:
            self._date_second = second
            self._date_value = format_datetime(datetime.fromtimestamp(second, UTC))
        return self._date_value

    def message_id(self, row: Mapping[str, Any]) -> str:
        """The row's Message-ID: the one stored with it, or the one its key gives."""
        return row["message_id_header"] or message_id_for(row["key"], self.domain)

    def compose(self, row: Mapping[str, Any], earlier: Sequence[str] = ()) -> Email:
        """The email for a rendered message row.

        `row` holds the message's id, key, kind, customer_id, customer_name, to_address,
        subject, body_mime (`mime_body`, stored at render), link_expires_on (the answer
        link's, stored at render; none for internal mail) and message_id_header. Internal
        mail (to a colleague) is addressed to the bare address, never under the customer's
        name, and has no List-Unsubscribe.
        `earlier` lists the Message-IDs of the case's reminders already sent, oldest first:
        the email replies to the latest and references them all, so mail clients show the
        stages as one conversation.
        Raises DeliveryError when the address is unusable, NotRendered without a body.
        """
        if not row["body_mime"]:
            raise NotRendered(f"message {row['key']} has no rendered body; render it again")
        message_id = self.message_id(row)
        internal = row["kind"] == "internal"
        to = recipient(None if internal else row["customer_name"], row["to_address"])
        headers = [
            ("To", _mailbox_of(to)),
            ("Subject", _unstructured(row["subject"] or "")),
            ("Date", self._date()),
            ("Message-ID", message_id),
        ]
        if not internal:
            unsubscribe = list_unsubscribe(
                self._settings, self.domain, row["customer_id"], self._one_click(row)
            )
            headers += unsubscribe.items()
        thread = [mid for mid in earlier if mid != message_id]
        if thread:
            headers += [("In-Reply-To", thread[-1]), ("References", " ".join(thread))]
        head = self._fixed + "".join(_header(name, value) for name, value in headers)
        try:
            data = (head + row["body_mime"]).encode("utf-8" if to.smtputf8 else "ascii")
        except UnicodeEncodeError as exc:
            raise UndeliverableMessage(
                "unencodable", f"message {row['key']}: text that cannot be sent ({exc})"
            ) from exc
        return Email(self.sender, to.address, message_id, data, to.smtputf8)

    def _one_click(self, row: Mapping[str, Any]) -> str | None:
        """The message's one-click URL: the claims of its answer link, signed again."""
        expires_on = row.get("link_expires_on")
        if expires_on is None:  # rendered before answer links existed
            return None
        return self._links.one_click_url(row["id"], row["customer_id"], expires_on)


def mime_body(text: str | None, html: str | None, key: str) -> str:
    """The MIME part of a message's email, in ASCII: text/plain, or multipart/alternative
    with text and HTML, each quoted-printable. It depends only on the rendered content, so
    render builds it once and stores it, and each delivery attempt only adds the headers.

    The boundary comes from the message's idempotency `key` and starts with `=_`, which
    quoted-printable output can never contain.
    """
    text = text or ""
    if not html:
        return "MIME-Version: 1.0\n" + _part(text, "plain")
    boundary = "=_" + hashlib.sha256(key.encode("utf-8")).hexdigest()[:24]
    return (
        "MIME-Version: 1.0\n"
        f'Content-Type: multipart/alternative; boundary="{boundary}"\n\n'
        f"--{boundary}\n{_part(text, 'plain')}\n"
        f"--{boundary}\n{_part(html, 'html')}\n"
        f"--{boundary}--\n"
    )


def mime_parts(body_mime: str) -> tuple[str, str | None]:
    """The text and the HTML (None in a text-only email) that a stored MIME part carries."""
    email = message_from_string(body_mime, policy=policy.default)
    text, html = email.get_body(("plain",)), email.get_body(("html",))
    return (
        text.get_content() if isinstance(text, EmailMessage) else "",
        html.get_content() if isinstance(html, EmailMessage) else None,
    )


def _part(content: str, subtype: str) -> str:
    """One text part, UTF-8, quoted-printable (lines of at most 76 characters)."""
    lines = "\n".join(content.splitlines())
    encoded = binascii.b2a_qp(lines.encode("utf-8"), istext=True).decode("ascii")
    return (
        f'Content-Type: text/{subtype}; charset="utf-8"\n'
        f"Content-Transfer-Encoding: quoted-printable\n\n{encoded}\n"
    )


def _header(name: str, value: str) -> str:
    """`Name: value` and a line break, folded before spaces into lines of at most 78
    characters where the words allow. `value` is already one line of ASCII."""
    if len(name) + 2 + len(value) <= MAX_LINE:  # most headers: nothing to fold
        return f"{name}: {value}\n"
    first = f"{name}:"
    lines = [first]
    for word in value.split(" "):
        if len(lines[-1]) + 1 + len(word) > MAX_LINE and lines[-1] != first:
            lines.append("")
        lines[-1] += " " + word
    return "\n".join(lines) + "\n"


def _unstructured(value: str) -> str:
    """One line (CR/LF and runs of whitespace become one space), RFC 2047 encoded if needed.

    Words too long for a line (over 900 characters) are encoded too: encoded words split.
    So is text with `=?` in it, which a client would otherwise decode as an encoded word.
    """
    line = one_line(value)
    if line.isascii() and "=?" not in line and all(len(word) < 900 for word in line.split(" ")):
        return line
    return _encoded_words(line)


def _configured(value: str, setting: str) -> Mailbox:
    """A configured `Name <address>` (From, Reply-To) as a checked mailbox."""
    name, address = parseaddr(one_line(value))
    try:
        return recipient(name, address)
    except DeliveryError as exc:
        raise ConfigError(f"{setting} {value!r}: {exc}") from exc


NAME_MAX = 100  # characters of a display name kept: a name, not a letter
SPECIALS = re.compile(r'[][\\()<>@,:;".]')


def display_name(name: str) -> str:
    """A display name as a header phrase that no reader can turn into more than a name.

    One line, at most NAME_MAX characters (a longer one ends in "..."), so its header line
    stays far under 998 octets even where a long word cannot fold. ASCII stays readable
    (quoted when it holds specials); anything else, or a name that holds "=?" (a decoder
    would read it as an encoded word, which can carry CR LF), is written as RFC 2047 encoded
    words of its own text (`_phrase_words`).
    """
    name = one_line(name)
    if len(name) > NAME_MAX:
        name = name[: NAME_MAX - 3].rstrip() + "..."
    if not name.isascii() or "=?" in name:
        return _phrase_words(name)
    if not SPECIALS.search(name):
        return name
    return '"' + name.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _phrase_words(text: str) -> str:
    """Encoded words for a phrase, split at the text's own spaces where a word must end,
    each space kept inside the word before it: RFC 2047 readers drop the whitespace between
    encoded words. (Python's email package keeps it in a phrase, so it reads one space more
    there; nothing else.)"""
    chunks = [""]
    for word in text.split(" "):
        joined = f"{chunks[-1]} {word}" if chunks[-1] else word
        if chunks[-1] and len(joined.encode("utf-8")) > WORD_BYTES:
            chunks[-1] += " "
            chunks.append(word)
        else:
            chunks[-1] = joined
    return " ".join(_encoded_words(chunk) for chunk in chunks if chunk)


def _mailbox_of(mailbox: Mailbox) -> str:
    """A checked mailbox as a header value: `display name <address>`, or the bare address."""
    phrase = display_name(mailbox.name)
    return f"{phrase} <{mailbox.address}>" if phrase else mailbox.address


WORD_BYTES = 42  # 56 in base64: a word of 68 characters fits a line after "Subject: "


def _encoded_words(text: str) -> str:
    """RFC 2047 UTF-8 encoded words ("B" encoding) of whole characters and at most 75
    characters each, separated by spaces (which a reader drops between encoded words).

    Written out rather than through `email.header.Header`, which took 0.1 ms for a subject
    with one dash in it: as long as sending the email.
    """
    data = text.encode("utf-8")
    words = []
    start = 0
    while start < len(data):
        end = min(start + WORD_BYTES, len(data))
        while end < len(data) and data[end] & 0xC0 == 0x80:  # inside a character: back up
            end -= 1
        words.append(f"=?utf-8?b?{base64.b64encode(data[start:end]).decode('ascii')}?=")
        start = end
    return " ".join(words)


def one_line(text: str) -> str:
    """Control characters and runs of whitespace (CR and LF included) become one space."""
    return " ".join(CONTROL.sub(" ", text).split())
