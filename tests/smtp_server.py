"""A real SMTP server for tests: aiosmtpd on 127.0.0.1, recording what it accepts.

    with SmtpServer() as server:
        server.answer("451 4.3.0 Try again later", times=1)  # refuse the next message
        ...  # point COLLECTFLOW_SMTP_HOST/PORT at server.env(), send
        [email] = server.emails

It can also be told to refuse the next messages with a given reply, or to drop the
connection instead of answering, to exercise transient (4xx, disconnect) and permanent (5xx)
failures end to end.
"""

from __future__ import annotations

import asyncio
import email
import email.policy
import socket
import ssl
import subprocess
import threading
from collections import deque
from dataclasses import dataclass
from email.message import EmailMessage
from pathlib import Path
from types import TracebackType
from typing import Any

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword

HOST = "127.0.0.1"


@dataclass(frozen=True)
class Envelope:
    """One accepted message: envelope sender and recipients, and the raw bytes."""

    mail_from: str
    rcpt_tos: list[str]
    content: bytes

    def parse(self) -> EmailMessage:
        """The message as a mail client would read it."""
        parsed = email.message_from_bytes(self.content, policy=email.policy.default)
        assert isinstance(parsed, EmailMessage)
        return parsed


@dataclass(frozen=True)
class Closing:
    """A fault: answer `reply` (a 421) and close the session, as a real server does."""

    reply: str


@dataclass(frozen=True)
class Stall:
    """A fault: say nothing for `seconds`, then refuse (the client should have given up)."""

    seconds: float


class RecordingHandler:
    """aiosmtpd handler: stores accepted envelopes, or plays the queued faults first.

    A queued fault is a reply to give instead of accepting, None to close the connection
    without a word, as a crashing server or a broken network would, or a Stall. `latency`
    makes every accepted message take that long, like a slow real server. `most_at_once`
    is the largest number of messages it was receiving at the same time; `greetings`, how
    many EHLO greetings it answered (one a connection; two with STARTTLS).
    """

    def __init__(self) -> None:
        self.envelopes: list[Envelope] = []
        self.faults: deque[str | Stall | Closing | None] = deque()
        self.latency = 0.0
        self.lock = threading.Lock()
        self.at_once = 0
        self.most_at_once = 0
        self.greetings = 0

    async def handle_EHLO(
        self, server: Any, session: Any, envelope: Any, hostname: str, responses: list[str]
    ) -> list[str]:
        with self.lock:
            self.greetings += 1
        session.host_name = hostname
        return responses

    async def handle_MAIL(
        self, server: Any, session: Any, envelope: Any, address: str, mail_options: list[str]
    ) -> str:
        if getattr(session, "closing", False):  # after a 421 the session is over
            server.transport.close()
            return "421 4.3.0 closed"
        envelope.mail_from = address
        envelope.mail_options.extend(mail_options)
        return "250 OK"

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        with self.lock:
            fault = self.faults.popleft() if self.faults else "accept"
        if isinstance(fault, Stall):
            await asyncio.sleep(fault.seconds)
            return "451 4.4.2 stalled"
        if isinstance(fault, Closing):
            session.closing = True
            return fault.reply
        if fault is None:
            server.transport.close()  # what aiosmtpd writes next is discarded
            return "451 4.3.0 never seen by the client"
        if fault != "accept":
            return fault
        with self.lock:
            self.at_once += 1
            self.most_at_once = max(self.most_at_once, self.at_once)
        if self.latency:
            await asyncio.sleep(self.latency)
        with self.lock:
            self.at_once -= 1
            self.envelopes.append(
                Envelope(envelope.mail_from, list(envelope.rcpt_tos), envelope.original_content)
            )
        return "250 2.0.0 Message accepted for delivery"


class SmtpServer:
    """An aiosmtpd server on a free port of 127.0.0.1, for the duration of a `with` block."""

    def __init__(
        self,
        tls: ssl.SSLContext | None = None,
        starttls: ssl.SSLContext | None = None,
        login: tuple[str, str] | None = None,
    ) -> None:
        """`tls`: implicit TLS with this context; `starttls`: offer and require STARTTLS;
        `login`: require AUTH with this (username, password)."""
        self.handler = RecordingHandler()
        self.host = HOST
        self.port = free_port()
        options: dict[str, Any] = {}
        if starttls is not None:
            options |= {"tls_context": starttls, "require_starttls": True}
        if login is not None:
            options |= {
                "authenticator": _Authenticator(*login),
                "auth_required": True,
                "auth_require_tls": starttls is not None,  # implicit TLS: aiosmtpd cannot tell
            }
        self._controller = Controller(
            self.handler,
            hostname=self.host,
            port=self.port,
            server_hostname="localhost",
            ssl_context=tls,
            **options,
        )

    def __enter__(self) -> SmtpServer:
        self._controller.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self._controller.stop()

    def env(self) -> dict[str, str]:
        """The COLLECTFLOW_ settings that send mail to this server."""
        return {"COLLECTFLOW_SMTP_HOST": self.host, "COLLECTFLOW_SMTP_PORT": str(self.port)}

    def answer(self, reply: str, times: int = 1) -> None:
        """Answer the next `times` messages with `reply` (e.g. "550 5.1.1 No such user")."""
        with self.handler.lock:
            self.handler.faults.extend([reply] * times)

    def answer_and_close(self, reply: str) -> None:
        """Answer the next message with `reply` (a 421), then end that session."""
        with self.handler.lock:
            self.handler.faults.append(Closing(reply))

    def drop_connection(self, times: int = 1) -> None:
        """Close the connection instead of answering the next `times` messages."""
        with self.handler.lock:
            self.handler.faults.extend([None] * times)

    def stall(self, seconds: float, times: int = 1) -> None:
        """Say nothing for `seconds` after the next `times` messages' data."""
        with self.handler.lock:
            self.handler.faults.extend([Stall(seconds)] * times)

    def slow_down(self, seconds: float) -> None:
        """Take `seconds` to accept each message from now on."""
        self.handler.latency = seconds

    @property
    def envelopes(self) -> list[Envelope]:
        """Every message accepted so far, in order of arrival."""
        with self.handler.lock:
            return list(self.handler.envelopes)

    @property
    def emails(self) -> list[EmailMessage]:
        """Every message accepted so far, parsed."""
        return [envelope.parse() for envelope in self.envelopes]


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((HOST, 0))
        return probe.getsockname()[1]


class _Authenticator:
    """Accepts one username and password (AUTH PLAIN or LOGIN)."""

    def __init__(self, username: str, password: str):
        self._expected = (username.encode(), password.encode())

    def __call__(self, server: Any, session: Any, envelope: Any, mechanism: str, auth_data: Any):
        ok = (
            isinstance(auth_data, LoginPassword)
            and (
                auth_data.login,
                auth_data.password,
            )
            == self._expected
        )
        return AuthResult(success=ok, handled=False)  # handled=False: aiosmtpd answers 535


def self_signed_tls(directory: Path) -> tuple[ssl.SSLContext, Path]:
    """A server TLS context for `localhost` with a fresh self-signed certificate, and the
    certificate file a client can trust (COLLECTFLOW_SMTP_CA_FILE)."""
    cert, key = directory / "smtp-cert.pem", directory / "smtp-key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
         "-subj", "/CN=localhost", "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1",
         "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True,
    )  # fmt: skip
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    return context, cert
