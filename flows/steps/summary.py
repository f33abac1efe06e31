"""What a run did, counted: the summary printed by the CLI and published as an artifact."""

from __future__ import annotations

from collections import Counter
from dataclasses import asdict, dataclass, field
from datetime import date
from typing import Any

from sqlalchemy import Connection, func, select

from collectflow.models import Message

MESSAGES = Message.__table__


@dataclass
class DaySummary:
    """One business day's run: segments, cases, messages per stage, suppressions, escalations."""

    as_of: date
    dry_run: bool
    segments: dict[str, int]
    segment_moves: int
    cases_opened: int
    cases_resolved: int
    pre_due_skipped: int
    messages: dict[str, dict[str, int]]  # stage -> status -> count, for messages new this run
    suppressed: dict[str, int]  # reason -> count, for messages new this run
    rendered: int
    delivered: bool
    sent: int
    failed: dict[str, int]
    suppressed_at_send: dict[str, int]  # what delivery's last-moment re-check held back
    escalated: int
    account_manager_emails: int
    disputes_queued: int
    outcomes: dict[str, int]
    already_planned_today: int
    notes: list[str] = field(default_factory=list)

    skipped: bool = False
    causes: dict[str, int] = field(default_factory=dict)  # reminders new this run, by cause
    in_doubt: list[int] = field(default_factory=list)  # messages delivery left `unknown`

    @property
    def nothing_new(self) -> bool:
        return not self.messages and self.sent == 0 and self.escalated == 0 and not self.in_doubt

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["as_of"] = self.as_of.isoformat()
        data["nothing_new"] = self.nothing_new
        return data


def summarize_day(
    conn: Connection,
    as_of: date,
    dry_run: bool,
    first_new_id: int,
    assessed: Any,
    planned: Any,
    escalated: Any,
    rendered: int,
    delivered: Any,
    outcomes: Any,
) -> DaySummary:
    """Combine the step reports with a count of this run's messages by stage and status."""
    rows = conn.execute(
        select(MESSAGES.c.stage, MESSAGES.c.status, MESSAGES.c.status_reason, func.count())
        .where(MESSAGES.c.id >= first_new_id)
        .group_by(MESSAGES.c.stage, MESSAGES.c.status, MESSAGES.c.status_reason)
    ).all()
    messages: dict[str, dict[str, int]] = {}
    suppressed: Counter[str] = Counter()
    for stage, status, reason, count in rows:
        messages.setdefault(stage, {})
        messages[stage][status] = messages[stage].get(status, 0) + count
        if status == "suppressed":
            suppressed[reason or "unspecified"] += count
    earlier = conn.execute(
        select(func.count()).where(MESSAGES.c.planned_on == as_of, MESSAGES.c.id < first_new_id)
    ).scalar_one()
    summary = DaySummary(
        as_of=as_of,
        dry_run=dry_run,
        segments=assessed.segments,
        segment_moves=assessed.moved,
        cases_opened=planned.opened,
        cases_resolved=planned.resolved,
        pre_due_skipped=planned.skipped_pre_due,
        messages=messages,
        suppressed=dict(suppressed),
        rendered=rendered,
        delivered=delivered is not None,
        sent=delivered.sent if delivered else 0,
        failed=dict(delivered.failed) if delivered else {},
        suppressed_at_send=dict(delivered.suppressed) if delivered else {},
        escalated=escalated.escalated,
        account_manager_emails=escalated.account_manager_emails,
        disputes_queued=escalated.disputes_queued,
        outcomes=outcomes.outcomes,
        already_planned_today=earlier,
        causes=causes_of_new_reminders(conn, first_new_id),
        in_doubt=list(delivered.in_doubt) if delivered else [],
    )
    if summary.in_doubt:
        summary.notes.append(
            f"{len(summary.in_doubt)} message(s) in doubt, not resent (a stopped worker's, or "
            "a lost server reply after the end of DATA): see `collectflow in-doubt`"
        )
    if summary.nothing_new:
        summary.notes.append(
            f"nothing new for {as_of.isoformat()}: {earlier} message(s) were already planned "
            "for this date by an earlier run, none planned or sent now"
        )
    if dry_run:
        summary.notes.append("dry run: decided and rendered, nothing stored and nothing sent")
    return summary


def skipped_day(as_of: date, latest: date, dry_run: bool) -> DaySummary:
    """The summary of a date skipped because a later date has already run."""
    return DaySummary(
        as_of=as_of,
        dry_run=dry_run,
        segments={},
        segment_moves=0,
        cases_opened=0,
        cases_resolved=0,
        pre_due_skipped=0,
        messages={},
        suppressed={},
        rendered=0,
        delivered=False,
        sent=0,
        failed={},
        suppressed_at_send={},
        escalated=0,
        account_manager_emails=0,
        disputes_queued=0,
        outcomes={},
        already_planned_today=0,
        notes=[
            f"skipped {as_of.isoformat()}: the run already covered {latest.isoformat()}; "
            "history is not replayed over a newer state"
        ],
        skipped=True,
    )


def causes_of_new_reminders(conn: Connection, first_new_id: int) -> dict[str, int]:
    """Reminders planned by this run per diagnosed cause (see flows/steps/diagnose.py)."""
    rows = conn.execute(
        select(MESSAGES.c.cause, func.count())
        .where(MESSAGES.c.id >= first_new_id, MESSAGES.c.kind == "reminder")
        .group_by(MESSAGES.c.cause)
    ).all()
    return {cause or "undiagnosed": count for cause, count in rows}
