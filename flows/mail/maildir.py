"""The Maildir transport: mail for a machine without an SMTP server, or for a look before sending.

Used when `settings.smtp_host` is not set; `settings.outbox` is then a Maildir that any mail
client can open.
"""

from __future__ import annotations

import mailbox
from pathlib import Path

from collectflow.flows.mail.compose import Email


class MaildirTransport:
    """Writes each email into a Maildir's `new/` folder, readable by any mail client."""

    def __init__(self, path: Path):
        self._maildir = mailbox.Maildir(path, create=True)

    async def send(self, email: Email) -> None:
        self._maildir.add(email.data)

    async def close(self) -> None:
        self._maildir.close()
