"""Import, as properties over generated ledgers (hypothesis, SQLite in a temporary folder).

- A valid ledger round-trips: what is read back from the database is what was written.
- One invalid row, whatever is wrong with it, rejects the whole import: the errors name that
  row's line, and nothing at all is imported.
"""

from __future__ import annotations

import csv
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta, timezone
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import Engine, delete, select

from collectflow.flows.config import Settings
from collectflow.flows.errors import ImportRejected
from collectflow.flows.ledger import import_ledger
from collectflow.models import Customer, Invoice, Payment, init_db, make_engine

CUSTOMERS, INVOICES, PAYMENTS = Customer.__table__, Invoice.__table__, Payment.__table__
PRECISION = {"EUR": 2, "GBP": 2, "USD": 2, "JPY": 0, "BHD": 3}
EXAMPLES = settings(
    max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow], database=None
)


@pytest.fixture(scope="module")
def prefect_harness() -> Iterator[None]:
    """Overrides the session's Prefect server (conftest.py): these tests run no flow."""
    yield


@pytest.fixture(scope="module")
def database() -> Iterator[tuple[Engine, Settings, Path]]:
    """One SQLite database for the module, emptied before each example."""
    with tempfile.TemporaryDirectory(prefix="collectflow-property-") as folder:
        url = f"sqlite:///{Path(folder) / 'ledger.db'}"
        engine = make_engine(url)
        init_db(engine)
        yield engine, Settings(database_url=url, timezone="UTC"), Path(folder)
        engine.dispose()


# Strategies: a valid ledger.

ID_CHARS = st.characters(codec="utf-8", categories=["L", "N", "P", "S"])
ids = st.text(ID_CHARS, min_size=1, max_size=64)
names = st.text(st.characters(codec="utf-8", categories=["L", "N", "P", "S", "Zs"]), max_size=40)
names = names.map(str.strip).filter(bool)
emails = st.builds(
    "{}@{}.{}".format,
    st.text("abcdefghijklmnopqrstuvwxyz0123456789._-", min_size=1, max_size=12).filter(
        lambda local: local[0] not in "._-" and local[-1] not in "._-" and ".." not in local
    ),
    st.sampled_from(["acme", "bücher", "société-générale", "example"]),
    st.sampled_from(["com", "de", "fr", "org"]),
)
days = st.dates(min_value=date(2000, 1, 1), max_value=date(2100, 12, 31))


def amount_in(currency: str, minimum: int = 0) -> st.SearchStrategy[Decimal]:
    places = PRECISION[currency]
    units = st.integers(min_value=minimum, max_value=10**9)
    return units.map(lambda n: Decimal(n).scaleb(-places))


@st.composite
def customer(draw: st.DrawFn, customer_id: str) -> dict[str, Any]:
    return {
        "customer_id": customer_id,
        "name": draw(names),
        "email": draw(emails),
        "locale": draw(st.sampled_from(["en", "fr", "de_AT", "ja"])),
        "timezone": draw(st.sampled_from(["UTC", "Europe/Paris", "Asia/Tokyo"])),
        "country": draw(st.sampled_from(["FR", "GB", "JP", "DE", None])),
        "do_not_contact": draw(st.booleans()),
        "autopay": draw(st.booleans()),
    }


@st.composite
def invoice(draw: st.DrawFn, invoice_id: str, customer_id: str) -> dict[str, Any]:
    currency = draw(st.sampled_from(sorted(PRECISION)))
    issued_on = draw(days)
    return {
        "invoice_id": invoice_id,
        "customer_id": customer_id,
        "issued_on": issued_on,
        "due_on": issued_on + timedelta(days=draw(st.integers(0, 90))),
        "amount": draw(amount_in(currency)),
        "currency": currency,
        "number": draw(st.none() | names),
        "status": draw(st.sampled_from(["open", "paid", "void", "disputed"])),
    }


@st.composite
def payment(draw: st.DrawFn, payment_id: str, invoice: dict[str, Any]) -> dict[str, Any]:
    offset = timezone(timedelta(minutes=draw(st.integers(-12 * 60, 14 * 60))))
    moment = datetime.combine(draw(days), datetime.min.time(), offset) + timedelta(
        seconds=draw(st.integers(0, 86_399))
    )
    return {
        "payment_id": payment_id,
        "invoice_id": invoice["invoice_id"],
        "attempted_at": moment,
        "amount": draw(amount_in(invoice["currency"], minimum=1)),
        "status": draw(st.sampled_from(["succeeded", "failed", "refunded"])),
        "failure_code": draw(st.none() | st.sampled_from(["card_declined", "timeout"])),
    }


@st.composite
def ledgers(draw: st.DrawFn) -> dict[str, list[dict[str, Any]]]:
    """1-4 customers, 1-6 invoices, 0-6 payments, with distinct ids."""
    customer_ids = draw(st.lists(ids, min_size=1, max_size=4, unique=True))
    invoice_ids = draw(st.lists(ids, min_size=1, max_size=6, unique=True))
    payment_ids = draw(st.lists(ids, max_size=6, unique=True))
    invoices = [draw(invoice(i, draw(st.sampled_from(customer_ids)))) for i in invoice_ids]
    return {
        "customers": [draw(customer(c)) for c in customer_ids],
        "invoices": invoices,
        "payments": [draw(payment(p, draw(st.sampled_from(invoices)))) for p in payment_ids],
    }


# Writing and reading back.


def cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, date | datetime):
        return value.isoformat()
    return str(value)


