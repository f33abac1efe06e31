"""The Prefect flows of the daily run: one date, or each date of a range in order."""

from __future__ import annotations

from datetime import date, timedelta
from typing import Any

from prefect import flow, task
from prefect.artifacts import create_table_artifact
from prefect.cache_policies import NO_CACHE
from pydantic_core import to_jsonable_python

from collectflow.flows.alerts import OperatorAlerts
from collectflow.flows.cases import CALL_LIST_COLUMNS, QUEUE_ARTIFACT_COLUMNS, operator_queue
from collectflow.flows.config import get_settings
from collectflow.flows.errors import BadUsage
from collectflow.flows.pipeline import RunContext, business_today, open_run, run_day
from collectflow.flows.runlock import run_lock
from collectflow.flows.steps import DaySummary


def as_task(step: Any, *args: Any) -> Any:
    """Run a step as a Prefect task named after it (one task per step, never per customer)."""
    name = step.__name__.removesuffix("_step").replace("_", "-")
    return task(step, name=name, cache_policy=NO_CACHE)(*args)


@task(name="run-day", cache_policy=NO_CACHE)
def run_day_task(ctx: RunContext, as_of: date, skip_delivery: bool) -> DaySummary:
    """A whole business day as one task: used when catching up over many days."""
    return run_day(ctx, as_of, skip_delivery=skip_delivery)


@flow(name="daily-collections")
def daily_collections(
    as_of: date | None = None, dry_run: bool = False, skip_delivery: bool = False
) -> dict[str, Any]:
    """Assess, plan, escalate, render, deliver and measure for one business date.

    `as_of` defaults to today in the business timezone. A dry run decides and renders but
    stores and sends nothing. With `skip_delivery`, sending is left to the delivery flow.
    """
    settings = get_settings()
    day = as_of or business_today(settings)
    with (
        run_lock(settings, f"run for {day}"),
        open_run(settings, dry_run, OperatorAlerts(settings)) as ctx,
    ):
        summary = run_day(ctx, day, skip_delivery=skip_delivery, call=as_task)
        publish_queue(ctx, day)
    publish_summary([summary])
    return summary.to_dict()


@flow(name="collections-range")
def collections_range(
    start: date, end: date, dry_run: bool = False, skip_delivery: bool = False
) -> list[dict[str, Any]]:
    """Run each business date from `start` to `end` in order, in one process.

    For catching up after downtime or replaying a period: each day sees what the days before
    it did, exactly as if the runs had happened on time.
    """
    if end < start:
        raise BadUsage(f"--to {end} is before --from {start}")
    settings = get_settings()
    days = [start + timedelta(days=n) for n in range((end - start).days + 1)]
    with (
        run_lock(settings, f"run from {start} to {end}"),
        open_run(settings, dry_run, OperatorAlerts(settings)) as ctx,
    ):
        summaries = [run_day_task(ctx, day, skip_delivery) for day in days]
        publish_queue(ctx, end)
    publish_summary(summaries)
    return [summary.to_dict() for summary in summaries]


def publish_queue(ctx: RunContext, as_of: date) -> None:
    """Publish the operator queue, the most at stake first, as a table artifact, and the day's
    call list (its first `risk.call_list` cases): case, reason, money at stake, claim (no
    names: artifacts are not for personal data)."""
    with ctx.connection() as conn:
        items = operator_queue(conn, as_of, ctx.policy.risk)
    create_table_artifact(
        key="operator-queue",
        table=to_jsonable_python(
            [{column: item[column] for column in QUEUE_ARTIFACT_COLUMNS} for item in items]
        ),
        description=f"Operator queue on {as_of}: {len(items)} item(s) needing a person, "
        "the most at stake first (expected loss = overdue x risk x age factor)",
    )
    calls = [item for item in items if item["case_id"] is not None][: ctx.policy.risk.call_list]
    create_table_artifact(
        key="call-list",
        table=to_jsonable_python(
            [{column: item[column] for column in CALL_LIST_COLUMNS} for item in calls]
        ),
        description=f"Call list on {as_of}: the {len(calls)} case(s) to phone first, by "
        "expected loss",
    )


def publish_summary(summaries: list[DaySummary]) -> None:
    """Publish the run's counts as a Prefect table artifact (counts only, no personal data)."""
    rows: list[dict[str, Any]] = []
    for summary in summaries:
        day = summary.as_of.isoformat()
        rows += [
            {"date": day, "what": f"segment {k}", "count": v} for k, v in summary.segments.items()
        ]
        for stage, statuses in summary.messages.items():
            rows += [{"date": day, "what": f"{stage} {s}", "count": n} for s, n in statuses.items()]
        rows += [
            {"date": day, "what": f"suppressed: {k}", "count": v}
            for k, v in summary.suppressed.items()
        ]
        rows += [
            {"date": day, "what": "cases opened", "count": summary.cases_opened},
            {"date": day, "what": "cases resolved", "count": summary.cases_resolved},
            {"date": day, "what": "escalated", "count": summary.escalated},
            {"date": day, "what": "sent", "count": summary.sent},
        ]
    dry = " (dry run)" if summaries and summaries[0].dry_run else ""
    create_table_artifact(
        key="collections-run-summary",
        table=rows,
        description=f"Collections run {summaries[0].as_of} to {summaries[-1].as_of}{dry}"
        if summaries
        else "Collections run: no days",
    )
