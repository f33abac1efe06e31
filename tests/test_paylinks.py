"""Paying works even when a payment system does not: pay links from the ledger or the policy's
gateways in order, the backup gateway while the preferred one's outage window is open, and the
report's payments by gateway.

The shipped policy lists `stripe` (label Stripe, https://pay.example.com/invoice/{invoice_id})
then `adyen` (label Adyen, https://pay-backup.example.com/invoice/{invoice_id}).
"""

from __future__ import annotations

import json
from datetime import date, timedelta
from pathlib import Path

import pytest
import yaml
from sqlalchemy import Engine, insert
from typer.testing import CliRunner

from collectflow.flows.cli.app import app
from collectflow.flows.config import PROJECT_ROOT, Settings
from collectflow.flows.daily import daily_collections
from collectflow.flows.errors import ImportRejected, PolicyError
from collectflow.flows.ledger.paylinks import PayLink, payment_links
from collectflow.flows.policy import Policy, load_policy
from collectflow.models import Invoice, OutageWindow
from tests.ledger import Ledger
from tests.test_outage import SPIKE, days_around_spike, mail_to, portfolio

INVOICES = Invoice.__table__
OUTAGES = OutageWindow.__table__
AS_OF = date(2026, 5, 4)
STRIPE = "https://pay.example.com/invoice/"
ADYEN = "https://pay-backup.example.com/invoice/"


def four_invoices(engine: Engine, settings: Settings, folder: Path) -> None:
    """OWN carries the billing system's link; OPEN has none; PAID is paid, VOID voided."""
    ledger = Ledger()
    ledger.customer("C1")
    due = AS_OF - timedelta(days=10)
    ledger.invoice("OWN", "C1", due, payment_url="https://billing.example.com/pay/OWN?s=1")
    ledger.invoice("OPEN/1", "C1", due)
    ledger.invoice("PAID", "C1", due)
    ledger.payment("P-PAID", "PAID", due, gateway="stripe")
    ledger.invoice("VOID", "C1", due, status="void")
    ledger.load(engine, folder, settings)


def window(engine: Engine, gateway: str, started_on: date, ended_on: date | None) -> None:
    with engine.begin() as conn:
        values = dict(gateway=gateway, started_on=started_on, ended_on=ended_on)
        figures = dict(attempts=30, failures=20, failure_rate=0.67, baseline_rate=0.04)
        conn.execute(insert(OUTAGES).values(**values, **figures))


def links(engine: Engine, policy: Policy, day: date = AS_OF) -> dict[str, PayLink]:
    with engine.connect() as conn:
        return payment_links(conn, policy, ["OWN", "OPEN/1", "PAID", "VOID", "NOPE"], day)


def test_the_ledgers_own_link_beats_the_gateways_and_paid_invoices_have_none(
    engine: Engine, settings: Settings, policy: Policy, tmp_path: Path
) -> None:
    four_invoices(engine, settings, tmp_path)

    assert links(engine, policy) == {
        "OWN": PayLink("OWN", "ledger", "https://billing.example.com/pay/OWN?s=1"),
        "OPEN/1": PayLink("OPEN/1", "stripe", f"{STRIPE}OPEN%2F1"),
    }
    # before its payment, the paid invoice was owed and had its link
    assert links(engine, policy, AS_OF - timedelta(days=11))["PAID"].url == f"{STRIPE}PAID"


def test_the_next_gateway_while_a_window_is_open_and_the_first_again_once_it_closed(
    engine: Engine, settings: Settings, policy: Policy, tmp_path: Path
) -> None:
    four_invoices(engine, settings, tmp_path)
    window(engine, "stripe", AS_OF - timedelta(days=2), None)

    during = links(engine, policy)
    assert during["OPEN/1"] == PayLink("OPEN/1", "adyen", f"{ADYEN}OPEN%2F1")
    assert during["OWN"].gateway == "ledger"  # the billing system's link is not ours to move
    assert links(engine, policy, AS_OF - timedelta(days=3))["OPEN/1"].gateway == "stripe"

    with engine.begin() as conn:  # stripe healthy again on AS_OF: its window ended the day before
        conn.execute(OUTAGES.update().values(ended_on=AS_OF - timedelta(days=1)))
    assert links(engine, policy)["OPEN/1"].gateway == "stripe"
    assert links(engine, policy, AS_OF - timedelta(days=1))["OPEN/1"].gateway == "adyen"

    window(engine, "stripe", AS_OF, None)
    window(engine, "adyen", AS_OF, None)
    # every gateway down: the preferred one is offered rather than no way to pay
    assert links(engine, policy)["OPEN/1"].gateway == "stripe"


def test_an_old_policy_with_sender_payment_url_has_it_as_its_one_gateway(
    engine: Engine, settings: Settings, tmp_path: Path
) -> None:
    raw = yaml.safe_load((PROJECT_ROOT / "policy.yaml").read_text(encoding="utf-8"))
    del raw["gateways"]
    raw["sender"]["payment_url"] = "http://legacy.example.com/pay?invoice={invoice_id}"
    path = tmp_path / "old.yaml"
    path.write_text(yaml.safe_dump(raw), encoding="utf-8")
    four_invoices(engine, settings, tmp_path / "ledger")
    window(engine, "stripe", AS_OF, None)

    assert links(engine, load_policy(path))["OPEN/1"] == PayLink(
        "OPEN/1", "default", "http://legacy.example.com/pay?invoice=OPEN%2F1"
    )


