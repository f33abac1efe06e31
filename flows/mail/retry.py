"""What a failed send means for its message: bounced, failed, in doubt, or tried again later.

- Before the end of DATA was transmitted, a dropped connection, a timeout, a 4xx or an SMTP
  session that would not open is transient: back to `planned` with an exponential backoff
  (`next_attempt_at`) until MAX_ATTEMPTS.
- After it, a lost reply is `DeliveryInDoubt`: the message goes `unknown` (RFC 5321 §6.1: the
  server may have accepted it) and waits for an operator, never resent by itself.
- A 5xx about the recipient or the mailbox is permanent: `bounced` (the caller then blocks
  the address and queues the case).
- A 5xx that is our fault is `failed` with the server's words, and no address is blamed: one
  to our sender (`MAIL FROM`: `sender_refused`), and one about the form of what we sent
  (`refused_as_malformed`): a command or syntax error (500-504), an enhanced status of class
  5.5 (protocol) or 5.6 (content) or 5.3.4 (too big), or words like "line too long",
  "syntax" or "malformed" (RFC 3463).
- A message that cannot go out as it is (`UndeliverableMessage`) fails with its reason.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable
from datetime import datetime, timedelta

import aiosmtplib

from collectflow.flows.config import Settings
from collectflow.flows.errors import DeliveryError, DeliveryInDoubt, UndeliverableMessage
from collectflow.flows.mail.claims import Result
from collectflow.flows.mail.outbox import BOUNCED, FAILED, IN_DOUBT, PLANNED

log = logging.getLogger(__name__)

MAX_ATTEMPTS = 5
SEND_FAILURES = (aiosmtplib.SMTPException, DeliveryError, OSError, TimeoutError)
OUR_COMMAND_ERRORS = range(500, 505)  # syntax error, bad parameters, not implemented, sequence
OUR_ENHANCED = re.compile(r"^5\.(?:5\.\d+|6\.\d+|3\.4)\b")
OUR_WORDS = re.compile(r"too long|syntax|malformed", re.IGNORECASE)


def failure(
    message_id: int,
    exc: BaseException,
    attempts: int,
    settings: Settings,
    clock: Callable[[], datetime],
) -> Result:
    """What to write back for a send that raised one of SEND_FAILURES on its `attempts`th try
    (see the module's docstring); a retry's time is counted from `clock()`."""
    if isinstance(exc, DeliveryInDoubt):
        log.warning("message %s in doubt: %s", message_id, exc)
        return Result(message_id, IN_DOUBT, f"in_doubt: {exc}", str(exc))
    if isinstance(exc, UndeliverableMessage):
        return Result(message_id, FAILED, exc.reason, str(exc))
    if isinstance(exc, aiosmtplib.SMTPRecipientsRefused) and exc.recipients:
        exc = exc.recipients[0]
    if isinstance(exc, aiosmtplib.SMTPResponseException) and 500 <= exc.code < 600:
        reason = f"smtp {exc.code} {exc.message}"
        if isinstance(exc, aiosmtplib.SMTPSenderRefused):  # our From, not their address
            return Result(message_id, FAILED, "sender_refused: " + reason, reason)
        if ours(exc.code, exc.message):
            log.warning("message %s refused as malformed: %s", message_id, reason)
            return Result(message_id, FAILED, "refused_as_malformed: " + reason, reason)
        log.warning("message %s bounced: %s", message_id, reason)
        return Result(message_id, BOUNCED, reason, reason)
    error = f"{type(exc).__name__}: {exc}"
    log.warning("message %s not delivered (attempt %s): %s", message_id, attempts, error)
    if attempts >= MAX_ATTEMPTS:
        return Result(message_id, FAILED, "attempts_exhausted", error)
    wait = min(
        settings.delivery_retry_seconds * 2 ** (attempts - 1),
        settings.delivery_retry_cap_seconds,
    )
    retry_at = clock() + timedelta(seconds=wait)
    return Result(message_id, PLANNED, "retrying", error, next_attempt_at=retry_at)


def ours(code: int, message: str) -> bool:
    """Whether a 5xx reply blames the form of what we sent rather than the recipient: a
    command error, an enhanced status about protocol or content, or words saying so. A
    "bad address syntax" counts as ours too: an address we checked and then failed to
    carry (an IDN, a quoted local part) must not be blocked for good; the message fails
    with the reason and an operator looks."""
    text = message.strip()
    return code in OUR_COMMAND_ERRORS or bool(OUR_ENHANCED.match(text) or OUR_WORDS.search(text))
