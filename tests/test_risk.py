"""The risk score: a ledger where the answer is obvious, monotone inputs, no look-ahead, the
prior with too little history, what `collectflow risk` prints, and segment rules that read
the day's risk."""

from __future__ import annotations

import json
from datetime import date, timedelta
from pathlib import Path

import numpy as np
import pytest
import yaml
from sqlalchemy import Engine, select
from typer.testing import CliRunner

from collectflow.flows.cli.app import app
from collectflow.flows.config import PROJECT_ROOT, Settings
from collectflow.flows.measure.risk import risk_as_of
from collectflow.flows.policy import Policy
from collectflow.flows.policy.risk import MODEL_FEATURES, Risk
from collectflow.flows.steps.risk.model import INPUTS, fit
from collectflow.models import Customer, CustomerFeatures, CustomerRisk
from tests.ledger import Ledger

TODAY = date(2026, 6, 1)
MONTHS = 6


def late_payers(ledger: Ledger, count: int = 10, months: int = MONTHS) -> Ledger:
    """`count` punctual customers (P..., paying the day before due) and `count` chronic ones
    (C..., paying 30 days late), each with monthly invoices due in the last `months` months,
    and one open invoice each due in 10 days."""
    for kind, days_late in (("P", -1), ("C", 30)):
        for n in range(count):
            customer = ledger.customer(f"{kind}{n:02d}")
            for month in range(1, months + 1):
                due = TODAY - timedelta(days=30 * month + 5)
                invoice = ledger.invoice(f"I-{customer}-{month}", customer, due)
                paid_on = due + timedelta(days=days_late)
                if paid_on < TODAY:
                    ledger.payment(f"P-{customer}-{month}", invoice, paid_on)
            ledger.invoice(f"I-{customer}-next", customer, TODAY + timedelta(days=10))
    return ledger


def with_risk(policy: Policy, **values: object) -> Policy:
    return policy.model_copy(update={"risk": Risk(**values)})


def test_a_chronic_late_payer_scores_above_a_punctual_one(
    engine: Engine, settings: Settings, policy: Policy, tmp_path: Path
) -> None:
    late_payers(Ledger()).load(engine, tmp_path / "ledger", settings)

    view = risk_as_of(engine, with_risk(policy, min_examples=50), TODAY)

    assert view.model["kind"] == "fitted", view.model
    risks = {row["customer_id"]: row["risk"] for row in view.customers}
    chronic = [risk for customer, risk in risks.items() if customer.startswith("C")]
    punctual = [risk for customer, risk in risks.items() if customer.startswith("P")]
    assert min(chronic) > 0.6 > 0.2 > max(punctual), risks
    reasons = next(row for row in view.customers if row["customer_id"] == "C00")["reasons"]
    pushes = {reason["feature"]: reason["contribution"] for reason in reasons}
    assert pushes and all(value > 0 for value in pushes.values()), reasons
    assert {"late_share", "very_late_ratio", "avg_days_late"} & set(pushes), reasons


def test_too_little_history_falls_back_to_the_prior_and_says_so(
    engine: Engine, settings: Settings, policy: Policy, tmp_path: Path
) -> None:
    late_payers(Ledger(), count=2, months=3).load(engine, tmp_path / "ledger", settings)

    view = risk_as_of(engine, policy, TODAY)  # 12 labelled invoices < min_examples 200

    assert view.model["kind"] == "prior"
    assert "fewer than risk.min_examples (200)" in view.model["note"]
    assert view.model["intercept"] == Risk().prior.intercept
    risks = {row["customer_id"]: row["risk"] for row in view.customers}
    assert risks["C00"] > risks["P00"], risks


def test_scores_as_of_a_date_ignore_everything_after_it(
    engine: Engine, settings: Settings, policy: Policy, tmp_path: Path
) -> None:
    ledger = late_payers(Ledger())
    ledger.load(engine, tmp_path / "before", settings)
    fitted = with_risk(policy, min_examples=50)
    before = risk_as_of(engine, fitted, TODAY)

    # the future: the punctual customers stop paying, the chronic ones pay everything, new
    # invoices and payments are dated after TODAY, and today's open invoices get paid late
    for n in range(10):
        for month in range(1, 4):
            due = TODAY + timedelta(days=30 * month)
            ledger.invoice(f"F-P{n:02d}-{month}", f"P{n:02d}", due)
            ledger.invoice(f"F-C{n:02d}-{month}", f"C{n:02d}", due)
            ledger.payment(f"FP-C{n:02d}-{month}", f"F-C{n:02d}-{month}", due)
        ledger.payment(f"FP-P{n:02d}-next", f"I-P{n:02d}-next", TODAY + timedelta(days=60))
    ledger.load(engine, tmp_path / "after", settings)
    after = risk_as_of(engine, fitted, TODAY)

    assert after.model == before.model
    assert after.customers == before.customers


