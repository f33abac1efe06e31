"""The `evaluate` flow: the effectiveness report, published as Prefect artifacts.

Scheduled weekly (prefect.yaml) and runnable by hand with dates. Artifacts carry figures only,
no personal data; `html_path` also writes the self-contained HTML report to a file.
"""

from __future__ import annotations

from datetime import date
from pathlib import Path
from typing import Any

from prefect import flow
from prefect.artifacts import create_markdown_artifact, create_table_artifact

from collectflow.flows.config import get_settings
from collectflow.flows.measure import Report, effectiveness_report, render_html, report_markdown
from collectflow.flows.pipeline import business_today
from collectflow.flows.policy import load_policy
from collectflow.models import init_db, make_engine


@flow(name="evaluate")
def evaluate(
    as_of: date | None = None,
    since: date | None = None,
    until: date | None = None,
    html_path: str | None = None,
) -> dict[str, Any]:
    """Measure what the reminders brought in, as of `as_of` (default today), and publish it.

    `since`/`until` choose messages by send date and the portfolio period.
    """
    settings = get_settings()
    engine = make_engine(settings.database_url)
    init_db(engine)
    try:
        with engine.connect() as conn:
            report = effectiveness_report(
                conn, load_policy(settings.policy), as_of or business_today(settings), since, until
            )
    finally:
        engine.dispose()
    if html_path:
        Path(html_path).write_text(render_html(report), encoding="utf-8")
    publish(report)
    return report.to_dict()


def publish(report: Report) -> None:
    """A markdown summary and one table artifact per section."""
    document = report.to_dict()
    create_markdown_artifact(
        key="effectiveness-report",
        markdown=report_markdown(report),
        description=f"Effectiveness as of {report.as_of}",
    )
    for key, rows in (
        ("effectiveness-by-stage", document["stages"]),
        ("effectiveness-experiments", document["experiments"]),
        ("effectiveness-portfolio", document["portfolio"]),
    ):
        create_table_artifact(key=key, table=[flat(row) for row in rows] or [{"rows": 0}])


def flat(row: dict[str, Any]) -> dict[str, Any]:
    """Nested values (per currency, per outcome) as `name.key` columns of a table artifact."""
    cells: dict[str, Any] = {}
    for name, value in row.items():
        if isinstance(value, dict):
            cells.update({f"{name}.{key}": inner for key, inner in value.items()})
        else:
            cells[name] = value
    return cells
