"""The ledger: what customers owe, read from the billing system's files.

`csv_import.py` imports customers, invoices and payments (all or nothing, every error named);
`balances.py` is the single source of what is owed and settled on each invoice as of a date;
`calendar.py` the business days of each country; `failures.py` the class of a failed payment
attempt; `demo.py` writes a realistic demo ledger in the import's CSV contract; `paylinks.py`
where each owed invoice is paid today (its own link, else the first healthy gateway).
"""

from collectflow.flows.ledger.balances import (
    ZERO,
    invoice_positions,
    refresh_balances,
    refresh_statistics,
    settled_amount,
    settling,
)
from collectflow.flows.ledger.calendar import (
    calendar_rows,
    days_elapsed,
    fill_calendar,
    public_holidays,
)
from collectflow.flows.ledger.csv_import import ImportReport, import_ledger
from collectflow.flows.ledger.demo import demo_customers, write_demo_ledger
from collectflow.flows.ledger.failures import failure_class_sql
from collectflow.flows.ledger.paylinks import PayLink, payment_links

__all__ = [
    "ZERO",
    "ImportReport",
    "PayLink",
    "calendar_rows",
    "days_elapsed",
    "demo_customers",
    "failure_class_sql",
    "fill_calendar",
    "import_ledger",
    "invoice_positions",
    "payment_links",
    "public_holidays",
    "refresh_balances",
    "refresh_statistics",
    "settled_amount",
    "settling",
    "write_demo_ledger",
]
