"""Ledger import: a clean ledger is upserted exactly; a ledger with any bad row is refused whole."""

from __future__ import annotations

from datetime import UTC, date, datetime
from decimal import Decimal
from pathlib import Path
from textwrap import dedent
from typing import Any

import pytest
from sqlalchemy import Engine, func, select, update

from collectflow.flows.config import Settings
from collectflow.flows.errors import ImportRejected
from collectflow.flows.ledger import import_ledger
from collectflow.models import Customer, Invoice, Payment

SAMPLE_LEDGER = Path(__file__).parent / "data" / "ledger"
CUSTOMERS = Customer.__table__
INVOICES = Invoice.__table__
PAYMENTS = Payment.__table__
LEDGER_TABLES = (CUSTOMERS, INVOICES, PAYMENTS)


def write_ledger(directory: Path, **files: str) -> Path:
    """Write each `name="csv text"` as `directory/name.csv` (indentation removed)."""
    directory.mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        (directory / f"{name}.csv").write_text(dedent(text).lstrip(), encoding="utf-8")
    return directory


def row_counts(engine: Engine) -> dict[str, int]:
    with engine.connect() as conn:
        return {
            table.name: conn.scalar(select(func.count()).select_from(table))
            for table in LEDGER_TABLES
        }


def snapshot(engine: Engine) -> dict[str, list[Any]]:
    with engine.connect() as conn:
        return {
            table.name: conn.execute(select(table).order_by(*table.primary_key.columns)).all()
            for table in LEDGER_TABLES
        }


def one(engine: Engine, table: Any, key: str) -> Any:
    with engine.connect() as conn:
        primary_key = next(iter(table.primary_key.columns))
        return conn.execute(select(table).where(primary_key == key)).one()


def rejection(engine: Engine, directory: Path, settings: Settings) -> list[str]:
    with pytest.raises(ImportRejected) as rejected:
        import_ledger(engine, directory, settings)
    return rejected.value.errors


def test_sample_ledger_imports_every_row_with_exact_money(engine: Engine, settings: Settings):
    report = import_ledger(engine, SAMPLE_LEDGER, settings)

    assert report.files == {"customers.csv": 6, "invoices.csv": 12, "payments.csv": 8}
    assert report.warnings == []
    assert row_counts(engine) == {"customers": 6, "invoices": 12, "payments": 8}
    invoice = one(engine, INVOICES, "INV-1001")
    assert invoice.amount == Decimal("1234.56")
    assert (invoice.currency, invoice.status, invoice.due_on) == ("USD", "open", date(2025, 2, 4))
    assert one(engine, INVOICES, "INV-1004").status == "disputed"


def test_customer_fields_are_normalised_and_defaulted(engine: Engine, settings: Settings):
    import_ledger(engine, SAMPLE_LEDGER, settings)

    dupont = one(engine, CUSTOMERS, "C002")
    assert (dupont.locale, dupont.timezone, dupont.country) == ("fr_FR", "Europe/Paris", "FR")
    initech = one(engine, CUSTOMERS, "C005")
    assert initech.name == "Initech, Inc."
    assert initech.timezone == settings.timezone
    assert (initech.do_not_contact, initech.autopay) == (False, False)
    assert one(engine, CUSTOMERS, "C004").do_not_contact is True
    assert one(engine, CUSTOMERS, "C003").autopay is True


def test_payments_keep_the_instant_in_utc_and_the_business_day(engine: Engine, settings: Settings):
    import_ledger(engine, SAMPLE_LEDGER, settings)

    failed = one(engine, PAYMENTS, "PAY-003")
    assert (failed.status, failed.failure_code, failed.gateway) == (
        "failed",
        "card_declined",
        "stripe",
    )
    wire = one(engine, PAYMENTS, "PAY-005")  # 2025-03-01T14:45:00-05:00
    assert as_utc(wire.attempted_at) == datetime(2025, 3, 1, 19, 45, tzinfo=UTC)
    assert wire.attempted_on == date(2025, 3, 1)


