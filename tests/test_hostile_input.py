"""Hostile and careless input: every case is refused with exit code 2 and `file:line: field:
why` (or the policy key path), nothing is imported, and no traceback reaches the user."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import date
from pathlib import Path
from typing import Any

import pytest
import yaml
from sqlalchemy import Engine, func, select
from typer.testing import CliRunner

from collectflow.flows.cli.app import app
from collectflow.flows.config import PROJECT_ROOT, Settings
from collectflow.flows.errors import ImportRejected, PolicyError
from collectflow.flows.ledger import import_ledger
from collectflow.flows.policy import load_policy
from collectflow.models import Customer, Invoice, Payment
from tests.ledger import Ledger

DUE = date(2026, 3, 2)


def one_payment_ledger(**changes: dict[str, str]) -> Ledger:
    """One customer, one GBP invoice, one payment; `changes` override values per file."""
    customer = {"customer_id": "C1", "name": "Acme", "email": "ap@acme.example", "country": "GB"}
    invoice = {"invoice_id": "I1", "customer_id": "C1", "issued_on": "2026-02-01",
               "due_on": DUE.isoformat(), "amount": "100.00", "currency": "GBP"}  # fmt: skip
    payment = {"payment_id": "P1", "invoice_id": "I1", "attempted_at": "2026-03-02T10:00:00Z",
               "amount": "10.00", "status": "succeeded"}  # fmt: skip
    return Ledger(
        customers=[customer | changes.get("customer", {})],
        invoices=[invoice | changes.get("invoice", {})],
        payments=[payment | changes.get("payment", {})],
    )


def nothing_imported(engine: Engine) -> bool:
    with engine.connect() as conn:
        tables = (Customer.__table__, Invoice.__table__, Payment.__table__)
        return all(conn.scalar(select(func.count()).select_from(t)) == 0 for t in tables)


def rejected(ledger: Ledger, engine: Engine, settings: Settings, folder: Path) -> list[str]:
    with pytest.raises(ImportRejected) as refusal:
        import_ledger(engine, ledger.write(folder), settings)
    return refusal.value.errors


HOSTILE_ROWS: list[tuple[str, dict[str, Any], str]] = [
    (
        "year 1",
        {"payment": {"attempted_at": "0001-01-01T00:00:00+01:00"}},
        "payments.csv:2: attempted_at: '0001-01-01T00:00:00+01:00' is not between 1900 and 2199",
    ),
    (
        "year 9999",
        {"payment": {"attempted_at": "9999-12-31T23:00:00-01:00"}},
        "payments.csv:2: attempted_at: '9999-12-31T23:00:00-01:00' is not between 1900 and 2199",
    ),
    (
        "a due date in year 9999",
        {"invoice": {"due_on": "9999-01-01"}},
        "invoices.csv:2: due_on: '9999-01-01' is not between 1900 and 2199",
    ),
    (
        "NUL in a name",
        {"customer": {"name": "Ac\x00me"}},
        "customers.csv:2: name: 'Ac\\x00me' has a control character (U+0000) at position 3",
    ),
    (
        "NUL in an id",
        {"payment": {"payment_id": "P\x001"}},
        "payments.csv:2: payment_id: 'P\\x001' has a control character (U+0000) at position 2",
    ),
    (
        "an escape character in a gateway",
        {"payment": {"gateway": "stripe\x1b[31m"}},
        "payments.csv:2: gateway: 'stripe\\x1b[31m' has a control character (U+001B) at position 7",
    ),
    (
        "the unknown region",
        {"customer": {"country": "ZZ"}},
        "customers.csv:2: country: 'ZZ' is not an ISO 3166 two-letter country code",
    ),
    (
        "the European Union",
        {"customer": {"country": "EU"}},
        "customers.csv:2: country: 'EU' is not an ISO 3166 two-letter country code",
    ),
    (
        "the world",
        {"customer": {"country": "001"}},
        "customers.csv:2: country: '001' is not an ISO 3166 two-letter country code",
    ),
    (
        "Arabic-Indic digits",
        {"invoice": {"amount": "\u0661\u0662\u0663"}},
        "invoices.csv:2: amount: '\u0661\u0662\u0663' is not a decimal amount (like 1234.56)",
    ),
    (
        "Arabic-Indic digits in a payment",
        {"payment": {"amount": "\u0661\u0660"}},
        "payments.csv:2: amount: '\u0661\u0660' is not a decimal amount (like 1234.56)",
    ),
    (
        "a tenth of a penny",
        {"payment": {"amount": "10.123"}},
        "payments.csv:2: amount: 10.123 has more decimal places than GBP (the invoice's "
        "currency) allows (2)",
    ),
]


@pytest.mark.parametrize(
    ("changes", "error"),
    [pytest.param(changes, error, id=name) for name, changes, error in HOSTILE_ROWS],
)
def test_a_hostile_value_is_named_and_nothing_is_imported(
    engine: Engine, settings: Settings, tmp_path: Path, changes: dict[str, Any], error: str
) -> None:
    ledger = one_payment_ledger(**changes)
    assert rejected(ledger, engine, settings, tmp_path / "ledger") == [error]
    assert nothing_imported(engine)


def test_an_email_with_a_comma_is_refused(
    engine: Engine, settings: Settings, tmp_path: Path
) -> None:
    ledger = one_payment_ledger(customer={"email": "evil,h@x.org"})
    [error] = rejected(ledger, engine, settings, tmp_path / "ledger")
    assert error.startswith("customers.csv:2: email: 'evil,h@x.org' is not an email address: ")
    assert "','" in error  # email-validator names the character
    assert nothing_imported(engine)


def test_an_internationalised_domain_and_countries_are_accepted(
    engine: Engine, settings: Settings, tmp_path: Path
) -> None:
    ledger = one_payment_ledger(customer={"email": "zahlung@bücher.de", "country": "fr"})
    ledger.customers.append({"customer_id": "C2", "name": "Dupont", "email": "compta@exemple.fr"})
    import_ledger(engine, ledger.write(tmp_path / "ledger"), settings)
    with engine.connect() as conn:
        rows = conn.execute(select(Customer.__table__.c.email, Customer.__table__.c.country))
        assert sorted(rows) == [("compta@exemple.fr", None), ("zahlung@bücher.de", "FR")]


def test_payment_precision_is_checked_against_an_invoice_already_in_the_database(
    engine: Engine, settings: Settings, tmp_path: Path
) -> None:
    ledger = one_payment_ledger(invoice={"currency": "JPY", "amount": "1000"})
    import_ledger(engine, ledger.write(tmp_path / "first"), settings)
    later = Ledger()
    later.payment("P2", "I1", DUE, amount="0.5")
    later.write(tmp_path / "second")
    for name in ("customers.csv", "invoices.csv"):
        (tmp_path / "second" / name).unlink()
    with pytest.raises(ImportRejected) as refusal:
        import_ledger(engine, tmp_path / "second", settings)
    assert refusal.value.errors == [
        "payments.csv:2: amount: 0.5 has more decimal places than JPY (the invoice's currency) "
        "allows (0)"
    ]


def test_the_command_line_exits_2_for_a_hostile_row(
    engine: Engine, settings: Settings, tmp_path: Path
) -> None:
    folder = one_payment_ledger(payment={"attempted_at": "0001-01-01T00:00:00+01:00"}).write(
        tmp_path / "ledger"
    )
    result = CliRunner().invoke(app, ["import", str(folder)])
    assert result.exit_code == 2
    assert "payments.csv:2: attempted_at: '0001-01-01T00:00:00+01:00' is not between" in (
        result.stderr
    )
    assert "Traceback" not in result.stderr


# The policy.


def policy_file(folder: Path, change: Any) -> Path:
    """The shipped policy with `change(document)` applied, written to `folder/policy.yaml`."""
    document = yaml.safe_load((PROJECT_ROOT / "policy.yaml").read_text(encoding="utf-8"))
    change(document)
    path = folder / "policy.yaml"
    path.write_text(yaml.safe_dump(document, allow_unicode=True), encoding="utf-8")
    return path


def first_ladder(document: dict[str, Any]) -> dict[str, Any]:
    return next(iter(document["ladders"].values()))


BAD_POLICIES: list[tuple[str, Any, str]] = [
    (
        "a window of 10**30 days",
        lambda d: d.update(attribution_window_days=10**30),
        "attribution_window_days: Input should be less than or equal to 3650",
    ),
    (
        "true as a number of days",
        lambda d: first_ladder(d).update(min_gap_days=True),
        "min_gap_days: Input should be a valid integer",
    ),
    (
        "a number of days as text",
        lambda d: d.update(attribution_window_days="14"),
        "attribution_window_days: Input should be a valid integer",
    ),
    (
        "true as a share",
        lambda d: first_ladder(d)["stages"][0].update(holdout=True),
        "stages.0.holdout: Input should be a valid number",
    ),
    (
        "an unknown placeholder in the payment link",
        lambda d: d.setdefault("sender", {}).update(payment_url="https://pay.example/{invoice}"),
        "sender.payment_url: Value error, unknown placeholder {invoice} (the only one is "
        "{invoice_id})",
    ),
    (
        "a lone brace in the payment link",
        lambda d: d.setdefault("sender", {}).update(payment_url="https://pay.example/{"),
        "sender.payment_url: Value error, 'https://pay.example/{': Single '{' encountered in "
        "format string (write a literal brace as {{ or }})",
    ),
]


@pytest.mark.parametrize(
    ("change", "error"),
    [pytest.param(change, error, id=name) for name, change, error in BAD_POLICIES],
)
def test_a_bad_policy_value_is_refused_with_its_path(
    tmp_path: Path, change: Any, error: str
) -> None:
    path = policy_file(tmp_path, change)
    with pytest.raises(PolicyError) as refusal:
        load_policy(path)
    assert error in str(refusal.value)


def test_a_policy_that_is_not_utf8_names_its_line(tmp_path: Path) -> None:
    path = tmp_path / "policy.yaml"
    path.write_bytes(b"version: 1\n# caf\xe9 au lait\nsegments: []\n")
    with pytest.raises(PolicyError) as refusal:
        load_policy(path)
    assert str(refusal.value) == f"{path}:2: not UTF-8; save it as UTF-8"


def test_run_with_a_bad_policy_exits_2_with_one_error_line_and_no_traceback(
    engine: Engine, settings: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    capfd: pytest.CaptureFixture[str],
) -> None:  # fmt: skip
    from collectflow.flows.config import get_settings

    path = policy_file(tmp_path, lambda d: d.update(attribution_window_days=10**30))
    monkeypatch.setenv("COLLECTFLOW_POLICY", str(path))
    get_settings.cache_clear()
    result = CliRunner().invoke(app, ["run", "--as-of", DUE.isoformat()])
    printed = result.stderr + "".join(capfd.readouterr())
    assert result.exit_code == 2
    assert result.stderr.startswith("error: invalid policy:\n")
    assert "attribution_window_days" in result.stderr
    assert "Traceback" not in printed


# Secrets: the database URL's password is never shown.

SECRET = "s3cret-pw"


@pytest.fixture
def url_with_password(postgres_url: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """The test PostgreSQL URL with a password (the test server trusts local connections, so
    any password works) set as COLLECTFLOW_DATABASE_URL, its schema empty."""
    from sqlalchemy.engine import make_url

    from collectflow.flows.config import get_settings
    from collectflow.models import drop_db, make_engine

    url = make_url(postgres_url).set(password=SECRET).render_as_string(hide_password=False)
    engine = make_engine(url)
    drop_db(engine)
    engine.dispose()
    monkeypatch.setenv("COLLECTFLOW_DATABASE_URL", url)
    get_settings.cache_clear()
    yield url
    get_settings.cache_clear()


@pytest.mark.postgres
def test_init_and_demo_print_the_database_url_with_its_password_masked(
    url_with_password: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    capfd: pytest.CaptureFixture[str],
) -> None:  # fmt: skip
    monkeypatch.setenv("COLLECTFLOW_OUTBOX", str(tmp_path / "outbox"))
    monkeypatch.setenv("COLLECTFLOW_EXPORTS", str(tmp_path / "exports"))
    runner = CliRunner()
    init = runner.invoke(app, ["init"])
    demo = runner.invoke(app, ["demo", "--customers", "10", "--days", "0"])
    demo_json = runner.invoke(app, ["demo", "--customers", "10", "--days", "0", "--json"])
    printed = "".join(
        [*(r.stdout + r.stderr for r in (init, demo, demo_json)), *capfd.readouterr()]
    )
    unwrapped = "".join(printed.splitlines())  # the console wraps long lines
    assert (init.exit_code, demo.exit_code, demo_json.exit_code) == (0, 0, 0), printed
    assert "database ready: postgresql+psycopg://postgres:***@127.0.0.1" in unwrapped
    assert "demo ledger imported into postgresql+psycopg://postgres:***@" in unwrapped
    assert SECRET not in unwrapped


def test_a_malformed_database_url_is_refused_without_showing_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from collectflow.flows.config import get_settings

    monkeypatch.setenv("COLLECTFLOW_DATABASE_URL", f"postgresql//admin:{SECRET}@db")
    get_settings.cache_clear()
    try:
        result = CliRunner().invoke(app, ["init"])
    finally:
        get_settings.cache_clear()
    assert result.exit_code == 2
    assert "database_url\n  Value error, not a database URL" in result.stderr
    assert SECRET not in result.stderr + result.stdout


def test_the_settings_repr_masks_the_password() -> None:
    settings = Settings(database_url=f"postgresql://collect:{SECRET}@db.internal/collections")
    assert "database_url='postgresql://collect:***@db.internal/collections'" in repr(settings)
    assert SECRET not in repr(settings) + str(settings)
