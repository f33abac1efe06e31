"""How an email leaves Collectflow: the `Transport` every sender talks to, and which one to use.

Each way out is its own module, as in httpx's `_transports/`: `mail.smtp` (a pool of SMTP
connections) and `mail.maildir` (a folder any mail client can open). A transport either
accepts an email or raises; what a failure means for the message is `mail.retry`'s call.
"""

from __future__ import annotations

from typing import Protocol

from collectflow.flows.config import Settings
from collectflow.flows.mail.compose import Email
from collectflow.flows.mail.maildir import MaildirTransport
from collectflow.flows.mail.smtp import SmtpTransport


class Transport(Protocol):
    """Hands one email to the mail system; raises when it was not accepted."""

    async def send(self, email: Email) -> None: ...

    async def close(self) -> None: ...


def transport_for(settings: Settings) -> Transport:
    """SMTP when a host is configured, else the Maildir outbox."""
    if settings.smtp_host:
        return SmtpTransport(settings)
    return MaildirTransport(settings.outbox)
