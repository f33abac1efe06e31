"""The escalation steps that follow `operator_queue` and `account_manager` (steps/escalate.py):

- `suspension`: a signal to the billing system to suspend the customer's service, recorded and
  sent to the webhook `COLLECTFLOW_SUSPENSION_WEBHOOK_URL`, signed with HMAC-SHA256 over
  `<timestamp>.<body>` with `COLLECTFLOW_SUSPENSION_WEBHOOK_SECRET`, retried with backoff;
- `agency`: hand-off to a collections agency, as a CSV export of the cases (one row per owed
  invoice) in `COLLECTFLOW_EXPORTS`;
- `write_off`: a write-off proposal put in the operator queue; an operator confirms it
  (flows/cases/casework.py `confirm_write_off`).

Each step runs once per case (`escalation_steps` is unique per case and step), for escalated
cases of the ladders that list it, `after_days` after the escalation. Steps with an effect
outside the database happen in two moves: the escalation (inside the run's transaction)
records the step, and `deliver_handoffs`, after that transaction committed, sends the
webhook and writes the file, then marks the step delivered. A webhook that fails stays
pending and is sent by the next run: never lost, and only ever re-sent with the same
idempotency key.
"""

from __future__ import annotations

import csv
import hashlib
import hmac
import json
import logging
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import Connection, Engine, and_, func, literal, select, update

from collectflow.flows.cases.events import record_events
from collectflow.flows.cases.lifecycle import ESCALATED
from collectflow.flows.cases.queue import queue_cases
from collectflow.flows.config import Settings
from collectflow.flows.policy.document import Policy
from collectflow.models import (
    Case,
    Customer,
    EscalationStep,
    Invoice,
    InvoiceBalance,
    days_between,
    insert_ignoring_conflicts,
)

log = logging.getLogger(__name__)

CASES = Case.__table__
CUSTOMERS = Customer.__table__
STEPS = EscalationStep.__table__
BALANCES = InvoiceBalance.__table__
INVOICES = Invoice.__table__

LATER_STEPS = {
    "suspension": "suspension_signalled",
    "agency": "agency_handoff",
    "write_off": "write_off_proposed",
}  # step -> the event it writes in the case's log
AGENCY_COLUMNS = [
    "case_id", "customer_id", "name", "email", "country", "invoice_id", "number", "due_on",
    "currency", "owed", "days_overdue", "escalated_on",
]  # fmt: skip


def run_later_steps(conn: Connection, policy: Policy, as_of: date) -> dict[str, int]:
    """Record each later step due today for the escalated cases of the ladders listing it."""
    done: dict[str, int] = {}
    for step, event in LATER_STEPS.items():
        before = conn.execute(select(func.coalesce(func.max(STEPS.c.id), 0))).scalar_one()
        for name, ladder in policy.ladders.items():
            if step in ladder.escalation.steps:
                record_step(conn, step, name, ladder.escalation.after_days.get(step, 0), as_of)
        new = select(STEPS.c.case_id).where(STEPS.c.id > before, STEPS.c.step == step)
        done[step] = record_events(conn, new, event, as_of)
        if step == "write_off":
            proposed = select(CASES.c.id, CASES.c.customer_id).where(
                CASES.c.id.in_(new.scalar_subquery())
            )
            queue_cases(conn, proposed, "write_off", as_of)
    return done


def record_step(conn: Connection, step: str, ladder: str, after_days: int, as_of: date) -> int:
    """Insert `step` for the ladder's cases escalated at least `after_days` ago (once each)."""
    source = select(CASES.c.id, literal(step), literal(as_of, STEPS.c.done_on.type)).where(
        CASES.c.status == ESCALATED,
        CASES.c.ladder == ladder,
        days_between(as_of, CASES.c.escalated_on) >= after_days,
    )
    statement = insert_ignoring_conflicts(
        conn.dialect.name, STEPS, ["case_id", "step"], ["case_id", "step", "done_on"], source
    )
    return conn.execute(statement).rowcount


@dataclass
class HandoffReport:
    """What left the building: signals sent (and still pending), agency rows and file."""

    signals_sent: int = 0
    signals_pending: int = 0
    agency_cases: int = 0
    agency_file: str | None = None
    errors: list[str] = field(default_factory=list)


def deliver_handoffs(engine: Engine, settings: Settings, as_of: date) -> HandoffReport:
    """Send pending suspension signals and export pending agency hand-offs (after commit)."""
    report = HandoffReport()
    send_suspension_signals(engine, settings, report)
    export_agency_handoffs(engine, settings, as_of, report)
    return report


def _pending(step: str) -> Any:
    return and_(STEPS.c.step == step, STEPS.c.delivered_at.is_(None))


def send_suspension_signals(engine: Engine, settings: Settings, report: HandoffReport) -> None:
    """POST each pending signal; stop at the first that exhausts its retries (endpoint down)."""
    with engine.connect() as conn:
        rows = conn.execute(
            select(STEPS.c.id, STEPS.c.case_id, STEPS.c.done_on, CASES.c.customer_id)
            .join(CASES, CASES.c.id == STEPS.c.case_id)
            .where(_pending("suspension"))
            .order_by(STEPS.c.id)
        ).all()
    missing = not_configured(settings)
    if rows and missing:
        log.warning("%s suspension signal(s) pending: %s", len(rows), missing)
        report.signals_pending = len(rows)
        return
    for index, row in enumerate(rows):
        payload = {
            "type": "collectflow.suspension",
            "id": f"suspension:{row.case_id}",
            "case_id": row.case_id,
            "customer_id": row.customer_id,
            "signalled_on": row.done_on.isoformat(),
        }
        attempts, error = post_signed(settings, payload)
        with engine.begin() as conn:
            conn.execute(
                update(STEPS)
                .where(STEPS.c.id == row.id)
                .values(
                    attempts=STEPS.c.attempts + attempts,
                    last_error=error,
                    delivered_at=None if error else datetime.now(UTC),
                )
            )
        if error:
            report.errors.append(f"suspension signal for case {row.case_id}: {error}")
            report.signals_pending = len(rows) - index
            return
        report.signals_sent += 1


