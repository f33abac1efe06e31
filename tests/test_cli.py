"""The command line as scripts use it: exit codes, --json on stdout, errors on stderr."""

from __future__ import annotations

import json
from datetime import date, timedelta
from pathlib import Path

import pytest
from sqlalchemy import Engine
from typer.testing import CliRunner

from collectflow.flows.cli.app import app
from collectflow.flows.config import Settings
from tests.ledger import Ledger
from tests.outbox import unlogged_moves

DUE = date(2026, 3, 2)


@pytest.fixture
def runner() -> CliRunner:
    return CliRunner()


def ledger_with_one_debtor() -> Ledger:
    ledger = Ledger()
    ledger.customer("C1", locale="fr")
    ledger.history("C1", DUE)
    ledger.invoice("INV-1", "C1", DUE, amount="1234.56")
    return ledger


def test_import_then_run_prints_one_json_document(
    runner: CliRunner, engine: Engine, settings: Settings, tmp_path: Path
) -> None:
    folder = ledger_with_one_debtor().write(tmp_path / "ledger")

    imported = runner.invoke(app, ["import", str(folder), "--json"])
    assert imported.exit_code == 0, imported.stderr
    assert json.loads(imported.stdout)["files"] == {
        "customers.csv": 1, "invoices.csv": 4, "payments.csv": 3,
    }  # fmt: skip

    as_of = (DUE + timedelta(days=3)).isoformat()
    run = runner.invoke(app, ["run", "--as-of", as_of, "--json"])
    assert run.exit_code == 0, run.stderr
    summary = json.loads(run.stdout)
    assert summary["as_of"] == as_of
    assert summary["messages"] == {"gentle": {"sent": 1}}
    assert summary["segments"] == {"on_time": 1}

    again = json.loads(runner.invoke(app, ["run", "--as-of", as_of, "--json"]).stdout)
    assert again["nothing_new"] is True


def test_bad_input_exits_2_and_names_file_line_and_field(
    runner: CliRunner, engine: Engine, settings: Settings, tmp_path: Path
) -> None:
    ledger = ledger_with_one_debtor()
    ledger.invoices[-1]["due_on"] = "2026-02-30"
    folder = ledger.write(tmp_path / "ledger")

    result = runner.invoke(app, ["import", str(folder)])

    assert result.exit_code == 2
    assert "invoices.csv:5: due_on:" in result.stderr
    assert result.stdout == ""


def test_range_options_are_checked(runner: CliRunner, settings: Settings) -> None:
    result = runner.invoke(app, ["run", "--from", "2026-01-02"])
    assert result.exit_code == 2
    assert "--from and --to go together" in result.stderr


def test_demo_seeds_runs_and_a_second_demo_sends_nothing(
    runner: CliRunner, engine: Engine, settings: Settings
) -> None:
    first = runner.invoke(app, ["demo", "--customers", "60", "--days", "35", "--json"])
    assert first.exit_code == 0, first.stderr
    totals = json.loads(first.stdout)["totals"]
    assert totals["sent"] > 0
    assert len(totals["segments"]) >= 4
    assert {"pre_due", "gentle", "firm"} <= set(totals["messages"])
    answers = json.loads(first.stdout)["answers"]  # some customers answer, so the report shows it
    assert sum(answers.values()) > 0 and set(answers) <= {
        "already_paid", "payment_failed", "order_problem", "need_time", "unsubscribe"
    }  # fmt: skip
    inbox = json.loads(first.stdout)["inbox"]  # a reply, an auto-reply and a bounce come back
    assert inbox["kinds"] == {"bounce": 1, "auto_reply": 1, "reply": 1, "unreadable": 0}
    assert inbox["bounces"]["hard"] == 1 and inbox["intents"]["already_paid"] == 1

    second = json.loads(
        runner.invoke(app, ["demo", "--customers", "60", "--days", "35", "--json"]).stdout
    )
    assert second["totals"]["sent"] == 0
    assert second["totals"]["nothing_new"] is True
    assert second["answers"] == {}  # the same answers again are not recorded twice
    assert second["inbox"]["read"] == 0
    with engine.connect() as conn:
        assert unlogged_moves(conn) == [], "every status change is in message_events"
