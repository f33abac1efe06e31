"""Step 0, prepare: what the day's SQL joins on besides the ledger, brought up to date.

The policy's ladders are flattened into `ladder_stages` (stage offsets, gaps, grace, whether
they count business days, pacing and entry by age), and the business calendar is filled up to
the run's date for every country the customers are in (always, when a stage or an escalation
is paced in business days, which the defaults are). Pauses, plan and escalate join on both;
doing it first, once, keeps each of them a plain query.
"""

from __future__ import annotations

from datetime import date
from typing import Any

from sqlalchemy import Connection, delete, insert

from collectflow.flows.ledger.calendar import fill_calendar
from collectflow.flows.policy.document import Policy
from collectflow.models import LadderStage

STAGES = LadderStage.__table__


def prepare(conn: Connection, policy: Policy, as_of: date) -> None:
    """Ladders from the policy and the business calendar up to `as_of`, as tables."""
    sync_ladders(conn, policy)
    fill_calendar(conn, policy, as_of)


def sync_ladders(conn: Connection, policy: Policy) -> None:
    """Flatten the policy's ladders into `ladder_stages`, the table plan joins on."""
    rows: list[dict[str, Any]] = []
    for name, ladder in policy.ladders.items():
        last = len(ladder.stages) - 1
        rows.extend(
            {
                "ladder": name,
                "stage_index": index,
                "stage": stage.name,
                "offset_days": stage.offset_days,
                "template": stage.template,
                "min_gap_days": ladder.min_gap_days,
                "is_last": index == last,
                "grace_days": ladder.escalation.grace_days,
                "business_days": ladder.business_days,
                "business_gap": stage.business_gap,
                "business_total": sum(
                    earlier.business_gap for earlier in ladder.stages[: index + 1]
                ),
                "entry_days": stage.entry_days,
            }
            for index, stage in enumerate(ladder.stages)
        )
    conn.execute(delete(STAGES))
    conn.execute(insert(STAGES), rows)
