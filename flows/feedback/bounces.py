"""Bounces: which of our messages did not arrive, to which address, and whether for good.

Detection is GNU Mailman's bounce detectors (`flufl.bounce`): RFC 3464 delivery status
notifications and the layouts real MTAs send instead (Exim's `X-Failed-Recipients`, Postfix's
notification part, Microsoft's and older Exchange's texts, and more). What flufl.bounce does
not give, read here with the stdlib's email package:

- how permanent each failure is: the DSN `Status` of the recipient's block in the
  message/delivery-status part (5.x.x permanent, 4.x.x transient, RFC 3463); without a DSN,
  flufl.bounce's own permanent/temporary split (a delayed-mail warning is temporary);
- which message bounced: the Message-ID of the returned mail, from the message/rfc822 or
  text/rfc822-headers part, or from a "Message-ID:" line of a copy quoted in the text.

flufl.bounce runs its detectors one after the other until one finds something, some of them
over every line of the body: for a person's reply, all of them, which makes it the costliest
part of reading a mail. So it is asked only about a mail that shows a sign of being a report
on delivery: a multipart/report, an `X-Failed-Recipients` header, an empty `Return-Path`
(RFC 5321 4.5.5: reports go out with the null sender), a sender such as MAILER-DAEMON or
postmaster, or a subject that speaks of delivery failing, in English, French or German.
Every layout of tests/data/inbound/ shows several.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from email.iterators import typed_subpart_iterator
from email.message import Message
from email.parser import HeaderParser
from email.policy import compat32

from flufl.bounce import all_failures

from collectflow.flows.feedback.inbound import MESSAGE_ID, body_text, header_text

log = logging.getLogger(__name__)

RETURNED_HEADERS = ("text/rfc822-headers", "message/rfc822-headers")
QUOTED_MESSAGE_ID = re.compile(r"^\s*message-id:\s*(<[^<>\s]+@[^<>\s]+>)", re.I | re.M)
STATUS = re.compile(r"\b([245]\.\d{1,3}\.\d{1,3})\b")


@dataclass(frozen=True)
class Failure:
    """One recipient a bounce reports."""

    address: str
    permanent: bool
    status: str | None = None  # the DSN status code, e.g. 5.1.1
    diagnostic: str | None = None


@dataclass(frozen=True)
class Bounce:
    """What a bounce says: the failed recipients and the Message-IDs of what bounced."""

    failures: tuple[Failure, ...]
    returned_ids: tuple[str, ...]

    @property
    def permanent(self) -> bool:
        return any(failure.permanent for failure in self.failures)


REPORT_SENDERS = re.compile(
    r"^(?:mailer-daemon|mailer_daemon|mailerdaemon|mail-daemon|postmaster|mdaemon|bounces?"
    r"|microsoftexchange[0-9a-f]*)@",
    re.I,
)
REPORT_SUBJECTS = re.compile(
    r"undeliver|delivery (?:status|failure|has failed|notification|incomplete)|failure notice"
    r"|returned mail|returned to sender|mail delivery failed|could not be delivered"
    r"|non remis|non distribu|[ée]chec de (?:la )?(?:remise|distribution)|unzustellbar"
    r"|nicht zustellbar|zustellung fehlgeschlagen|r[üu]ckmeldung zur zustellung",
    re.I,
)


def may_be_bounce(message: Message) -> bool:
    """Whether the mail shows a sign of a delivery report (see the module docstring)."""
    if message.get_content_type() == "multipart/report" or "X-Failed-Recipients" in message:
        return True
    if "Return-Path" in message and header_text(message, "Return-Path") == "<>":
        return True
    sender = header_text(message, "From")
    addresses = re.findall(r"[^\s<>\"]+@[^\s<>\"]+", sender)
    if any(REPORT_SENDERS.match(address) for address in addresses):
        return True
    return bool(REPORT_SUBJECTS.search(header_text(message, "Subject")))


def bounce_of(message: Message) -> Bounce | None:
    """The bounce `message` is, or None when it reports no failed delivery."""
    if not may_be_bounce(message):
        return None
    temporary, permanent = _detected(message)
    reported = delivery_statuses(message)
    addresses = {*temporary, *permanent, *reported}
    if not addresses:
        return None
    failures = []
    for address in sorted(addresses):
        status, diagnostic = reported.get(address, (None, None))
        lasting = status.startswith("5") if status else address in permanent
        failures.append(Failure(address, lasting, status, diagnostic))
    return Bounce(tuple(failures), returned_ids(message))


def _detected(message: Message) -> tuple[set[str], set[str]]:
    """flufl.bounce's temporary and permanent failures, as lower-case addresses."""
    try:
        temporary, permanent = all_failures(message)
    except Exception:  # a detector tripped on a malformed mail: then it reports nothing
        log.warning("bounce detection failed on %s", header_text(message, "Message-ID"))
        return set(), set()
    return _addresses(temporary), _addresses(permanent)


def _addresses(found: frozenset[bytes]) -> set[str]:
    return {raw.decode("ascii", "replace").strip().strip("<>").lower() for raw in found if raw}


def delivery_statuses(message: Message) -> dict[str, tuple[str | None, str | None]]:
    """Per failed or delayed recipient of the message/delivery-status parts: (status code,
    diagnostic). Recipients delivered, relayed or expanded are left out."""
    found: dict[str, tuple[str | None, str | None]] = {}
    for part in typed_subpart_iterator(message, "message", "delivery-status"):
        for block in _blocks(part):
            recipient = block.get("Original-Recipient") or block.get("Final-Recipient") or ""
            address = str(recipient).split(";")[-1].strip().strip("<>").lower()
            action = str(block.get("Action") or "").strip().lower()
            status_match = STATUS.search(str(block.get("Status") or ""))
            status = status_match.group(1) if status_match else None
            failed = action.startswith(("failed", "delayed", "error")) or (
                status is not None and status[0] in "45"
            )
            if "@" in address and failed:
                diagnostic = " ".join(str(block.get("Diagnostic-Code") or "").split())[:300]
                found[address] = (status, diagnostic or None)
    return found


def _blocks(part: Message) -> list[Message]:
    """The per-message and per-recipient header blocks of a delivery-status part."""
    payload = part.get_payload()
    if isinstance(payload, list):
        return [block for block in payload if isinstance(block, Message)]
    text = payload if isinstance(payload, str) else ""
    parser = HeaderParser(policy=compat32)
    return [parser.parsestr(chunk) for chunk in re.split(r"\r?\n\s*\r?\n", text) if chunk]


def returned_ids(message: Message) -> tuple[str, ...]:
    """The Message-IDs of the mail a bounce returns (or quotes), in the order found."""
    found: list[str] = []
    for part in message.walk():
        content_type = part.get_content_type()
        if content_type == "message/rfc822":
            payload = part.get_payload()
            inner = payload[0] if isinstance(payload, list) and payload else None
            if isinstance(inner, Message):
                found += MESSAGE_ID.findall(header_text(inner, "Message-ID"))
        elif content_type in RETURNED_HEADERS:
            headers = HeaderParser(policy=compat32).parsestr(_text_of(part))
            found += MESSAGE_ID.findall(header_text(headers, "Message-ID"))
    if not found:  # no returned part: a copy quoted in the text (Exim, older Exchange)
        found += QUOTED_MESSAGE_ID.findall(body_text(message))
    return tuple(dict.fromkeys(found))


def _text_of(part: Message) -> str:
    payload = part.get_payload(decode=True)
    if isinstance(payload, bytes):
        return payload.decode("utf-8", "replace")
    payload = part.get_payload()
    return payload if isinstance(payload, str) else ""
