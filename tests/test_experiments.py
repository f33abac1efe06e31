"""Experiments: stable hash assignment, the split, intervals on known cases, and the stage hook.

The interval cases are Newcombe's published examples (Statistics in Medicine 17, 1998,
table II): 56/70 - 48/80 and 5/56 - 0/29.
"""

from __future__ import annotations

from collections import Counter
from datetime import date, timedelta
from pathlib import Path

import pytest
import yaml
from sqlalchemy import Engine, select

from collectflow.flows.config import PROJECT_ROOT, Settings, get_settings
from collectflow.flows.daily import collections_range
from collectflow.flows.measure.experiments import (
    HOLDOUT,
    Arms,
    Comparison,
    experiment_results,
    newcombe,
    uplift_interval,
    wald,
)
from collectflow.models import Message
from tests.ledger import Ledger
from tests.outbox import open_case, sent_message

MESSAGES = Message.__table__
GENTLE = Arms("standard.gentle", ("gentle", "firm"), 0.25)


def test_assignment_is_a_pure_function_of_experiment_and_customer() -> None:
    arms = Arms("standard.gentle", ("gentle", "gentle_named"), 0.2)

    assigned = [arms.assign(f"C-{n}") for n in range(1, 7)]

    assert assigned == ["gentle", "gentle_named", "holdout", "gentle", "holdout", "gentle_named"]
    assert [arms.assign(f"C-{n}") for n in range(1, 7)] == assigned  # again: the same
    renamed = Arms("standard.gentle.v2", arms.templates, arms.holdout)
    assert [renamed.assign(f"C-{n}") for n in range(1, 7)] != assigned  # a new experiment


def test_the_split_follows_the_holdout_share_and_divides_the_rest_evenly() -> None:
    counts = Counter(GENTLE.assign(f"CUST-{n:05d}") for n in range(20_000))

    assert abs(counts[HOLDOUT] / 20_000 - 0.25) < 0.01
    assert abs(counts["gentle"] / 20_000 - 0.375) < 0.01
    assert abs(counts["firm"] / 20_000 - 0.375) < 0.01


def test_newcombe_interval_reproduces_the_published_examples() -> None:
    large = newcombe(56, 70, 48, 80)
    assert (round(large.low, 4), round(large.high, 4)) == (0.0524, 0.3339)
    small = newcombe(5, 56, 0, 29)
    assert (round(small.low, 4), round(small.high, 4)) == (-0.0381, 0.1926)


def test_wald_is_used_on_large_samples_and_newcombe_on_small_ones() -> None:
    assert (round(wald(56, 70, 48, 80).low, 4), round(wald(56, 70, 48, 80).high, 4)) == (
        0.0575,
        0.3425,
    )
    assert uplift_interval(56, 70, 48, 80).method == "Wald"
    assert uplift_interval(5, 56, 0, 29).method == "Newcombe (Wilson score)"


def test_a_small_sample_is_too_small_to_conclude() -> None:
    small = Comparison("x", "gentle", 40, 30, 40, 10, min_sample=50)
    large = Comparison("x", "gentle", 400, 300, 400, 100, min_sample=50)

    assert small.verdict == "too small to conclude"
    assert small.to_dict()["min_sample"] == 50
    assert small.uplift == 0.5
    assert large.verdict == "better than holdout"


def test_each_arm_is_compared_with_the_holdout_on_cure_within_n_days(
    engine: Engine, settings: Settings, tmp_path: Path
) -> None:
    """Six customers per arm; in the variant four pay within 14 days, in the holdout one."""
    due, planned = date(2026, 3, 1), date(2026, 3, 4)
    ledger = Ledger()
    for arm in ("V", "H"):
        for n in range(6):
            ledger.customer(f"{arm}{n}")
            ledger.invoice(f"I-{arm}{n}", f"{arm}{n}", due)
    for customer in ("V0", "V1", "V2", "V3", "H0"):
        ledger.payment(f"P-{customer}", f"I-{customer}", planned + timedelta(days=5))
    ledger.payment("P-H1", "I-H1", planned + timedelta(days=20))  # too late to count
    ledger.load(engine, tmp_path / "ledger", settings)
    with engine.begin() as conn:
        for arm, variant, status in (("V", "gentle", "sent"), ("H", HOLDOUT, "suppressed")):
            for n in range(6):
                customer = f"{arm}{n}"
                sent_message(
                    conn, open_case(conn, customer, due), customer, "gentle", planned,
                    [f"I-{customer}"], status=status, experiment="standard.gentle",
                    variant=variant,
                )  # fmt: skip
        (result,) = experiment_results(conn, date(2026, 4, 1), cure_days=14, min_sample=5)

    assert (result.variant, result.messages, result.cured) == ("gentle", 6, 4)
    assert (result.holdout_messages, result.holdout_cured) == (6, 1)
    assert result.uplift == 0.5
    assert result.interval is not None
    assert (round(result.interval.low, 4), round(result.interval.high, 4)) == (-0.0403, 0.7732)
    assert result.verdict == "no clear difference"  # 4/6 against 1/6 is not enough to tell