def test_business_day_of_a_payment_follows_the_configured_timezone(
    engine: Engine, settings: Settings, tmp_path: Path
):
    paris = settings.model_copy(update={"timezone": "Europe/Paris"})
    ledger = write_ledger(
        tmp_path / "ledger",
        customers="""
            customer_id,name,email
            C1,Acme,ap@acme.example
        """,
        invoices="""
            invoice_id,customer_id,issued_on,due_on,amount,currency
            I1,C1,2025-03-01,2025-03-31,100.00,EUR
        """,
        payments="""
            payment_id,invoice_id,attempted_at,amount,status
            P1,I1,2025-03-01T23:30:00Z,100.00,succeeded
        """,
    )

    import_ledger(engine, ledger, paris)

    assert one(engine, PAYMENTS, "P1").attempted_on == date(2025, 3, 2)
    assert one(engine, CUSTOMERS, "C1").timezone == "Europe/Paris"


def test_importing_the_same_files_twice_changes_nothing(engine: Engine, settings: Settings):
    import_ledger(engine, SAMPLE_LEDGER, settings)
    before = snapshot(engine)

    report = import_ledger(engine, SAMPLE_LEDGER, settings)

    assert report.files == {"customers.csv": 6, "invoices.csv": 12, "payments.csv": 8}
    assert snapshot(engine) == before


def test_reimport_updates_changed_values_but_not_the_segment(
    engine: Engine, settings: Settings, tmp_path: Path
):
    customers = """
        customer_id,name,email
        C1,Acme,ap@acme.example
    """
    write_ledger(
        tmp_path / "ledger",
        customers=customers,
        invoices="""
            invoice_id,customer_id,issued_on,due_on,amount,currency
            I1,C1,2025-01-01,2025-01-31,100.00,EUR
        """,
    )
    import_ledger(engine, tmp_path / "ledger", settings)
    with engine.begin() as conn:
        conn.execute(update(CUSTOMERS).values(segment="reliable", segment_rule="on_time"))

    write_ledger(
        tmp_path / "ledger",
        customers=customers.replace("ap@acme.example", "billing@acme.example"),
        invoices="""
            invoice_id,customer_id,issued_on,due_on,amount,currency,status
            I1,C1,2025-01-01,2025-01-31,150.25,EUR,disputed
        """,
    )
    import_ledger(engine, tmp_path / "ledger", settings)

    invoice = one(engine, INVOICES, "I1")
    assert (invoice.amount, invoice.status) == (Decimal("150.25"), "disputed")
    customer = one(engine, CUSTOMERS, "C1")
    assert customer.email == "billing@acme.example"
    assert (customer.segment, customer.segment_rule) == ("reliable", "on_time")
    assert row_counts(engine) == {"customers": 1, "invoices": 1, "payments": 0}


def test_bad_rows_reject_the_whole_import_listing_every_error(
    engine: Engine, settings: Settings, tmp_path: Path
):
    ledger = write_ledger(
        tmp_path / "ledger",
        customers="""
            customer_id,name,email
            C1,Acme,ap@acme.example
        """,
        invoices="""
            invoice_id,customer_id,issued_on,due_on,amount,currency
            I1,C1,2025-01-01,2025-01-31,100.00,EUR
            I2,C1,2025-01-01,not-a-date,100.00,EUR
            I3,C1,2025-01-01,2025-01-31,-5.00,EUR
            I4,C1,2025-01-01,2025-01-31,twelve,EUR
            I5,C1,2025-01-01,2025-01-31,100.00,EUROS
            I6,C9,2025-01-01,2025-01-31,100.00,EUR
            I7,,2025-01-01,2025-01-31,100.00,EUR
        """,
        payments="""
            payment_id,invoice_id,attempted_at,amount,status
            P1,I1,2025-01-15T10:00:00,100.00,succeeded
        """,
    )

    assert rejection(engine, ledger, settings) == [
        "invoices.csv:3: due_on: 'not-a-date' is not a date (YYYY-MM-DD)",
        "invoices.csv:4: amount: '-5.00' is negative",
        "invoices.csv:5: amount: 'twelve' is not a decimal amount (like 1234.56)",
        "invoices.csv:6: currency: 'EUROS' is not a known ISO 4217 currency code",
        "invoices.csv:7: customer_id: 'C9' is in neither the database nor customers.csv",
        "invoices.csv:8: customer_id: required value missing",
        "payments.csv:2: attempted_at: '2025-01-15T10:00:00' has no UTC offset; add Z or +HH:MM",
    ]
    assert row_counts(engine) == {"customers": 0, "invoices": 0, "payments": 0}


