"""The demo portfolio: deterministic, in the CSV contract, and showing every behaviour profile."""

from __future__ import annotations

import csv
import re
from collections import Counter, defaultdict
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, func, select

from collectflow.flows.config import Settings
from collectflow.flows.ledger import import_ledger
from collectflow.flows.ledger.demo import (
    FAILURE_CODES,
    FILES,
    INVOICE_COLUMNS,
    PAYMENT_COLUMNS,
    PROFILES,
    DemoCustomer,
    demo_customers,
    write_demo_ledger,
)
from collectflow.models import Customer, Invoice, Payment

TODAY = date(2025, 6, 15)
AMOUNT = re.compile(r"\d+\.\d{2}")
FILES_TABLES = {"customers.csv": Customer, "invoices.csv": Invoice, "payments.csv": Payment}
TIMEZONES = {
    "en": {"America/New_York", "Europe/London"},
    "fr": {"Europe/Paris"},
    "de": {"Europe/Berlin"},
}


def read_csv(path: Path) -> tuple[list[str], list[dict[str, str]]]:
    with path.open(encoding="utf-8", newline="") as handle:
        reader = csv.DictReader(handle)
        return list(reader.fieldnames or []), list(reader)


@pytest.fixture(scope="module")
def ledger(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("demo")
    write_demo_ledger(directory, TODAY)
    return directory


@pytest.fixture(scope="module")
def portfolio() -> dict[str, list[DemoCustomer]]:
    """The default portfolio's customers, by profile."""
    by_profile: dict[str, list[DemoCustomer]] = defaultdict(list)
    for customer in demo_customers(TODAY):
        by_profile[customer.profile].append(customer)
    return by_profile


def invoices_of(customer: DemoCustomer) -> list[dict[str, str]]:
    return [dict(zip(INVOICE_COLUMNS, row, strict=True)) for row in customer.invoices]


def payments_of(customer: DemoCustomer, status: str | None = None) -> list[dict[str, Any]]:
    rows = [dict(zip(PAYMENT_COLUMNS, row, strict=True)) for row in customer.payments]
    return [row for row in rows if status is None or row["status"] == status]


def days_after_due(customer: DemoCustomer, payment: dict[str, str]) -> int:
    due = {row["invoice_id"]: date.fromisoformat(row["due_on"]) for row in invoices_of(customer)}
    paid_on = datetime.fromisoformat(payment["attempted_at"]).date()
    return (paid_on - due[payment["invoice_id"]]).days


def test_the_same_seed_writes_byte_identical_files(tmp_path: Path) -> None:
    write_demo_ledger(tmp_path / "a", TODAY)
    write_demo_ledger(tmp_path / "b", TODAY)
    write_demo_ledger(tmp_path / "c", TODAY, seed=8)
    for name in FILES:
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()
        assert (tmp_path / "a" / name).read_bytes() != (tmp_path / "c" / name).read_bytes()


def test_reports_the_rows_written_per_file(tmp_path: Path) -> None:
    counts = write_demo_ledger(tmp_path, TODAY, customers=40, invoices_per_customer=6)
    assert set(counts) == set(FILES)
    for name, count in counts.items():
        assert len(read_csv(tmp_path / name)[1]) == count
    assert counts["customers.csv"] == 40
    assert 40 < counts["invoices.csv"] <= 40 * 6


def test_files_have_exactly_the_contract_columns(ledger: Path) -> None:
    for name, columns in FILES.items():
        assert read_csv(ledger / name)[0] == list(columns)


def test_customers_respect_the_contract(ledger: Path) -> None:
    customers = read_csv(ledger / "customers.csv")[1]
    assert len(customers) == 300
    assert len({row["customer_id"] for row in customers}) == 300
    assert all(re.fullmatch(r"C\d{6}", row["customer_id"]) for row in customers)
    assert len({row["email"] for row in customers}) == 300
    for row in customers:
        assert row["name"].strip()
        assert re.fullmatch(r"[a-z0-9.]+@[a-z0-9.]+\.[a-z]+", row["email"])
        assert row["timezone"] in TIMEZONES[row["locale"]]
        assert row["do_not_contact"] in ("true", "false")
        assert row["autopay"] in ("true", "false")
        assert row["account_manager_email"] == "" or "@" in row["account_manager_email"]


def test_invoices_respect_the_contract(ledger: Path) -> None:
    customer_ids = {row["customer_id"] for row in read_csv(ledger / "customers.csv")[1]}
    invoices = read_csv(ledger / "invoices.csv")[1]
    assert len({row["invoice_id"] for row in invoices}) == len(invoices)
    for row in invoices:
        assert re.fullmatch(r"INV-\d{6}-\d{2}", row["invoice_id"])
        assert row["customer_id"] in customer_ids
        issued, due = date.fromisoformat(row["issued_on"]), date.fromisoformat(row["due_on"])
        assert issued <= TODAY
        assert due - issued == timedelta(days=30)
        assert AMOUNT.fullmatch(row["amount"])
        assert Decimal("80.00") <= Decimal(row["amount"]) <= Decimal("4800.00")
        assert row["currency"] in ("EUR", "USD", "GBP")
        assert row["status"] in ("open", "void", "disputed")


def test_payments_respect_the_contract_and_nothing_is_after_today(ledger: Path) -> None:
    invoice_ids = {row["invoice_id"] for row in read_csv(ledger / "invoices.csv")[1]}
    payments = read_csv(ledger / "payments.csv")[1]
    assert len({row["payment_id"] for row in payments}) == len(payments)
    for row in payments:
        assert row["payment_id"].startswith("PAY-")
        assert row["invoice_id"] in invoice_ids
        attempted_at = datetime.fromisoformat(row["attempted_at"])
        assert attempted_at.utcoffset() is not None
        assert attempted_at.date() <= TODAY
        assert attempted_at.astimezone(UTC).date() == attempted_at.date()
        assert AMOUNT.fullmatch(row["amount"])
        assert Decimal(row["amount"]) > 0
        assert row["status"] in ("succeeded", "failed", "refunded")
        assert (row["failure_code"] in FAILURE_CODES) == (row["status"] == "failed")
        assert row["method"] in ("card", "bank_transfer")
        assert (row["gateway"] in ("stripe", "adyen")) == (row["method"] == "card")


def test_every_profile_is_present_at_300_customers(
    portfolio: dict[str, list[DemoCustomer]],
) -> None:
    assert set(portfolio) == set(PROFILES)
    shares = {profile: len(customers) / 300 for profile, customers in portfolio.items()}
    for profile, weight in PROFILES.items():
        assert shares[profile] == pytest.approx(weight / 100, abs=0.06)


def test_punctual_customers_pay_up_to_five_days_before_due(
    portfolio: dict[str, list[DemoCustomer]],
) -> None:
    for customer in portfolio["punctual"]:
        for payment in payments_of(customer, "succeeded"):
            assert -5 <= days_after_due(customer, payment) <= 0


def test_slightly_late_customers_pay_some_invoices_one_to_twelve_days_late(
    portfolio: dict[str, list[DemoCustomer]],
) -> None:
    lateness = [
        days_after_due(customer, payment)
        for customer in portfolio["slightly_late"]
        for payment in payments_of(customer, "succeeded")
    ]
    assert all(-2 <= days <= 12 for days in lateness)
    assert 0.25 <= sum(days >= 1 for days in lateness) / len(lateness) <= 0.55


def test_chronic_customers_pay_weeks_late_and_leave_some_unpaid(
    portfolio: dict[str, list[DemoCustomer]],
) -> None:
    long_unpaid = 0
    for customer in portfolio["chronic"]:
        for payment in payments_of(customer, "succeeded"):
            assert 20 <= days_after_due(customer, payment) <= 60
        paid = {payment["invoice_id"] for payment in payments_of(customer, "succeeded")}
        long_unpaid += sum(
            row["invoice_id"] not in paid
            and date.fromisoformat(row["due_on"]) < TODAY - timedelta(days=60)
            for row in invoices_of(customer)
        )
    assert long_unpaid > 0


def test_failed_card_customers_have_recent_declines_some_later_recovered(
    portfolio: dict[str, list[DemoCustomer]],
) -> None:
    recovered = Counter()
    for customer in portfolio["failed_card"]:
        failures = payments_of(customer, "failed")
        assert failures, customer.customer
        assert all(p["method"] == "card" and p["gateway"] in ("stripe", "adyen") for p in failures)
        latest = max(datetime.fromisoformat(p["attempted_at"]).date() for p in failures)
        assert latest >= TODAY - timedelta(days=30)
        succeeded = {payment["invoice_id"] for payment in payments_of(customer, "succeeded")}
        for invoice_id in {failure["invoice_id"] for failure in failures}:
            recovered[invoice_id in succeeded] += 1
    assert recovered[True] and recovered[False]
    assert {customer.customer[-1] for customer in portfolio["failed_card"]} == {"true", "false"}
    codes = {p["failure_code"] for c in portfolio["failed_card"] for p in payments_of(c, "failed")}
    assert codes == set(FAILURE_CODES)


def test_disputing_customers_have_one_unpaid_disputed_invoice(
    portfolio: dict[str, list[DemoCustomer]],
) -> None:
    for customer in portfolio["disputes"]:
        disputed = [row for row in invoices_of(customer) if row["status"] == "disputed"]
        assert len(disputed) == 1
        assert disputed[0]["invoice_id"] not in {p["invoice_id"] for p in payments_of(customer)}


def test_customers_who_never_pay_owe_their_recent_invoices_and_paid_some_in_part(
    portfolio: dict[str, list[DemoCustomer]],
) -> None:
    partial = 0
    for customer in portfolio["never_pays"]:
        invoices = [row for row in invoices_of(customer) if row["status"] == "open"]
        paid = {p["invoice_id"]: p["amount"] for p in payments_of(customer, "succeeded")}
        assert not paid.keys() & {row["invoice_id"] for row in invoices[-2:]}
        partial += sum(
            Decimal(paid.get(row["invoice_id"], row["amount"])) < Decimal(row["amount"])
            for row in invoices
        )
    assert partial > 0


def test_new_customers_have_one_or_two_invoices(
    portfolio: dict[str, list[DemoCustomer]],
) -> None:
    assert all(1 <= len(customer.invoices) <= 2 for customer in portfolio["new"])


def test_today_has_pre_due_just_overdue_and_long_overdue_invoices(ledger: Path) -> None:
    settled: Counter[str] = Counter()
    for row in read_csv(ledger / "payments.csv")[1]:
        sign = {"succeeded": 1, "refunded": -1}.get(row["status"], 0)
        settled[row["invoice_id"]] += sign * Decimal(row["amount"])
    overdue_days = [
        (TODAY - date.fromisoformat(row["due_on"])).days
        for row in read_csv(ledger / "invoices.csv")[1]
        if row["status"] == "open" and settled[row["invoice_id"]] < Decimal(row["amount"])
    ]
    assert any(-5 <= days < 0 for days in overdue_days)
    assert any(1 <= days <= 10 for days in overdue_days)
    assert any(days > 60 for days in overdue_days)


def test_the_portfolio_has_refunds_voids_opt_outs_account_managers_and_three_locales(
    ledger: Path,
) -> None:
    customers = read_csv(ledger / "customers.csv")[1]
    statuses = Counter(row["status"] for row in read_csv(ledger / "payments.csv")[1])
    assert statuses["refunded"] >= 2
    assert any(row["status"] == "void" for row in read_csv(ledger / "invoices.csv")[1])
    share = Counter(row["do_not_contact"] for row in customers)["true"] / len(customers)
    assert 0.02 <= share <= 0.09
    managed = sum(bool(row["account_manager_email"]) for row in customers) / len(customers)
    assert 0.05 <= managed <= 0.16
    locales = Counter(row["locale"] for row in customers)
    assert locales["en"] > locales["fr"] > locales["de"] > 0
    assert {row["timezone"] for row in customers} == set().union(*TIMEZONES.values())


def test_the_demo_ledger_imports_without_errors(
    engine: Engine, settings: Settings, tmp_path: Path
) -> None:
    counts = write_demo_ledger(tmp_path / "demo", TODAY, customers=120, invoices_per_customer=6)
    report = import_ledger(engine, tmp_path / "demo", settings)
    assert report.warnings == []
    assert report.files == counts
    with engine.connect() as conn:
        for name, table in FILES_TABLES.items():
            assert conn.scalar(select(func.count()).select_from(table)) == counts[name]
