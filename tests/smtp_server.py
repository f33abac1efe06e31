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

import email
import email.policy
import socket
import threading
from collections import deque
from dataclasses import dataclass
from email.message import EmailMessage
from types import TracebackType
from typing import Any

from aiosmtpd.controller import Controller

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


class RecordingHandler:
    """aiosmtpd handler: stores accepted envelopes, or plays the queued faults first.

    A queued fault is a reply to give instead of accepting, or None to close the connection
    without a word, as a crashing server or a broken network would.
    """

    def __init__(self) -> None:
        self.envelopes: list[Envelope] = []
        self.faults: deque[str | None] = deque()
        self.lock = threading.Lock()

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        with self.lock:
            if self.faults:
                reply = self.faults.popleft()
                if reply is None:
                    server.transport.close()  # what aiosmtpd writes next is discarded
                    return "451 4.3.0 never seen by the client"
                return reply
            self.envelopes.append(
                Envelope(envelope.mail_from, list(envelope.rcpt_tos), envelope.original_content)
            )
        return "250 2.0.0 Message accepted for delivery"


class SmtpServer:
    """An aiosmtpd server on a free port of 127.0.0.1, for the duration of a `with` block."""

    def __init__(self) -> None:
        self.handler = RecordingHandler()
        self.host = HOST
        self.port = free_port()
        self._controller = Controller(
            self.handler, hostname=self.host, port=self.port, server_hostname="smtp.test"
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

    def drop_connection(self, times: int = 1) -> None:
        """Close the connection instead of answering the next `times` messages."""
        with self.handler.lock:
            self.handler.faults.extend([None] * times)

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
