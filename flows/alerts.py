"""Operator alerts from the Prefect flows: a markdown artifact, and an email when asked.

The steps that need a person's attention (outage detection) are given a notifier rather than
reaching for Prefect or a mail transport themselves; this is the one the flows give. The
email goes through the configured transport (SMTP, or the Maildir outbox), not the outbox
table: an alert belongs to no case.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from email.message import EmailMessage
from email.utils import format_datetime, make_msgid

from prefect.artifacts import create_markdown_artifact

from collectflow.flows.config import Settings
from collectflow.flows.mail import Email, one_line, sender_domain, transport_for


class OperatorAlerts:
    """A `Notifier` (steps/outage.py) publishing to the Prefect UI and mailing operators."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings

    def alert(self, key: str, title: str, markdown: str, to: str | None) -> None:
        """Publish `markdown` as the artifact `key`; mail it to `to` when set."""
        create_markdown_artifact(
            key=key, markdown=markdown, description=title[:1].upper() + title[1:]
        )
        if to:
            asyncio.run(self._send(alert_email(self.settings, to, title, markdown)))

    async def _send(self, email: EmailMessage) -> None:
        transport = transport_for(self.settings)
        try:
            await transport.send(Email.of(email))
        finally:
            await transport.close()


def alert_email(settings: Settings, to: str, title: str, markdown: str) -> EmailMessage:
    """The alert as an email. Titles may carry names from the ledger (gateways), so the
    subject takes them as one safe line."""
    email = EmailMessage()
    email["From"] = settings.smtp_from
    email["To"] = to
    email["Subject"] = f"Collectflow: {one_line(title)}"
    email["Date"] = format_datetime(datetime.now(UTC))
    email["Message-ID"] = make_msgid("alert", sender_domain(settings))
    email.set_content(markdown, charset="utf-8")
    return email