def write(folder: Path, ledger: dict[str, list[dict[str, Any]]]) -> Path:
    """Each file of the ledger that has rows, as CSV in `folder`."""
    folder.mkdir(parents=True, exist_ok=True)
    for name, rows in ledger.items():
        if not rows:
            continue
        columns = list(rows[0])
        with (folder / f"{name}.csv").open("w", newline="", encoding="utf-8") as handle:
            writer = csv.writer(handle)
            writer.writerow(columns)
            writer.writerows([[cell(row[c]) for c in columns] for row in rows])
    return folder


def read_back(engine: Engine, ledger: dict[str, list[dict[str, Any]]]) -> dict[str, list[Any]]:
    """The imported rows, with the generated columns only, in the ledger's order of ids."""
    tables = {"customers": CUSTOMERS, "invoices": INVOICES, "payments": PAYMENTS}
    found: dict[str, list[Any]] = {}
    with engine.connect() as conn:
        for name, table in tables.items():
            columns = list(ledger[name][0]) if ledger[name] else []
            key = table.primary_key.columns.values()[0]
            rows = {row[0]: row for row in conn.execute(select(key, *map(table.c.get, columns)))}
            found[name] = [dict(zip(columns, rows[r[key.name]][1:], strict=True))
                           for r in ledger[name]]  # fmt: skip
    for row in found["payments"]:
        row["attempted_at"] = row["attempted_at"].astimezone(UTC)
    return found


def expected(ledger: dict[str, list[dict[str, Any]]]) -> dict[str, list[Any]]:
    payments = [row | {"attempted_at": row["attempted_at"].astimezone(UTC)}
                for row in ledger["payments"]]  # fmt: skip
    return ledger | {"payments": payments}


def empty(engine: Engine) -> None:
    with engine.begin() as conn:
        for table in (PAYMENTS, INVOICES, CUSTOMERS):
            conn.execute(delete(table))


def counts(engine: Engine) -> list[int]:
    with engine.connect() as conn:
        return [len(conn.execute(select(t)).all()) for t in (CUSTOMERS, INVOICES, PAYMENTS)]


@EXAMPLES
@given(ledger=ledgers())
def test_a_valid_ledger_round_trips(database: tuple[Engine, Settings, Path], ledger: Any) -> None:
    engine, config, folder = database
    empty(engine)
    with tempfile.TemporaryDirectory(dir=folder) as files:
        import_ledger(engine, write(Path(files), ledger), config)
    assert read_back(engine, ledger) == expected(ledger)


# Corruptions: each makes one value of one row invalid.


@dataclass(frozen=True)
class Corruption:
    file: str
    column: str
    value: Callable[[dict[str, Any]], Any]


CORRUPTIONS = [
    Corruption("customers", "email", lambda row: "no-at-sign.example"),
    Corruption("customers", "email", lambda row: "evil,h@x.org"),
    Corruption("customers", "country", lambda row: "ZZ"),
    Corruption("customers", "locale", lambda row: "klingon-ish"),
    Corruption("customers", "do_not_contact", lambda row: "maybe"),
    Corruption("customers", "name", lambda row: row["name"] + "\x00"),
    Corruption("customers", "name", lambda row: ""),
    Corruption("invoices", "amount", lambda row: "-5"),
    Corruption("invoices", "amount", lambda row: "\u0661\u0662"),
    Corruption("invoices", "amount", lambda row: finer_than_its_currency(row["amount"])),
    Corruption("invoices", "currency", lambda row: "EURO"),
    Corruption("invoices", "issued_on", lambda row: "2026-02-30"),
    Corruption("invoices", "due_on", lambda row: row["issued_on"] - timedelta(days=1)),
    Corruption("invoices", "due_on", lambda row: "9999-01-01"),
    Corruption("invoices", "status", lambda row: "settled"),
    Corruption("invoices", "invoice_id", lambda row: "x" * 65),
    Corruption("payments", "attempted_at", lambda row: row["attempted_at"].replace(tzinfo=None)),
    Corruption("payments", "attempted_at", lambda row: "0001-01-01T00:00:00+01:00"),
    Corruption("payments", "amount", lambda row: "0"),
    Corruption("payments", "amount", lambda row: finer_than_its_currency(row["amount"])),
    Corruption("payments", "status", lambda row: "bounced"),
    Corruption("payments", "invoice_id", lambda row: row["invoice_id"] + "\x1b"),
]


def finer_than_its_currency(amount: Decimal) -> str:
    """One more decimal place than the currency has (its invoice's: the amount has as many)."""
    text = str(amount)
    return f"{text}1" if "." in text else f"{text}.1"


@EXAMPLES
@given(ledger=ledgers(), corruption=st.sampled_from(CORRUPTIONS), data=st.data())
def test_one_invalid_row_rejects_the_whole_import_and_names_its_line(
    database: tuple[Engine, Settings, Path], ledger: Any, corruption: Corruption, data: Any
) -> None:
    engine, config, folder = database
    empty(engine)
    rows = ledger[corruption.file]
    if not rows:
        rows.append(data.draw(payment("P-extra", ledger["invoices"][0])))
    index = data.draw(st.integers(0, len(rows) - 1), label="row")
    rows[index] = rows[index] | {corruption.column: corruption.value(rows[index])}
    line = index + 2  # the header is line 1; generated values never span lines

    with (
        tempfile.TemporaryDirectory(dir=folder) as files,
        pytest.raises(ImportRejected) as rejected,
    ):
        import_ledger(engine, write(Path(files), ledger), config)

    in_file = [e for e in rejected.value.errors if e.startswith(f"{corruption.file}.csv:")]
    assert in_file, rejected.value.errors
    assert all(e.startswith(f"{corruption.file}.csv:{line}: ") for e in in_file), in_file
    assert counts(engine) == [0, 0, 0]