def test_rows_breaking_ledger_rules_are_rejected(
    engine: Engine, settings: Settings, tmp_path: Path
):
    ledger = write_ledger(
        tmp_path / "ledger",
        customers="""
            customer_id,name,email,locale,timezone,country,do_not_contact
            C1,Acme,ap@acme.example,fr-FR,Europe/Paris,fr,yes
            C2,Globex,globex.example,english,Mars/Olympus,France,maybe
        """,
        invoices="""
            invoice_id,customer_id,issued_on,due_on,amount,currency,status
            I1,C1,2025-01-31,2025-01-01,100.00,EUR,open
            I1,C1,2025-01-01,2025-01-31,100.00,EUR,settled
        """,
        payments="""
            payment_id,invoice_id,attempted_at,amount,status
            P1,I1,yesterday,0,succeeded
            P2,I9,2025-01-15T10:00:00Z,10.00,bounced
        """,
    )

    assert rejection(engine, ledger, settings) == [
        "customers.csv:3: email: 'globex.example' is not an email address: An email address "
        "must have an @-sign.",
        "customers.csv:3: locale: 'english' is not a known locale (like en, fr-FR)",
        "customers.csv:3: timezone: 'Mars/Olympus' is not an IANA timezone (like Europe/Paris)",
        "customers.csv:3: country: 'France' is not an ISO 3166 two-letter country code",
        "customers.csv:3: do_not_contact: 'maybe' is not true/false (or yes/no, 1/0)",
        "invoices.csv:2: due_on: 2025-01-01 is before issued_on 2025-01-31",
        "invoices.csv:3: status: 'settled' is not one of open|paid|void|disputed",
        "invoices.csv:3: invoice_id: 'I1' is already on line 2",
        "payments.csv:2: attempted_at: 'yesterday' is not a date-time (YYYY-MM-DDTHH:MM:SS+HH:MM)",
        "payments.csv:2: amount: '0' must be greater than 0",
        "payments.csv:3: status: 'bounced' is not one of succeeded|failed|refunded",
        "payments.csv:3: invoice_id: 'I9' is in neither the database nor invoices.csv",
    ]
    assert row_counts(engine) == {"customers": 0, "invoices": 0, "payments": 0}


def test_errors_name_the_physical_line_even_after_multiline_values(
    engine: Engine, settings: Settings, tmp_path: Path
):
    ledger = write_ledger(
        tmp_path / "ledger",
        customers="""
            customer_id,name,email
            C1,"Acme
            Europe",ap@acme.example

            C2,Globex,not-an-address
        """,
    )

    assert rejection(engine, ledger, settings) == [
        "customers.csv:2: name: 'Acme\\nEurope' has a control character (U+000A) at position 5",
        "customers.csv:5: email: 'not-an-address' is not an email address: An email address "
        "must have an @-sign.",
    ]


