"""Stage offsets in business days: weekends and each customer's public holidays don't count."""

from __future__ import annotations

from datetime import date
from pathlib import Path

import pytest
import yaml
from sqlalchemy import Engine, insert, literal, select, true

from collectflow.flows.config import PROJECT_ROOT, Settings, get_settings
from collectflow.flows.daily import collections_range
from collectflow.flows.ledger import calendar_rows, days_elapsed, fill_calendar, public_holidays
from collectflow.flows.policy import Policy
from collectflow.models import Customer, InvoiceBalance, Message
from tests.ledger import Ledger

THURSDAY_BEFORE_EASTER = date(2025, 4, 17)  # Good Friday 18th, Easter Monday 21st


def test_holidays_come_from_the_country_and_weekends_never_count() -> None:
    german = public_holidays("DE", [2025])
    assert {date(2025, 4, 18), date(2025, 4, 21)} <= german
    assert date(2025, 4, 18) not in public_holidays("FR", [2025])
    assert public_holidays(None, [2025]) == set()

    rows = calendar_rows("DE", german, date(2025, 4, 17), date(2025, 4, 22))

    assert [row["ordinal"] for row in rows] == [1, 1, 1, 1, 1, 2]


def test_business_days_between_dates_are_counted_in_sql(engine: Engine, policy: Policy) -> None:
    business = policy.model_copy(
        update={"ladders": {k: v.model_copy(update={"business_days": True})
                            for k, v in policy.ladders.items()}}
    )  # fmt: skip
    with engine.begin() as conn:
        conn.execute(
            insert(Customer.__table__),
            [
                {"customer_id": c, "name": c, "email": f"{c}@x.org", "country": c}
                for c in ("DE", "FR")
            ],
        )
        conn.execute(
            insert(InvoiceBalance.__table__).values(
                invoice_id="I", customer_id="C", as_of=date(2025, 4, 30), due_on=date(2025, 4, 17),
                currency="EUR", owed=1, remindable=True)
        )  # fmt: skip
        fill_calendar(conn, business, date(2025, 4, 30))

        def elapsed(country: str | None, on: date) -> int:
            since = literal(THURSDAY_BEFORE_EASTER)
            return conn.scalar(select(days_elapsed(on, since, literal(country), true())))

        assert elapsed("DE", date(2025, 4, 24)) == 3
        assert elapsed("de", date(2025, 4, 23)) == 2
        assert elapsed("FR", date(2025, 4, 23)) == 3
        assert elapsed(None, date(2025, 4, 22)) == 3
        assert elapsed("DE", date(2025, 4, 14)) == -3


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_the_first_overdue_reminder_waits_three_business_days_in_each_country(
    engine: Engine, settings: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    raw = yaml.safe_load((PROJECT_ROOT / "policy.yaml").read_text())
    raw["ladders"]["standard"]["business_days"] = True
    (tmp_path / "policy.yaml").write_text(yaml.safe_dump(raw))
    monkeypatch.setenv("COLLECTFLOW_POLICY", str(tmp_path / "policy.yaml"))
    get_settings.cache_clear()
    ledger = Ledger()
    for customer_id, country in (("BERLIN", "DE"), ("PARIS", "FR"), ("NOWHERE", "")):
        ledger.customer(customer_id, country=country)
        ledger.history(customer_id, THURSDAY_BEFORE_EASTER)
        ledger.invoice(f"INV-{customer_id}", customer_id, THURSDAY_BEFORE_EASTER)
    ledger.load(engine, tmp_path / "ledger", get_settings())

    collections_range(date(2025, 4, 17), date(2025, 4, 25))

    messages = Message.__table__
    with engine.connect() as conn:
        gentle = dict(
            conn.execute(
                select(messages.c.customer_id, messages.c.planned_on).where(
                    messages.c.stage == "gentle"
                )
            ).all()
        )
    assert gentle == {
        "BERLIN": date(2025, 4, 24),  # Good Friday and Easter Monday are off in Germany
        "PARIS": date(2025, 4, 23),  # only Easter Monday in France
        "NOWHERE": date(2025, 4, 22),  # weekends only
    }