def not_configured(settings: Settings) -> str | None:
    """Why signals cannot be sent, or None: both the URL and the secret are needed, since an
    unsigned suspension request is one the billing system must not trust."""
    if not settings.suspension_webhook_url:
        return "no suspension webhook URL set (COLLECTFLOW_SUSPENSION_WEBHOOK_URL)"
    if settings.suspension_webhook_secret is None:
        return "no webhook secret set (COLLECTFLOW_SUSPENSION_WEBHOOK_SECRET): never sent unsigned"
    return None


def sign(secret: str, timestamp: str, body: bytes) -> str:
    """The signature header value: `sha256=` + HMAC-SHA256 of `<timestamp>.<body>`."""
    digest = hmac.new(secret.encode(), timestamp.encode() + b"." + body, hashlib.sha256)
    return "sha256=" + digest.hexdigest()


def post_signed(settings: Settings, payload: dict[str, Any]) -> tuple[int, str | None]:
    """POST `payload` as signed JSON, retrying with backoff; returns (attempts, last error).

    Timeouts, connection errors, 5xx, 408 and 429 are retried; any other 4xx (e.g. 401 for a
    signature the receiver refuses) would fail the same way again, so it ends the attempts.
    """
    body = json.dumps(payload, sort_keys=True).encode()
    if settings.suspension_webhook_secret is None:
        return 0, "no webhook secret set: never sent unsigned"
    secret = settings.suspension_webhook_secret.get_secret_value()
    error: str | None = None
    for attempt in range(1, settings.webhook_attempts + 1):
        timestamp = str(int(time.time()))
        headers = {
            "Content-Type": "application/json",
            "Idempotency-Key": payload["id"],
            "X-Collectflow-Timestamp": timestamp,
            "X-Collectflow-Signature": sign(secret, timestamp, body),
        }
        request = urllib.request.Request(
            str(settings.suspension_webhook_url), data=body, headers=headers, method="POST"
        )
        try:
            with urllib.request.urlopen(request, timeout=settings.webhook_timeout):
                return attempt, None
        except (urllib.error.URLError, TimeoutError, OSError) as exc:
            error = f"{type(exc).__name__}: {exc}"
            log.warning("suspension webhook attempt %s failed: %s", attempt, error)
            if isinstance(exc, urllib.error.HTTPError) and not retryable(exc.code):
                return attempt, error
        if attempt < settings.webhook_attempts:
            time.sleep(settings.webhook_backoff * 2 ** (attempt - 1))
    return settings.webhook_attempts, error


def retryable(status: int) -> bool:
    """Whether an HTTP error status may succeed if the same request is sent again."""
    return status >= 500 or status in (408, 429)


def export_agency_handoffs(
    engine: Engine, settings: Settings, as_of: date, report: HandoffReport
) -> None:
    """Write the pending agency hand-offs to one CSV and mark them delivered.

    The file is named after the date and the last step id it holds, so a run repeated after
    a crash between writing and marking rewrites the same file instead of adding another.
    """
    with engine.connect() as conn:
        rows = conn.execute(agency_rows(as_of)).mappings().all()
    if not rows:
        return
    last_id = max(row["step_id"] for row in rows)
    folder = Path(settings.exports)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"agency-handoff-{as_of.isoformat()}-{last_id}.csv"
    partial = path.with_suffix(".csv.partial")
    with partial.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=AGENCY_COLUMNS, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    partial.replace(path)
    step_ids = sorted({row["step_id"] for row in rows})
    with engine.begin() as conn:
        conn.execute(
            update(STEPS)
            .where(STEPS.c.id.in_(step_ids))
            .values(delivered_at=datetime.now(UTC), reference=path.name)
        )
    report.agency_cases = len(step_ids)
    report.agency_file = str(path)


def agency_rows(as_of: date) -> Any:
    """One row per invoice still owed by each case pending hand-off to the agency; a disputed
    invoice is not handed off (a case whose every invoice is disputed waits until one is
    not)."""
    return (
        select(
            STEPS.c.id.label("step_id"),
            CASES.c.id.label("case_id"),
            CASES.c.customer_id,
            CUSTOMERS.c.name,
            CUSTOMERS.c.email,
            CUSTOMERS.c.country,
            BALANCES.c.invoice_id,
            INVOICES.c.number,
            BALANCES.c.due_on,
            BALANCES.c.currency,
            BALANCES.c.owed,
            days_between(as_of, BALANCES.c.due_on).label("days_overdue"),
            CASES.c.escalated_on,
        )
        .select_from(
            STEPS.join(CASES, CASES.c.id == STEPS.c.case_id)
            .join(CUSTOMERS, CUSTOMERS.c.customer_id == CASES.c.customer_id)
            .join(BALANCES, BALANCES.c.customer_id == CASES.c.customer_id)
            .join(INVOICES, INVOICES.c.invoice_id == BALANCES.c.invoice_id)
        )
        .where(_pending("agency"), BALANCES.c.remindable)
        .order_by(CASES.c.id, BALANCES.c.due_on, BALANCES.c.invoice_id)
    )
