"""An inbound mail as Collectflow reads it: its key, sender, subject, the Message-IDs it
answers, and the text its author wrote, from whatever bytes arrived.

Mail from outside is often malformed (no Message-ID, broken MIME, a charset nobody knows,
undecodable base64, headers with raw 8-bit bytes). Parsing uses the stdlib's lenient compat32
policy, which records defects instead of raising, and every header is decoded with a fallback,
so reading a mail never raises on its content; what cannot be read is left empty.
"""

from __future__ import annotations

import email
import hashlib
import re
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from email.header import decode_header, make_header
from email.message import Message
from email.policy import compat32
from email.utils import getaddresses, parsedate_to_datetime
from html.parser import HTMLParser

MESSAGE_ID = re.compile(r"<[^<>\s]{1,250}@[^<>\s]{1,250}>")
MAX_KEY = 255
MAX_TEXT = 100_000


@dataclass(frozen=True)
class Inbound:
    """What filing needs of one mail (the parsed message is kept for bounce detection)."""

    key: str
    message: Message
    sender: str | None
    subject: str
    sent_at: datetime | None
    answers: tuple[str, ...]  # In-Reply-To, then References from the latest: our Message-IDs?


def parse(raw: bytes) -> Inbound:
    """Read one mail's bytes (see the module docstring: never raises on malformed content)."""
    message = email.message_from_bytes(raw, policy=compat32)
    return Inbound(
        key=mail_key(message, raw),
        message=message,
        sender=sender_of(message),
        subject=header_text(message, "Subject"),
        sent_at=sent_at(message),
        answers=answered_ids(message),
    )


def mail_key(message: Message, raw: bytes) -> str:
    """The mail's Message-ID; without a usable one, a hash of its bytes (the same mail read
    twice gets the same key either way)."""
    found = MESSAGE_ID.search(header_text(message, "Message-ID"))
    if found and len(found.group(0)) <= MAX_KEY:
        return found.group(0)
    return hashed_key(raw)


def hashed_key(raw: bytes) -> str:
    """The key of a mail without a usable Message-ID: a hash of its bytes."""
    return "sha256:" + hashlib.sha256(raw).hexdigest()


def header_text(message: Message, name: str) -> str:
    """A header as text, RFC 2047 words decoded; "" when absent; undecodable parts replaced."""
    value = message.get(name)
    if value is None:
        return ""
    try:
        text = str(make_header(decode_header(value)))
    except (ValueError, LookupError, UnicodeError, TypeError, AssertionError):
        text = str(value)
    return " ".join(storable(text).split())


def storable(text: str) -> str:
    """Text any database column takes: no NUL (PostgreSQL refuses it), no lone surrogate."""
    return text.replace("\x00", "").encode("utf-8", "replace").decode("utf-8")


def sender_of(message: Message) -> str | None:
    """The From address, lower case; None when there is none to read."""
    try:
        pairs = getaddresses([header_text(message, "From")])
    except (ValueError, TypeError):
        return None
    addresses = [address.strip().lower() for _, address in pairs if "@" in address]
    return addresses[0][:320] if addresses else None


def sent_at(message: Message) -> datetime | None:
    """The Date header as a UTC instant (a date without a zone is taken as UTC)."""
    text = header_text(message, "Date")
    if not text:
        return None
    try:
        when = parsedate_to_datetime(text)
    except (ValueError, TypeError, IndexError, OverflowError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return when.astimezone(UTC)


def answered_ids(message: Message) -> tuple[str, ...]:
    """The Message-IDs a mail answers: In-Reply-To first, then References newest first."""
    found = MESSAGE_ID.findall(header_text(message, "In-Reply-To"))
    found += reversed(MESSAGE_ID.findall(header_text(message, "References")))
    return tuple(dict.fromkeys(found))


def body_text(message: Message) -> str:
    """The text the mail's author wrote: its first text/plain part, else its first HTML part
    as text; attachments and attached messages (a forwarded or returned mail) are skipped."""
    plain = html = None
    for part in _leaves(message):
        subtype = part.get_content_subtype()
        if subtype == "plain" and plain is None:
            plain = _decoded(part)
        elif subtype == "html" and html is None:
            html = _decoded(part)
    if plain is not None and plain.strip():
        return plain[:MAX_TEXT]
    return html_text(html)[:MAX_TEXT] if html else (plain or "")


def _leaves(part: Message) -> Iterator[Message]:
    """The text parts of a mail in order, not descending into attached messages."""
    if part.get_content_maintype() == "message":
        return
    if part.is_multipart():
        payload = part.get_payload()
        for child in payload if isinstance(payload, list) else []:
            yield from _leaves(child)
        return
    disposition = (part.get("Content-Disposition") or "").split(";")[0].strip().lower()
    if part.get_content_maintype() == "text" and disposition != "attachment":
        yield part


def _decoded(part: Message) -> str:
    payload = part.get_payload(decode=True)
    if not isinstance(payload, bytes):
        return ""
    charset = part.get_content_charset() or "utf-8"
    try:
        return storable(payload.decode(charset, "replace"))
    except LookupError:  # a charset Python does not know
        return storable(payload.decode("utf-8", "replace"))


def html_text(html: str) -> str:
    """The visible text of an HTML mail, without what a mail client quoted (blockquotes,
    Gmail's and Yahoo's quote blocks), scripts and styles."""
    reader = _TextOfHtml()
    try:
        reader.feed(html)
        reader.close()
    except (AssertionError, ValueError):  # hopeless markup: what was read so far
        pass
    return "\n".join(line.strip() for line in "".join(reader.text).splitlines())


class _TextOfHtml(HTMLParser):
    SKIPPED = frozenset({"blockquote", "script", "style", "head", "title"})
    QUOTE_CLASSES = ("gmail_quote", "yahoo_quoted", "moz-cite-prefix")
    BREAKS = frozenset({"br", "p", "div", "tr", "li", "h1", "h2", "h3", "table"})

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.text: list[str] = []
        self._skipping: str | None = None
        self._depth = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if self._skipping is not None:
            self._depth += tag == self._skipping
            return
        classes = " ".join(value or "" for name, value in attrs if name == "class")
        if tag in self.SKIPPED or any(quote in classes for quote in self.QUOTE_CLASSES):
            self._skipping, self._depth = tag, 1
        elif tag in self.BREAKS:
            self.text.append("\n")

    def handle_endtag(self, tag: str) -> None:
        if self._skipping is not None:
            self._depth -= tag == self._skipping
            if self._depth <= 0:
                self._skipping = None
        elif tag in self.BREAKS:
            self.text.append("\n")

    def handle_data(self, data: str) -> None:
        if self._skipping is None:
            self.text.append(data)