def test_the_fit_keeps_monotone_weights_at_zero_or_above() -> None:
    # data where more late history goes with FEWER late invoices: a free fit would give
    # late_share a negative weight; the trade says more late history never lowers risk
    rng = np.random.default_rng(7)
    raw = np.zeros((400, len(INPUTS)))
    raw[:, INPUTS.index("late_share")] = rng.uniform(0, 1, 400)
    raw[:, INPUTS.index("avg_days_late")] = rng.uniform(0, 30, 400)
    late = (rng.uniform(0, 1, 400) > raw[:, INPUTS.index("late_share")]).astype(float)

    model = fit(raw, late, l2=1.0)

    weights = dict(zip(INPUTS, model.weights, strict=True))
    assert all(weights[name] >= 0 for name, sign in MODEL_FEATURES.items() if sign > 0), weights
    assert weights["late_share"] == 0.0
    base = raw[:50].copy()
    for name, sign in MODEL_FEATURES.items():
        if sign > 0:
            more = base.copy()
            more[:, INPUTS.index(name)] += 5 if "days" in name else 0.5
            assert np.all(model.predict(more) >= model.predict(base) - 1e-12), name


def test_risk_json_has_one_row_per_customer_with_invoices(
    engine: Engine, settings: Settings, tmp_path: Path
) -> None:
    ledger = late_payers(Ledger(), count=2, months=3)
    ledger.customer("NOINVOICE")
    ledger.load(engine, tmp_path / "ledger", settings)

    result = CliRunner().invoke(app, ["risk", "--as-of", TODAY.isoformat(), "--json"])

    assert result.exit_code == 0, result.output
    document = json.loads(result.stdout)
    assert set(document) >= {"model", "customers"}
    assert {"kind", "note", "examples", "late_days", "intercept", "inputs"} <= set(
        document["model"]
    )
    rows = document["customers"]
    assert sorted(row["customer_id"] for row in rows) == ["C00", "C01", "P00", "P01"]
    for row in rows:
        assert {"customer_id", "risk", "segment", "reasons"} <= set(row)
        assert 0 <= row["risk"] <= 1 and row["segment"]
        assert len(row["reasons"]) == Risk().reasons
        assert all(set(r) == {"feature", "value", "contribution"} for r in row["reasons"])


def test_explain_shows_every_input_and_adds_up(
    engine: Engine, settings: Settings, tmp_path: Path
) -> None:
    late_payers(Ledger(), count=2, months=3).load(engine, tmp_path / "ledger", settings)

    result = CliRunner().invoke(
        app, ["risk", "--as-of", TODAY.isoformat(), "--explain", "C01", "--json"]
    )

    assert result.exit_code == 0, result.output
    explain = json.loads(result.stdout)["explain"]
    assert [row["feature"] for row in explain["inputs"]] != []
    assert sorted(row["feature"] for row in explain["inputs"]) == sorted(INPUTS)
    total = explain["intercept"] + sum(row["contribution"] for row in explain["inputs"])
    assert total == pytest.approx(explain["log_odds"], abs=1e-3)
    assert explain["risk"] == pytest.approx(1 / (1 + np.exp(-explain["log_odds"])), abs=1e-3)


@pytest.mark.parametrize(
    ("arguments", "reason"),
    [
        (["--explain", "NOBODY"], "no customer 'NOBODY'"),
        (["--as-of", "2026-02-30"], "Invalid value for '--as-of'"),
    ],
)
def test_bad_input_is_refused_with_the_reason(
    engine: Engine, settings: Settings, tmp_path: Path, arguments: list[str], reason: str
) -> None:
    late_payers(Ledger(), count=1, months=2).load(engine, tmp_path / "ledger", settings)

    result = CliRunner().invoke(app, ["risk", "--as-of", TODAY.isoformat(), *arguments])

    assert result.exit_code == 2
    assert reason in " ".join(result.output.split()), result.output