@pytest.fixture
def experiment_policy(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The default policy with an experiment on the standard ladder's gentle stage."""
    raw = yaml.safe_load((PROJECT_ROOT / "policy.yaml").read_text())
    gentle = next(s for s in raw["ladders"]["standard"]["stages"] if s["name"] == "gentle")
    gentle.update(variants=["firm"], holdout=0.25)
    path = tmp_path / "policy.yaml"
    path.write_text(yaml.safe_dump(raw))
    monkeypatch.setenv("COLLECTFLOW_POLICY", str(path))
    get_settings.cache_clear()
    return path


def test_a_stage_experiment_assigns_on_plan_and_the_ladder_moves_the_same_for_everyone(
    engine: Engine, settings: Settings, tmp_path: Path, experiment_policy: Path
) -> None:
    due = date(2026, 3, 2)
    customers = [f"C-{n}" for n in range(12)]
    ledger = Ledger()
    for customer in customers:
        ledger.customer(customer)
        ledger.history(customer, due)
        ledger.invoice(f"INV-{customer}", customer, due)
    ledger.load(engine, tmp_path / "ledger", settings)

    collections_range(due + timedelta(days=3), due + timedelta(days=14))

    with engine.connect() as conn:
        rows = conn.execute(
            select(
                MESSAGES.c.customer_id, MESSAGES.c.stage, MESSAGES.c.planned_on,
                MESSAGES.c.template, MESSAGES.c.variant, MESSAGES.c.status,
                MESSAGES.c.status_reason,
            ).where(MESSAGES.c.kind == "reminder")
        ).all()  # fmt: skip
    gentle = {row.customer_id: row for row in rows if row.stage == "gentle"}
    assert set(gentle) == set(customers)
    for customer, row in gentle.items():
        arm = GENTLE.assign(customer)
        assert row.variant == arm
        if arm == HOLDOUT:
            assert (row.status, row.status_reason) == ("suppressed", HOLDOUT)
            assert row.template == "gentle"
        else:
            assert (row.status, row.template) == ("sent", arm)
    assert {row.variant for row in gentle.values()} == {"gentle", "firm", HOLDOUT}
    firm_days = {row.planned_on for row in rows if row.stage == "firm"}
    assert {row.customer_id for row in rows if row.stage == "firm"} == set(customers)
    assert firm_days == {due + timedelta(days=14)}


def test_arms_are_compared_within_the_risk_band_each_customer_had_when_planned(
    engine: Engine, settings: Settings, tmp_path: Path
) -> None:
    """V0-V2 and H0-H2 were high risk when the message was planned, the others low; V0 turned
    low only later. In the variant V0-V3 pay within 14 days, in the holdout H0."""
    from collectflow.models import CustomerRisk, RiskModelRecord

    due, planned = date(2026, 3, 1), date(2026, 3, 4)
    ledger = Ledger()
    for arm in ("V", "H"):
        for n in range(6):
            ledger.customer(f"{arm}{n}")
            ledger.invoice(f"I-{arm}{n}", f"{arm}{n}", due)
    for customer in ("V0", "V1", "V2", "V3", "H0"):
        ledger.payment(f"P-{customer}", f"I-{customer}", planned + timedelta(days=5))
    ledger.load(engine, tmp_path / "ledger", settings)
    with engine.begin() as conn:
        model = conn.execute(
            RiskModelRecord.__table__.insert()
            .values(as_of=due, kind="prior", examples=0, late_days=10, model="{}")
            .returning(RiskModelRecord.__table__.c.id)
        ).scalar_one()
        history = [
            {"customer_id": f"{arm}{n}", "as_of": due, "risk": 0.8 if n < 3 else 0.1,
             "band": "high" if n < 3 else "low", "model_id": model, "reasons": "[]"}
            for arm in ("V", "H") for n in range(6)
        ] + [{"customer_id": "V0", "as_of": planned + timedelta(days=1), "risk": 0.1,
              "band": "low", "model_id": model, "reasons": "[]"}]  # fmt: skip
        conn.execute(CustomerRisk.__table__.insert(), history)
        for arm, variant, status in (("V", "gentle", "sent"), ("H", HOLDOUT, "suppressed")):
            for n in range(6):
                customer = f"{arm}{n}"
                sent_message(
                    conn, open_case(conn, customer, due), customer, "gentle", planned,
                    [f"I-{customer}"], status=status, experiment="standard.gentle",
                    variant=variant,
                )  # fmt: skip
        results = experiment_results(
            conn, date(2026, 4, 1), cure_days=14, min_sample=2, by_risk=True
        )

    by_band = {row.risk_band: row for row in results}
    assert set(by_band) == {"high", "low"}
    high, low = by_band["high"], by_band["low"]
    assert (high.messages, high.cured, high.holdout_messages, high.holdout_cured) == (3, 3, 3, 1)
    assert (low.messages, low.cured, low.holdout_messages, low.holdout_cured) == (3, 1, 3, 0)
    assert high.to_dict()["risk_band"] == "high"
