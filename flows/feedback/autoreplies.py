"""Automatic replies (out of office, ticket acknowledgements): recorded, never read for an
intent, since nobody wrote them.

A mail is automatic when it says so in its headers: RFC 3834 `Auto-Submitted` with any value
but `no`, `X-Autoreply` or `X-Autorespond` (set by common vacation responders), `Precedence:
auto_reply`, `bulk` or `junk`; or when its subject carries an out-of-office phrase of the
policy (`replies.out_of_office`, per language: "Out of office", "Automatic reply", "Réponse
automatique", "Abwesenheitsnotiz", ...), for responders that set none of the headers.
"""

from __future__ import annotations

import re
from email.message import Message

from collectflow.flows.feedback.inbound import header_text
from collectflow.flows.policy.replies import Replies, folded

AUTOMATIC_PRECEDENCE = frozenset({"auto_reply", "bulk", "junk"})


class AutoReplies:
    """The out-of-office subjects of the policy, compiled once for a run."""

    def __init__(self, replies: Replies) -> None:
        phrases = {folded(p) for subjects in replies.out_of_office.values() for p in subjects}
        alternatives = "|".join(re.escape(p) for p in sorted(phrases, key=len, reverse=True))
        self._subject = re.compile(rf"(?<!\w)(?:{alternatives})(?!\w)") if phrases else None

    def why(self, message: Message, subject: str) -> str | None:
        """Why `message` is an automatic reply (the header or subject that says so), or None."""
        submitted = header_text(message, "Auto-Submitted").lower()
        if submitted and not submitted.startswith("no"):
            return f"Auto-Submitted: {submitted}"
        for name in ("X-Autoreply", "X-Autorespond"):
            if message.get(name) is not None:
                return name
        precedence = header_text(message, "Precedence").lower()
        if precedence in AUTOMATIC_PRECEDENCE:
            return f"Precedence: {precedence}"
        found = self._subject.search(folded(subject)) if self._subject else None
        return f"subject: {found.group(0)}" if found else None