def test_a_segment_rule_reads_the_risk_of_the_same_day(
    engine: Engine, settings: Settings, policy: Policy, tmp_path: Path, monkeypatch
) -> None:
    from collectflow.flows.config import get_settings
    from collectflow.flows.pipeline import open_run, run_day

    document = yaml.safe_load((PROJECT_ROOT / "policy.yaml").read_text(encoding="utf-8"))
    document["segments"].insert(
        0, {"name": "risky", "when": {"risk": {"gte": 0.6}}, "ladder": "firm"}
    )
    document["risk"] = {"min_examples": 50}
    path = tmp_path / "policy.yaml"
    path.write_text(yaml.safe_dump(document), encoding="utf-8")
    monkeypatch.setenv("COLLECTFLOW_POLICY", str(path))
    get_settings.cache_clear()
    late_payers(Ledger()).load(engine, tmp_path / "ledger", settings)

    with open_run(get_settings()) as ctx:
        run_day(ctx, TODAY, skip_delivery=True)

    customers = Customer.__table__
    features = CustomerFeatures.__table__
    with engine.connect() as conn:
        segments = dict(conn.execute(select(customers.c.customer_id, customers.c.segment)).all())
        risks = dict(conn.execute(select(features.c.customer_id, features.c.risk)).all())
        history = conn.execute(select(CustomerRisk.__table__)).mappings().all()
    assert {c for c, s in segments.items() if s == "risky"} == {f"C{n:02d}" for n in range(10)}
    assert all(risks[c] >= 0.6 for c, s in segments.items() if s == "risky"), risks
    assert {row["customer_id"] for row in history} == set(segments)  # first scores kept
    assert all(json.loads(row["reasons"]) for row in history)


def test_the_report_shows_the_held_out_check_and_the_reliability_plot(
    engine: Engine, settings: Settings, policy: Policy, tmp_path: Path
) -> None:
    from collectflow.flows.measure.report import effectiveness_report
    from collectflow.flows.measure.report_html import render_html
    from collectflow.flows.steps.assess import measure_behaviour
    from collectflow.flows.steps.risk import score_risk

    late_payers(Ledger()).load(engine, tmp_path / "ledger", settings)
    fitted = with_risk(policy, min_examples=20)
    with engine.begin() as conn:
        measure_behaviour(conn, fitted, TODAY)
        score_risk(conn, fitted, TODAY)
        report = effectiveness_report(conn, fitted, TODAY)

    check = report.risk["check"]
    assert (report.risk["kind"], check["kind"]) == ("fitted", "fitted")
    assert check["invoices"] == 60  # 20 customers x the 3 invoices due in the last 90+10 days
    assert check["auc"] == 1.0  # chronic and punctual never overlap here
    assert sum(row["invoices"] for row in check["deciles"]) == 60
    html = render_html(report)
    section = html.split("<h2>Risk score</h2>", 1)[1].split("<h2>", 1)[0]
    assert "AUC 1.000" in section and "Reliability" in section
    assert section.count("<circle") == len(check["deciles"])
    assert "src=" not in section and "href=" not in section  # inline: no external asset


def test_the_ranking_measures_match_published_values() -> None:
    from collectflow.flows.steps.risk.model import auc, spearman

    # the textbook ROC example: 3 of the 4 (late, on time) pairs are ordered right
    assert auc([0.1, 0.4, 0.35, 0.8], [0, 0, 1, 1]) == 0.75
    assert auc([0.5, 0.5], [0, 1]) == 0.5  # a tie counts half
    assert auc([0.2, 0.3], [1, 1]) is None  # nothing to compare with
    # scipy.stats.spearmanr([1, 2, 3, 4, 5], [5, 6, 7, 8, 7]) = 0.8207826816681233
    assert spearman([1, 2, 3, 4, 5], [5, 6, 7, 8, 7]) == pytest.approx(0.8207826816681233)


@pytest.mark.parametrize(
    ("risk", "where"),
    [
        ({"prior": {"weights": {"late_share": -1.0}}}, "risk.prior.weights"),
        ({"prior": {"weights": {"tenure": 1.0}}}, "risk.prior.weights"),
        ({"age_factors": [{"from_days": 5, "factor": 0.1}]}, "risk"),
        ({"rates": {"GBP": 1.2}}, "risk"),
        ({"late_days": True}, "risk.late_days"),
    ],
)
def test_a_bad_risk_section_is_refused_with_its_path(
    tmp_path: Path, risk: dict, where: str
) -> None:
    from collectflow.flows.errors import PolicyError
    from collectflow.flows.policy import load_policy

    document = yaml.safe_load((PROJECT_ROOT / "policy.yaml").read_text(encoding="utf-8"))
    document["risk"] = risk
    path = tmp_path / "policy.yaml"
    path.write_text(yaml.safe_dump(document), encoding="utf-8")

    with pytest.raises(PolicyError) as refused:
        load_policy(path)

    assert f"{path}: {where}" in str(refused.value)
