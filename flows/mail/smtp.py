"""The SMTP transport: aiosmtplib, one reused connection per concurrent sender."""

from __future__ import annotations

import ssl

import aiosmtplib

from collectflow.flows.config import Settings
from collectflow.flows.errors import DeliveryError
from collectflow.flows.mail.compose import Email


class SmtpTransport:
    """A pool of SMTP connections, one per concurrent sender, each reused from send to send.

    A connection found closed is reopened before the next email; one that failed mid-send is
    closed, since its state is unknown, and so is one the server answered 421 (closing).
    Failing to open a session (refused, timed out, TLS or login rejected) raises
    DeliveryError: the server's or the settings' fault, not the message's, so it counts as
    transient.
    """

    def __init__(self, settings: Settings):
        self._settings = settings
        self._clients: list[aiosmtplib.SMTP] = []
        self._idle: list[aiosmtplib.SMTP] = []
        self._tls_context = (
            ssl.create_default_context(cafile=str(settings.smtp_ca_file))
            if settings.smtp_ca_file
            else None
        )

    async def send(self, email: Email) -> None:
        client = self._idle.pop() if self._idle else self._new_client()
        try:
            if not client.is_connected:
                await self._connect(client)
            await client.sendmail(email.sender, [email.recipient], email.data)
        except (ConnectionError, TimeoutError):
            client.close()
            raise
        except aiosmtplib.SMTPResponseException as exc:
            if exc.code == 421:  # the server is closing the session (RFC 5321 3.8)
                client.close()
            raise
        finally:
            self._idle.append(client)

    async def close(self) -> None:
        for client in self._clients:
            if client.is_connected:
                try:
                    await client.quit()
                except aiosmtplib.SMTPException:
                    client.close()

    def _new_client(self) -> aiosmtplib.SMTP:
        settings = self._settings
        password = settings.smtp_password.get_secret_value() if settings.smtp_password else None
        client = aiosmtplib.SMTP(
            hostname=settings.smtp_host,
            port=settings.smtp_port,
            username=settings.smtp_username,
            password=password,
            use_tls=settings.smtp_tls,
            start_tls=False if settings.smtp_tls else settings.smtp_starttls,
            tls_context=self._tls_context,
            timeout=settings.smtp_timeout,
        )
        self._clients.append(client)
        return client

    async def _connect(self, client: aiosmtplib.SMTP) -> None:
        try:
            await client.connect()
        except (aiosmtplib.SMTPException, ssl.SSLError) as exc:
            client.close()
            raise DeliveryError(
                f"could not open an SMTP session with {client.hostname}:{client.port}: {exc}; "
                "check COLLECTFLOW_SMTP_HOST, _PORT, _TLS, _STARTTLS, _USERNAME and _PASSWORD"
            ) from exc
