"""What a failed send means for its message: bounced, failed, or tried again after a backoff.

Transient failures (4xx, dropped connection, timeout, an SMTP session that would not open) go
back to `planned` with an exponential backoff (`next_attempt_at`) until MAX_ATTEMPTS; a 5xx
answer to the recipient or the data is permanent: the message is `bounced` (the caller then
blocks the address and queues the case). A 5xx to our sender (`MAIL FROM`) is our
configuration's fault, not the address's: the message is `failed`, `sender_refused`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import datetime, timedelta

import aiosmtplib

from collectflow.flows.config import Settings
from collectflow.flows.errors import DeliveryError
from collectflow.flows.mail.claims import Result
from collectflow.flows.mail.outbox import BOUNCED, FAILED, PLANNED

log = logging.getLogger(__name__)

MAX_ATTEMPTS = 5
SEND_FAILURES = (aiosmtplib.SMTPException, DeliveryError, OSError, TimeoutError)


def failure(
    message_id: int,
    exc: BaseException,
    attempts: int,
    settings: Settings,
    clock: Callable[[], datetime],
) -> Result:
    """What to write back for a send that raised one of SEND_FAILURES on its `attempts`th try:
    bounced on a 5xx to the recipient or the data; else retried with backoff from `clock()`."""
    if isinstance(exc, aiosmtplib.SMTPRecipientsRefused) and exc.recipients:
        exc = exc.recipients[0]
    if isinstance(exc, aiosmtplib.SMTPResponseException) and 500 <= exc.code < 600:
        reason = f"smtp {exc.code} {exc.message}"
        if isinstance(exc, aiosmtplib.SMTPSenderRefused):  # our From, not their address
            return Result(message_id, FAILED, "sender_refused: " + reason, reason)
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
