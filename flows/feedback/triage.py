"""What kind of mail arrived: a bounce, an automatic reply, a person's reply, or something
unreadable; decided from the mail alone, before anything is looked up.

In that order: a bounce often carries `Auto-Submitted` too (RFC 3464 reports are automatic),
and must be read as a bounce; an automatic reply is never read for an intent. A mail whose
reading fails in an unforeseen way is `unreadable`: filed with the error and kept, never
lost, and it never stops the run.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime

from collectflow.flows.feedback.autoreplies import AutoReplies
from collectflow.flows.feedback.bounces import Bounce, bounce_of
from collectflow.flows.feedback.inbound import body_text, hashed_key, parse, storable
from collectflow.flows.feedback.quoting import first_lines, own_words

log = logging.getLogger(__name__)

BOUNCE = "bounce"
AUTO_REPLY = "auto_reply"
REPLY = "reply"
UNREADABLE = "unreadable"
KINDS = (BOUNCE, AUTO_REPLY, REPLY, UNREADABLE)
MAX_SUBJECT = 500


@dataclass(frozen=True)
class Sorted:
    """One mail, read: its kind and what filing matches and classifies."""

    source: str
    key: str
    kind: str
    sender: str | None = None
    subject: str | None = None
    sent_at: datetime | None = None
    answers: tuple[str, ...] = ()
    bounce: Bounce | None = None
    why: str | None = None  # auto-reply: the header or subject; unreadable: the error
    words: str = ""  # a reply: what the customer wrote, quotes and signature removed
    excerpt: str = ""


def triage(source: str, raw: bytes, automatic: AutoReplies) -> Sorted:
    """Read one mail's bytes (`source` says where it was read); never raises."""
    try:
        return _triage(source, raw, automatic)
    except Exception as exc:  # any failure on hostile input files it unreadable
        log.warning("inbound mail %s unreadable: %s: %s", source, type(exc).__name__, exc)
        why = storable(f"{type(exc).__name__}: {exc}")[:500]
        return Sorted(source, hashed_key(raw), UNREADABLE, why=why)


def _triage(source: str, raw: bytes, automatic: AutoReplies) -> Sorted:
    mail = parse(raw)
    common = {
        "source": source,
        "key": mail.key,
        "sender": mail.sender,
        "subject": mail.subject[:MAX_SUBJECT] or None,
        "sent_at": mail.sent_at,
        "answers": mail.answers,
    }
    bounce = bounce_of(mail.message)
    if bounce is not None:
        return Sorted(kind=BOUNCE, bounce=bounce, **common)
    why = automatic.why(mail.message, mail.subject)
    if why is not None:
        return Sorted(kind=AUTO_REPLY, why=why, **common)
    words = own_words(body_text(mail.message))
    return Sorted(kind=REPLY, words=words, excerpt=first_lines(words), **common)
