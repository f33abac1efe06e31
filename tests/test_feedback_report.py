"""The report's "What customers say" section: answers by intent and reason, response rate per
stage, and the customers' stated causes against diagnosis's, in the terminal, JSON and HTML."""

from __future__ import annotations

import json
from datetime import date, timedelta
from pathlib import Path

from sqlalchemy import Engine, func, select
from typer.testing import CliRunner

from collectflow.flows.cli.app import app
from collectflow.flows.config import Settings
from collectflow.flows.feedback.answers import Answer, apply_answer
from collectflow.flows.pipeline import business_today
from collectflow.flows.policy import Policy
from collectflow.models import Message
from tests.ledger import two_overdue_customers

MESSAGES = Message.__table__


def test_the_report_counts_what_customers_said(
    engine: Engine, settings: Settings, policy: Policy, tmp_path: Path
) -> None:
    today = business_today(settings)
    two_overdue_customers(engine, settings, tmp_path / "ledger", today)
    with engine.begin() as conn:
        sent = dict(
            conn.execute(
                select(MESSAGES.c.stage, func.count())
                .where(MESSAGES.c.status == "sent")
                .group_by(MESSAGES.c.stage)
            ).all()
        )
        last = dict(
            conn.execute(
                select(MESSAGES.c.customer_id, func.max(MESSAGES.c.id)).group_by(
                    MESSAGES.c.customer_id
                )
            ).all()
        )
        causes = set(
            conn.execute(select(MESSAGES.c.cause).where(MESSAGES.c.id.in_(last.values()))).scalars()
        )
        stage = conn.execute(select(MESSAGES.c.stage).where(MESSAGES.c.id == last["ANNA"]))
        answered_stage = stage.scalar_one()
        for customer_id, fields in (
            ("ANNA", {"intent": "order_problem", "reason": "not_received"}),
            ("BERT", {"intent": "need_time", "promise_date": today + timedelta(days=10)}),
        ):
            apply_answer(
                conn,
                policy,
                Answer(
                    customer_id=customer_id, source="page", message_id=last[customer_id], **fields
                ),
                today,
            )
    assert causes == {"no_attempt"}  # neither ever tried to pay: diagnosis says no attempt

    html = tmp_path / "report.html"
    result = CliRunner().invoke(app, ["report", "--json", "--html", str(html)])
    assert result.exit_code == 0, result.output
    said = json.loads(result.stdout)["feedback"]
    assert said["responses"] == {"need_time": 1, "order_problem": 1}
    assert said["reasons"] == {"not_received": 1}
    assert said["sources"] == {"page": 2}
    rates = {row["key"]: (row["sent"], row["answered"]) for row in said["by_stage"]}
    assert rates == {
        stage: (count, 2 if stage == answered_stage else 0) for stage, count in sent.items()
    }
    assert said["agreement"] == [
        {"inferred": "no_attempt", "stated": "need_time", "answers": 1, "agrees": True},
        {"inferred": "no_attempt", "stated": "order_problem", "answers": 1, "agrees": False},
    ]
    assert said["agreement_share"] == 0.5
    assert said["median_hours_to_answer"] is not None
    page = html.read_text(encoding="utf-8")
    assert "What customers say" in page and "not_received" in page

    terminal = CliRunner().invoke(app, ["report"], env={"COLUMNS": "100"})
    assert "What customers say: 2 answer(s)" in terminal.stdout
    assert "order: not_received" in terminal.stdout


def test_without_answers_the_section_says_so(engine: Engine, settings: Settings) -> None:
    result = CliRunner().invoke(app, ["report", "--json", "--as-of", date.today().isoformat()])
    assert result.exit_code == 0, result.output
    said = json.loads(result.stdout)["feedback"]
    assert said["answers"] == 0 and said["responses"] == {} and said["agreement_share"] is None
