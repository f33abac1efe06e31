"""The Prefect flow of the hourly delivery: send what is planned and due, report counts."""

from __future__ import annotations

from datetime import date
from typing import Annotated, Any

from prefect import flow, task
from prefect.artifacts import create_table_artifact
from prefect.cache_policies import NO_CACHE
from pydantic import Field

from collectflow.flows.config import get_settings
from collectflow.flows.pipeline import business_today
from collectflow.flows.steps import DeliveryReport, deliver_with_workers


@task(name="deliver", cache_policy=NO_CACHE)
def deliver_task(as_of: date, workers: int) -> DeliveryReport:
    """One task for the whole delivery: Prefect counts runs, the outbox counts messages."""
    settings = get_settings()
    return deliver_with_workers(settings, as_of, workers)


@flow(name="deliver")
def deliver(
    as_of: date | None = None, workers: Annotated[int, Field(ge=1, le=32)] = 1
) -> dict[str, Any]:
    """Send every rendered message that is due now: planned on or before `as_of` (default
    today in the business timezone), inside the customer's sending window, under the cap.

    Messages in doubt (a worker stopped while sending them) are reported, never resent.
    """
    report = deliver_task(as_of or business_today(get_settings()), workers)
    rows = [{"what": "sent", "count": report.sent}, {"what": "bounced", "count": report.bounced}]
    rows += [{"what": "retrying later", "count": report.retrying}]
    rows += [{"what": "in doubt", "count": len(report.in_doubt)}]
    for label, counts in (
        ("suppressed", report.suppressed),
        ("failed", report.failed),
        ("deferred", report.deferred),
    ):
        rows += [{"what": f"{label}: {k}", "count": n} for k, n in sorted(counts.items())]
    create_table_artifact(key="delivery-summary", table=rows, description="Delivery counts")
    return report.to_dict()