def test_amounts_may_not_have_more_decimals_than_the_currency(
    engine: Engine, settings: Settings, tmp_path: Path
):
    ledger = write_ledger(
        tmp_path / "ledger",
        customers="""
            customer_id,name,email
            C1,Kaisha,ap@kaisha.example
        """,
        invoices="""
            invoice_id,customer_id,issued_on,due_on,amount,currency
            I1,C1,2025-01-01,2025-01-31,1500,JPY
            I2,C1,2025-01-01,2025-01-31,1500.00,JPY
            I3,C1,2025-01-01,2025-01-31,1500.50,JPY
            I4,C1,2025-01-01,2025-01-31,10.005,EUR
            I5,C1,2025-01-01,2025-01-31,10.005,BHD
        """,
    )

    assert rejection(engine, ledger, settings) == [
        "invoices.csv:4: amount: 1500.50 has more decimal places than JPY allows (0)",
        "invoices.csv:5: amount: 10.005 has more decimal places than EUR allows (2)",
    ]


def test_references_may_point_at_rows_already_in_the_database(
    engine: Engine, settings: Settings, tmp_path: Path
):
    import_ledger(engine, SAMPLE_LEDGER, settings)
    ledger = write_ledger(
        tmp_path / "later",
        invoices="""
            invoice_id,customer_id,issued_on,due_on,amount,currency
            INV-2001,C001,2025-04-01,2025-05-01,99.00,USD
        """,
        payments="""
            payment_id,invoice_id,attempted_at,amount,status
            PAY-101,INV-1006,2025-04-02T08:00:00Z,2500.00,succeeded
            PAY-102,INV-2001,2025-04-02T08:00:00Z,99.00,succeeded
        """,
    )

    report = import_ledger(engine, ledger, settings)

    assert report.files == {"invoices.csv": 1, "payments.csv": 2}
    assert row_counts(engine) == {"customers": 6, "invoices": 13, "payments": 10}


def test_unknown_columns_are_ignored_with_a_warning(
    engine: Engine, settings: Settings, tmp_path: Path
):
    ledger = write_ledger(
        tmp_path / "ledger",
        customers="""
            customer_id,name,email,segment_hint
            C1,Acme,ap@acme.example,vip
        """,
    )

    report = import_ledger(engine, ledger, settings)

    assert report.warnings == ["customers.csv:1: segment_hint: unknown column ignored"]
    assert report.files == {"customers.csv": 1}
    assert one(engine, CUSTOMERS, "C1").segment is None


def test_unreadable_files_are_rejected_with_the_line_to_fix(
    engine: Engine, settings: Settings, tmp_path: Path
):
    ledger = write_ledger(
        tmp_path / "ledger",
        invoices="""
            invoice_id,customer_id,issued_on,due_on,currency
        """,
        payments="""
            payment_id,invoice_id,attempted_at,amount,status
            P1,I1,2025-01-15T10:00:00Z,10.00,succeeded,extra
        """,
    )
    (ledger / "customers.csv").write_bytes(
        "customer_id,name,email\nC1,Café Lumière,ap@lumiere.example\n".encode("latin-1")
    )

    assert rejection(engine, ledger, settings) == [
        "customers.csv:2: not UTF-8 (byte 0xe9 at position 7); save it as UTF-8",
        "invoices.csv:1: amount: required column missing",
        "payments.csv:2: 6 values but the header has 5 columns",
        "payments.csv:2: invoice_id: 'I1' is in neither the database nor invoices.csv",
    ]
    assert row_counts(engine) == {"customers": 0, "invoices": 0, "payments": 0}


def test_a_directory_without_ledger_files_is_rejected(
    engine: Engine, settings: Settings, tmp_path: Path
):
    errors = rejection(engine, tmp_path, settings)

    assert errors == [
        f"{tmp_path}: no ledger file found "
        "(expected any of customers.csv, invoices.csv, payments.csv)"
    ]


def as_utc(moment: datetime) -> datetime:
    """SQLite hands back the stored UTC instant without its offset; PostgreSQL keeps it."""
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)
