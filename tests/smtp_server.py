"""A real SMTP server for tests: aiosmtpd on 127.0.0.1, recording what it accepts.

    with SmtpServer() as server:
        server.answer("451 4.3.0 Try again later", times=1)  # refuse the next message
        ...  # point COLLECTFLOW_SMTP_HOST/PORT at server.env(), send
        [email] = server.emails

It can also be told to refuse the next messages with a given reply, or to drop the
connection instead of answering, to exercise transient (4xx, disconnect) and permanent (5xx)
failures end to end. `ScriptedSmtpServer` is a raw one that drops the connection in a chosen
phase of the transaction (RCPT, the DATA command, the middle of the content, after its end).
"""

from __future__ import annotations

import asyncio
import contextlib
import email
import email.policy
import socket
import ssl
import subprocess
import threading
import time
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
        self.rcpt_stalls: deque[Stall] = deque()

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

    async def handle_RCPT(
        self, server: Any, session: Any, envelope: Any, address: str, rcpt_options: list[str]
    ) -> str:
        with self.lock:
            stall = self.rcpt_stalls.popleft() if self.rcpt_stalls else None
        if stall is not None:
            await asyncio.sleep(stall.seconds)
            return "451 4.4.2 stalled"
        envelope.rcpt_tos.append(address)
        envelope.rcpt_options.extend(rcpt_options)
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
        smtputf8: bool = False,
    ) -> None:
        """`tls`: implicit TLS with this context; `starttls`: offer and require STARTTLS;
        `login`: require AUTH with this (username, password); `smtputf8`: offer SMTPUTF8."""
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
            enable_SMTPUTF8=smtputf8,
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
        """Close the connection instead of answering the next `times` messages: after their
        end of DATA, so whether they were accepted is unknown to the client."""
        with self.handler.lock:
            self.handler.faults.extend([None] * times)

    def stall(self, seconds: float, times: int = 1) -> None:
        """Say nothing for `seconds` after the next `times` messages' data."""
        with self.handler.lock:
            self.handler.faults.extend([Stall(seconds)] * times)

    def stall_recipient(self, seconds: float) -> None:
        """Say nothing for `seconds` after the next RCPT: a timeout before any data."""
        with self.handler.lock:
            self.handler.rcpt_stalls.append(Stall(seconds))

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


DROP_PHASES = ("rcpt", "data_command", "mid_data", "after_end_of_data")


class ScriptedSmtpServer:
    """A raw SMTP server on 127.0.0.1 that drops the first transaction's connection in one
    phase, then accepts every message; it stops by itself after `seconds`.

    `drop_at`: "rcpt" (no reply to RCPT), "data_command" (no 354 to DATA), "mid_data" (reads
    64 KiB of the content, then closes: a client sending more has not sent the end of DATA;
    the receive buffer is kept small so the client cannot have), "after_end_of_data" (reads
    the whole message and its final dot, keeps it, and closes without the 250: the lost-reply
    case of RFC 5321 §6.1). `received` holds every message whose end of DATA arrived.
    """

    def __init__(self, drop_at: str, seconds: float = 30.0) -> None:
        assert drop_at in DROP_PHASES, drop_at
        self.drop_at = drop_at
        self.received: list[bytes] = []
        self.host, self._dropped = HOST, False
        self._listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
        self._listener.bind((HOST, 0))
        self._listener.listen()
        self._listener.settimeout(0.1)
        self.port = self._listener.getsockname()[1]
        self._until = time.monotonic() + seconds
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)

    def __enter__(self) -> ScriptedSmtpServer:
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        self._thread.join()
        self._listener.close()

    def env(self) -> dict[str, str]:
        return {"COLLECTFLOW_SMTP_HOST": self.host, "COLLECTFLOW_SMTP_PORT": str(self.port)}

    def _serve(self) -> None:
        while not self._stop.is_set() and time.monotonic() < self._until:
            try:
                conn, _ = self._listener.accept()
            except TimeoutError:
                continue
            with conn, contextlib.suppress(OSError):  # OSError: the client went away
                conn.settimeout(5)
                self._session(conn, conn.makefile("rb"))

    def _drop_here(self, phase: str) -> bool:
        if self._dropped or self.drop_at != phase:
            return False
        self._dropped = True
        return True

    def _session(self, conn: socket.socket, reader: Any) -> None:
        conn.sendall(b"220 localhost scripted\r\n")
        while line := reader.readline():
            verb = line[:4].upper()
            if verb == b"EHLO":
                conn.sendall(b"250-localhost\r\n250-8BITMIME\r\n250 SIZE 100000000\r\n")
            elif verb == b"RCPT" and self._drop_here("rcpt"):
                return
            elif verb == b"DATA":
                if self._drop_here("data_command"):
                    return
                conn.sendall(b"354 end with <CRLF>.<CRLF>\r\n")
                if self._drop_here("mid_data"):
                    reader.read(64 * 1024)
                    return
                lines = []
                while (data := reader.readline()) not in (b".\r\n", b""):
                    lines.append(data)
                if not data:
                    return
                self.received.append(b"".join(lines))
                if self._drop_here("after_end_of_data"):
                    return
                conn.sendall(b"250 2.0.0 queued\r\n")
            elif verb == b"QUIT":
                conn.sendall(b"221 bye\r\n")
                return
            else:  # HELO, MAIL, RCPT, RSET, NOOP
                conn.sendall(b"250 OK\r\n")


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
