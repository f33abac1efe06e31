"""A small builder for test ledgers in the CSV contract, so tests read like specifications."""

from __future__ import annotations

import csv
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import Engine

from collectflow.flows.config import Settings
from collectflow.flows.ledger import ImportReport, import_ledger

CUSTOMER_COLUMNS = [
    "customer_id", "name", "email", "locale", "timezone", "country",
    "account_manager_email", "do_not_contact", "autopay",
]  # fmt: skip
INVOICE_COLUMNS = [
    "invoice_id", "customer_id", "number", "issued_on", "due_on", "amount", "currency", "status",
    "payment_url",
]  # fmt: skip
PAYMENT_COLUMNS = [
    "payment_id", "invoice_id", "attempted_at", "amount", "status", "failure_code", "gateway",
    "method",
]  # fmt: skip


@dataclass
class Ledger:
    """Customers, invoices and payments, written as the three CSV files and imported."""

    customers: list[dict[str, Any]] = field(default_factory=list)
    invoices: list[dict[str, Any]] = field(default_factory=list)
    payments: list[dict[str, Any]] = field(default_factory=list)

    def customer(self, customer_id: str, **values: Any) -> str:
        row = {"customer_id": customer_id, "name": f"Customer {customer_id}",
               "email": f"{customer_id.lower()}@example.com", "locale": "en"}  # fmt: skip
        self.customers.append(row | values)
        return customer_id

    def invoice(
        self, invoice_id: str, customer_id: str, due_on: date, amount: str = "100.00",
        currency: str = "EUR", issued_days_before_due: int = 30, **values: Any,
    ) -> str:  # fmt: skip
        issued_on = due_on - timedelta(days=issued_days_before_due)
        row = {"invoice_id": invoice_id, "customer_id": customer_id, "issued_on": issued_on,
               "due_on": due_on, "amount": amount, "currency": currency}  # fmt: skip
        self.invoices.append(row | values)
        return invoice_id

    def payment(
        self, payment_id: str, invoice_id: str, on: date, amount: str = "100.00",
        status: str = "succeeded", hour: int = 10, **values: Any,
    ) -> str:  # fmt: skip
        attempted_at = datetime.combine(on, time(hour), tzinfo=UTC).isoformat()
        row = {"payment_id": payment_id, "invoice_id": invoice_id, "attempted_at": attempted_at,
               "amount": amount, "status": status}  # fmt: skip
        self.payments.append(row | values)
        return payment_id

    def history(self, customer_id: str, due_on: date, days_late: int = 0, count: int = 3) -> None:
        """`count` monthly invoices before `due_on`, each paid `days_late` after its due date."""
        for n in range(1, count + 1):
            due = due_on - timedelta(days=30 * n)
            invoice_id = self.invoice(f"H-{customer_id}-{n}", customer_id, due)
            self.payment(f"HP-{customer_id}-{n}", invoice_id, due + timedelta(days=days_late))

    def write(self, directory: Path) -> Path:
        directory.mkdir(parents=True, exist_ok=True)
        for name, columns, rows in (
            ("customers.csv", CUSTOMER_COLUMNS, self.customers),
            ("invoices.csv", INVOICE_COLUMNS, self.invoices),
            ("payments.csv", PAYMENT_COLUMNS, self.payments),
        ):
            with (directory / name).open("w", newline="", encoding="utf-8") as handle:
                writer = csv.DictWriter(handle, fieldnames=columns, restval="")
                writer.writeheader()
                writer.writerows(rows)
        return directory

    def load(self, engine: Engine, directory: Path, settings: Settings) -> ImportReport:
        return import_ledger(engine, self.write(directory), settings)


def two_overdue_customers(engine: Engine, settings: Settings, folder: Path, today: date) -> None:
    """ANNA and BERT, each owing 250.00 on an invoice due 20 days ago, walked through the
    daily runs of its pre-due, gentle and firm stages (3 days before, 3 and 14 days after)."""
    from collectflow.flows.pipeline import open_run, run_day

    due = today - timedelta(days=20)
    ledger = Ledger()
    for customer_id in ("ANNA", "BERT"):
        ledger.customer(customer_id)
        ledger.history(customer_id, due)
        ledger.invoice(f"INV-{customer_id}", customer_id, due, amount="250.00")
    ledger.load(engine, folder, settings)
    with open_run(settings) as ctx:
        for offset in (-3, 3, 14):
            run_day(ctx, due + timedelta(days=offset))