@pytest.mark.parametrize(
    ("change", "error"),
    [
        ({"gateways": [{"name": "stripe", "url": "http://pay.example.com/{invoice_id}"}]},
         "gateways.0.url: Value error, 'http://pay.example.com/{invoice_id}': a pay link must "
         "start with https://"),
        ({"gateways": [{"name": "stripe", "url": "https://pay.example.com/{invoice}"}]},
         "gateways.0.url: Value error, unknown placeholder {invoice}"),
        ({"gateways": [{"name": "stripe", "url": "https://a.example/{invoice_id}"},
                       {"name": "stripe", "url": "https://b.example/{invoice_id}"}]},
         "each gateway's name must be unique"),
        ({"sender": {"payment_url": "https://pay.example.com/{invoice_id}"}},
         "sender.payment_url and gateways are both set"),
    ],
)  # fmt: skip
def test_a_bad_gateway_list_is_refused_at_load_with_the_key(
    tmp_path: Path, change: dict, error: str
) -> None:
    raw = yaml.safe_load((PROJECT_ROOT / "policy.yaml").read_text(encoding="utf-8"))
    for key, value in change.items():
        raw[key] = raw[key] | value if isinstance(value, dict) else value
    path = tmp_path / "policy.yaml"
    path.write_text(yaml.safe_dump(raw), encoding="utf-8")

    with pytest.raises(PolicyError) as refused:
        load_policy(path)
    assert error in str(refused.value)


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
@pytest.mark.parametrize(
    ("value", "why"),
    [
        ("http://billing.example.com/pay/1", "is not an https:// URL"),
        ("javascript:alert(1)", "is not an https:// URL"),
        ("https:///pay/1", "is not a URL (https://host/path, no spaces)"),
        ("https://billing.example.com/pay 1", "is not a URL (https://host/path, no spaces)"),
        ("https://[broken/pay", "is not a URL"),
    ],
)
def test_a_payment_url_that_is_not_https_is_refused_with_file_line_and_field(
    engine: Engine, settings: Settings, tmp_path: Path, value: str, why: str
) -> None:
    ledger = Ledger()
    ledger.customer("C1")
    ledger.invoice("GOOD", "C1", AS_OF, payment_url="https://billing.example.com/pay/GOOD")
    ledger.invoice("BAD", "C1", AS_OF, payment_url=value)

    with pytest.raises(ImportRejected) as rejected:
        ledger.load(engine, tmp_path, settings)

    assert f"invoices.csv:3: payment_url: {value!r} {why}" in str(rejected.value)
    with engine.connect() as conn:
        assert conn.execute(INVOICES.select()).all() == []  # nothing half-imported
    result = CliRunner().invoke(app, ["import", str(tmp_path)])
    assert result.exit_code == 2
    assert "invoices.csv:3: payment_url:" in result.stderr


def test_messages_offer_the_backup_gateway_while_the_window_is_open_and_the_apology_names_the_way(
    engine: Engine, settings: Settings, tmp_path: Path
) -> None:
    """VICTIM's card payment fails in a stripe outage on SPIKE (tests/test_outage.py). OTHER
    is reminded that day, THIRD the day after, once stripe is back; OTHER pays through the
    link it got."""
    ledger = portfolio({day: 1 for day in days_around_spike()} | {SPIKE: 13})
    for customer_id, due in (
        ("OTHER", SPIKE - timedelta(days=3)),
        ("THIRD", SPIKE - timedelta(days=2)),
    ):
        ledger.customer(customer_id)
        ledger.history(customer_id, due)
        ledger.invoice(f"INV-{customer_id}", customer_id, due)
    ledger.invoice("OWN-OTHER", "OTHER", SPIKE - timedelta(days=3),
                   payment_url="https://billing.example.com/pay/OWN-OTHER")  # fmt: skip
    ledger.load(engine, tmp_path / "ledger", settings)

    daily_collections(as_of=SPIKE)
    ledger.payment("PAY-OTHER", "INV-OTHER", SPIKE + timedelta(days=1), gateway="adyen")
    ledger.load(engine, tmp_path / "ledger", settings)
    daily_collections(as_of=SPIKE + timedelta(days=1))

    [during] = mail_to(settings, "other@example.com")
    text = during.get_body(("plain",)).get_content()
    assert f"Pay online: {ADYEN}INV-OTHER\n" in text
    assert "Pay online: https://billing.example.com/pay/OWN-OTHER\n" in text
    assert STRIPE not in text
    assert "Our usual payment service is temporarily unavailable, so the links below\ntake " \
        "you to Adyen instead." in text  # fmt: skip
    assert f'href="{ADYEN}INV-OTHER"' in during.get_body(("html",)).get_content()

    [after] = mail_to(settings, "third@example.com")
    text = after.get_body(("plain",)).get_content()
    assert f"Pay online: {STRIPE}INV-THIRD\n" in text and ADYEN not in text
    assert "temporarily unavailable" not in text

    [apology] = mail_to(settings, "victim@example.com")
    text = apology.get_body(("plain",)).get_content()
    assert "The link next to each invoice takes you to Stripe: when\nconvenient" in text
    assert f"Pay online: {STRIPE}INV-VICTIM\n" in text
    html = apology.get_body(("html",)).get_content()
    assert "takes you to <strong>Stripe</strong>" in html

    html = tmp_path / "report.html"
    day = str(SPIKE + timedelta(days=1))
    report = CliRunner().invoke(app, ["report", "--as-of", day, "--json", "--html", str(html)])
    assert report.exit_code == 0, report.stderr
    assert json.loads(report.stdout)["payments_by_gateway"] == [
        {"gateway": "adyen", "payments": 1, "messages": 1, "amounts": {"EUR": "100.0000"}}
    ]
    page = html.read_text(encoding="utf-8")
    table = page[page.index("<h2>Payments after a message, by gateway</h2>") :]
    assert "<td class='text'>adyen</td><td>1</td><td>1</td><td>100.00 EUR</td>" in table
