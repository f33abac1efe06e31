"""Step 5, deliver: send what is rendered and due, exactly once, and record what happened.

A delivery is a small pipeline in one event loop (`mail.delivery.Delivery`):

    claim (DB, in a thread) ──► queue ──► N senders (pooled SMTP connections) ──► recorder (DB)

Claiming is one transaction (`mail.claims`): take the due messages (PostgreSQL: `FOR UPDATE
SKIP LOCKED`, so workers in other processes take other rows; SQLite: one writer at a time),
re-check each just before sending (still owed, case not paused, customer not opted out,
address not bounced: otherwise `suppressed` with the reason), hold back what the contact
rules defer (quiet hours, the cap), and mark the rest `sending` under this worker's lease.
The recorder writes results every few tenths of a second, so a crash leaves unconfirmed only
what was claimed and not yet recorded. The next delivery moves such messages to `unknown`
(`mail.workers.recheck_expired_leases`): at once when their worker's process is gone, else
when the lease has expired; reported and queued for an operator, never resent.

Transient failures (4xx; a dropped connection or a timeout before the end of DATA was
transmitted) go back to `planned` with an exponential backoff (`next_attempt_at`) until
MAX_ATTEMPTS; the same after the end of DATA leaves the message in doubt (`unknown`). A 5xx
about the recipient is permanent: the message is `bounced`, the address blocked, the case
queued; a 5xx about the form of our message fails it and blocks nothing (`mail.retry`).

Without `settings.smtp_host` mail goes to a Maildir at `settings.outbox` that any mail client
can open; otherwise through aiosmtplib, one reused connection per concurrent sender
(`mail.transports`).
"""

from __future__ import annotations

import asyncio
from datetime import UTC, date, datetime

from sqlalchemy import Engine

from collectflow.flows.config import Settings
from collectflow.flows.mail.delivery import Clock, Delivery, DeliveryReport
from collectflow.flows.mail.workers import in_processes, recheck_expired_leases, worker_name
from collectflow.flows.policy.contact import Contact
from collectflow.flows.policy.document import load_policy
from collectflow.models import make_engine


def deliver_due(
    engine: Engine,
    settings: Settings,
    as_of: date,
    contact: Contact | None = None,
    batch_size: int = 200,
    now: datetime | None = None,
) -> DeliveryReport:
    """Send every rendered message planned on or before `as_of` that is due and still owed.

    Safe to run again and from several workers at once. `contact` defaults to the policy's
    contact rules; `now` (default: the clock) is when the delivery happens.
    """
    contact = contact if contact is not None else load_policy(settings.policy).contact
    clock: Clock = (lambda: now) if now is not None else (lambda: datetime.now(UTC))
    delivery = Delivery(engine, settings, as_of, contact, clock, worker_name())
    delivery.report.in_doubt = recheck_expired_leases(engine, as_of, clock(), delivery.worker)
    asyncio.run(delivery.run(batch_size))
    return delivery.report


def deliver_with_workers(
    settings: Settings, as_of: date, workers: int, batch_size: int = 200
) -> DeliveryReport:
    """Deliver with `workers` processes, each claiming its own batches, and add up their reports.

    On PostgreSQL the workers claim and send in parallel (SKIP LOCKED); on SQLite they take
    turns to claim, one writer at a time, and send in parallel. The processes come from a
    fork server that has imported this module once (`mail.workers.worker_context`).
    """
    if workers <= 1:
        return _worker(settings, as_of, batch_size)
    total = DeliveryReport()
    for report in in_processes(_worker, (settings, as_of, batch_size), workers):
        total.merge(report)
    return total


def _worker(settings: Settings, as_of: date, batch_size: int) -> DeliveryReport:
    """One worker process's delivery, on its own engine (connections are not shared)."""
    engine = make_engine(settings.database_url)
    try:
        return deliver_due(engine, settings, as_of, batch_size=batch_size)
    finally:
        engine.dispose()
