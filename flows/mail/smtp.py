"""The SMTP transport: aiosmtplib, one reused connection per concurrent sender.

Each email is one SMTP transaction run phase by phase (MAIL, RCPT, DATA, the content and its
end, the reply), so that a failure is classed by the phase it happened in (RFC 5321 §6.1):
before the end of DATA has been transmitted, the server cannot have accepted the message and
the failure is transient; after it, a lost reply (dropped connection, timeout) leaves the
delivery unknown: `DeliveryInDoubt`, never retried by itself.
"""

from __future__ import annotations

import asyncio
import re
import ssl
import time

import aiosmtplib

from collectflow.flows.config import Settings
from collectflow.flows.errors import DeliveryError, DeliveryInDoubt, UndeliverableMessage
from collectflow.flows.mail.compose import Email

LINE_ENDS = re.compile(rb"\r\n|\n|\r(?!\n)")
LEADING_DOT = re.compile(rb"(?m)^\.")
START_INPUT = 354


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
            await transact(client, email, self._settings.smtp_timeout)
        except (ConnectionError, TimeoutError, DeliveryInDoubt):
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


async def transact(client: aiosmtplib.SMTP, email: Email, timeout: float) -> None:
    """One mail transaction on an open session, its failures classed by phase.

    A refusal (4xx, 5xx) raises aiosmtplib's exception for its command, after a RSET so the
    session can carry the next email. A dropped connection or a timeout raises it as is
    (transient) until the end of DATA is transmitted, and DeliveryInDoubt after it.
    Raises UndeliverableMessage when the email needs SMTPUTF8 and the server lacks it.
    """
    if client.last_ehlo_response is None:
        await client.ehlo()
    options = []
    if email.smtputf8:
        if not client.supports_extension("smtputf8"):
            raise UndeliverableMessage(
                "smtputf8_unsupported",
                f"{email.recipient!r} has a non-ASCII local part and the server does not "
                "offer SMTPUTF8; ask the customer for an ASCII address",
            )
        options.append("SMTPUTF8")
    content = _dot_stuffed(email.data)
    if client.supports_extension("size"):
        options.insert(0, f"SIZE={len(content)}")
    encoding = "utf-8" if email.smtputf8 else "ascii"
    try:
        await client.mail(email.sender, options=options, encoding=encoding)
        await client.rcpt(email.recipient, encoding=encoding)
        start = await client.execute_command(b"DATA")
        if start.code != START_INPUT:
            raise aiosmtplib.SMTPDataError(start.code, start.message)
    except aiosmtplib.SMTPResponseException:
        await _reset(client)
        raise
    await _transmit(client, content + b".\r\n", timeout)
    try:  # the end of DATA is out: from here on, a lost reply leaves delivery unknown
        reply = await client.protocol.read_response(timeout=timeout)  # type: ignore[union-attr]
    except (ConnectionError, TimeoutError, AttributeError) as exc:
        raise DeliveryInDoubt(
            f"the connection failed after the end of DATA, before the server's reply "
            f"({type(exc).__name__}: {exc}); the server may have accepted the message"
        ) from exc
    if reply.code != 250:
        await _reset(client)
        raise aiosmtplib.SMTPDataError(reply.code, reply.message)


async def _transmit(client: aiosmtplib.SMTP, payload: bytes, timeout: float) -> None:
    """Write the content and its end, and wait until the socket has taken every byte: until
    then the server cannot have the end of DATA, and a failure is transient."""
    protocol = client.protocol
    if protocol is None:
        raise aiosmtplib.SMTPServerDisconnected("connection lost before DATA's content")
    protocol.write(payload)
    deadline = time.monotonic() + timeout
    while (transport := protocol.transport) is None or transport.get_write_buffer_size():
        if transport is None or transport.is_closing():
            client.close()
            raise aiosmtplib.SMTPServerDisconnected(
                "connection lost while transmitting DATA, before its end"
            )
        if time.monotonic() > deadline:
            raise aiosmtplib.SMTPTimeoutError("timed out transmitting DATA, before its end")
        await asyncio.sleep(0.001)


async def _reset(client: aiosmtplib.SMTP) -> None:
    """RSET after a refusal, so the session can carry the next email; a failure is ignored
    (the session is then closed, and the next email opens a new one)."""
    try:
        await client.rset()
    except (ConnectionError, TimeoutError, aiosmtplib.SMTPException):
        client.close()


def _dot_stuffed(data: bytes) -> bytes:
    """The content as DATA carries it: CRLF line ends, a leading dot doubled, a final CRLF."""
    content = LEADING_DOT.sub(b"..", LINE_ENDS.sub(b"\r\n", data))
    return content if content.endswith(b"\r\n") else content + b"\r\n"
