"""The customer page (flows/feedback/page.py) over HTTP: what a customer sees from the link in a
reminder, what each answer does, and every bad input refused without harm.

ANNA (French) was reminded today of two invoices: F-0031 for 1,234.50 EUR and F-0042 for
250.00 EUR. F-0042 was paid after the reminder, so the page shows it paid, without a pay link.
The app runs in-process (Starlette's TestClient) on the test database, with today fixed.
"""

from __future__ import annotations

import base64
import hashlib
import html as html_module
import json
import re
from dataclasses import dataclass
from datetime import date, timedelta
from decimal import Decimal
from pathlib import Path
from string import Formatter
from typing import Any

import pytest
from babel import Locale
from babel.dates import format_date
from sqlalchemy import Engine, func, insert, select
from starlette.testclient import TestClient
from typer.testing import CliRunner

from collectflow.flows.cli.app import app as cli
from collectflow.flows.config import Settings, get_settings
from collectflow.flows.feedback.links import LinkSigner, signer
from collectflow.flows.feedback.page import RedactTokens, create_app
from collectflow.flows.feedback.page_forms import clean_text, parse_amount
from collectflow.flows.feedback.page_text import TEXTS, language_from_header, language_of
from collectflow.flows.pipeline import business_today, open_run, run_day
from collectflow.flows.policy import Policy
from collectflow.flows.policy.feedback import Feedback
from collectflow.models import (
    CaseEvent,
    ClaimedPayment,
    ContactBlock,
    CustomerAnswer,
    Dispute,
    Message,
    OutageWindow,
    Promise,
)
from tests.ledger import Ledger

pytestmark = pytest.mark.filterwarnings("ignore:Using `httpx` with `starlette.testclient`")

MESSAGES, EVENTS = Message.__table__, CaseEvent.__table__
WRITES = [CustomerAnswer, CaseEvent, ClaimedPayment, Dispute, Promise, ContactBlock]
NNBSP, NBSP = "\u202f", "\u00a0"
OWED = f"1{NNBSP}234,50{NBSP}€"  # 1,234.50 EUR as the French emails write it
PAID = f"250,00{NBSP}€"
PAY_URL = "https://pay.example.com/invoice/INV-31"  # policy.yaml's payment_url for INV-31


@dataclass
class Reminder:
    """ANNA's reminder: its message, case and link token, today, and her ledger."""

    message_id: int
    case_id: int
    token: str
    today: date
    ledger: Ledger


@pytest.fixture
def today(settings: Settings) -> date:
    return business_today(settings)


@pytest.fixture
def reminder(engine: Engine, settings: Settings, tmp_path: Path, today: date) -> Reminder:
    due = today - timedelta(days=10)
    ledger = Ledger()
    ledger.customer("ANNA", locale="fr", name="Anna Bertin & <Fils>")
    ledger.history("ANNA", due)
    ledger.invoice("INV-31", "ANNA", due - timedelta(days=3), amount="1234.50", number="F-0031")
    ledger.invoice("INV-42", "ANNA", due, amount="250.00", number="F-0042")
    ledger.load(engine, tmp_path / "ledger", settings)
    with open_run(settings) as ctx:
        run_day(ctx, today)  # sent to the test Maildir, as customers get it
    ledger.payment("PAY-42", "INV-42", today, amount="250.00")  # paid after the reminder
    ledger.load(engine, tmp_path / "ledger", settings)
    with engine.connect() as conn:
        message = conn.execute(select(MESSAGES.c.id, MESSAGES.c.case_id)).one()
    token = signer(settings).sign(message.id, "ANNA", today + timedelta(days=60))
    return Reminder(message.id, message.case_id, token, today, ledger)


def client_for(settings: Settings, today: date, policy: Policy | None = None) -> TestClient:
    return TestClient(create_app(settings, policy, today=lambda: today), follow_redirects=False)


@pytest.fixture
def client(settings: Settings, reminder: Reminder) -> Any:
    with client_for(settings, reminder.today) as client:
        yield client


def csrf_of(html: str) -> str:
    return re.search(r'name="csrf" value="([^"]+)"', html).group(1)  # type: ignore[union-attr]


def post(client: TestClient, token: str, intent: str, **fields: Any) -> Any:
    csrf = fields.pop("csrf", None)
    if csrf is None:
        csrf = csrf_of(client.get(f"/r/{token}").text)
    data = {"csrf": csrf, "intent": intent, "invoices": ["INV-31"]} | fields
    return client.post(f"/r/{token}", data={k: v for k, v in data.items() if v is not None})


def counts(engine: Engine) -> dict[str, int]:
    with engine.connect() as conn:
        return {
            model.__tablename__: conn.execute(select(func.count()).select_from(model)).scalar_one()
            for model in WRITES
        }


def responses(engine: Engine, case_id: int) -> list[dict[str, Any]]:
    with engine.connect() as conn:
        details = conn.execute(
            select(EVENTS.c.detail).where(
                EVENTS.c.case_id == case_id, EVENTS.c.kind == "customer_response"
            )
        ).scalars()
        return [json.loads(detail) for detail in details]


def field_error(html: str, field_id: str) -> str:
    """The text of the error shown next to the field with that id."""
    found = re.search(rf'<p class="field-error" id="{field_id}-error">([^<]*)</p>', html)
    assert found, f"no error beside {field_id}"
    return html_module.unescape(found.group(1))


# --- what the customer sees ---------------------------------------------------------------


def test_the_page_shows_the_messages_invoices_today_in_the_customers_language(
    client: TestClient, reminder: Reminder
) -> None:
    response = client.get(f"/r/{reminder.token}")

    assert response.status_code == 200
    html = response.text
    assert '<html lang="fr">' in html and "Vos factures" in html
    assert "Anna Bertin &amp; &lt;Fils&gt;" in html  # the name from the ledger, escaped
    assert "Northwind Supplies" in html  # the sender's company, from the policy
    rows = re.findall(r"<tr(?: class=\"settled\")?>(.*?)</tr>", html, re.S)[1:]
    f31, f42 = rows  # oldest due first
    assert "F-0031" in f31 and OWED in f31 and f'href="{PAY_URL}"' in f31
    assert "F-0042" in f42 and "Payée" in f42 and "href=" not in f42  # paid: no link
    assert 'value="INV-42"' not in html  # nor offered in any answer
    assert re.search(rf"Reste à payer</span> <strong>{OWED}</strong>", html)
    for intent in ("already_paid", "payment_failed", "order_problem", "need_time", "unsubscribe"):
        assert f'<details class="answer" id="{intent}"' in html
    assert "<script" not in html


def test_every_response_carries_the_security_headers_and_the_style_matches_its_hash(
    client: TestClient, reminder: Reminder
) -> None:
    robots = client.get("/robots.txt")  # no search engine indexes customers' pages
    assert robots.text == "User-agent: *\nDisallow: /\n"
    assert robots.headers["x-robots-tag"] == "noindex, nofollow"
    for response in (
        client.get(f"/r/{reminder.token}"),
        client.get("/r/not-a-token"),
        client.get("/nowhere"),
        client.put(f"/r/{reminder.token}"),
    ):
        csp = dict(
            part.strip().split(" ", 1)
            for part in response.headers["content-security-policy"].split(";")
        )
        assert csp["default-src"] == "'none'" and csp["frame-ancestors"] == "'none'"
        assert csp["form-action"] == "'self'" and "script-src" not in csp
        assert response.headers["x-content-type-options"] == "nosniff"
        assert response.headers["referrer-policy"] == "no-referrer"
        assert response.headers["cache-control"] == "no-store"
        style = re.search(r"<style>(.*?)</style>", response.text, re.S).group(1)  # type: ignore[union-attr]
        digest = base64.b64encode(hashlib.sha256(style.encode()).digest()).decode()
        assert csp["style-src"] == f"'sha256-{digest}'"
        assert 'style="' not in response.text  # inline style attributes would be blocked


def test_when_everything_is_paid_the_page_says_so_and_offers_only_to_stop_emails(
    engine: Engine, settings: Settings, reminder: Reminder, tmp_path: Path
) -> None:
    reminder.ledger.payment("PAY-31", "INV-31", reminder.today, amount="1234.50")
    reminder.ledger.load(engine, tmp_path / "ledger", settings)
    with client_for(settings, reminder.today) as client:
        html = client.get(f"/r/{reminder.token}").text
    assert "Toutes les factures de ce message sont payées." in html
    assert 'href="https://pay.' not in html
    assert re.findall(r'<details class="answer" id="(\w+)"', html) == ["unsubscribe"]


def test_while_the_preferred_gateway_is_down_the_page_offers_the_backup_and_says_so(
    engine: Engine, client: TestClient, reminder: Reminder
) -> None:
    with engine.begin() as conn:
        conn.execute(
            insert(OutageWindow.__table__).values(
                gateway="stripe", started_on=reminder.today - timedelta(days=1), attempts=40,
                failures=30, failure_rate=0.75, baseline_rate=0.02,
            )
        )  # fmt: skip

    html = html_module.unescape(client.get(f"/r/{reminder.token}").text)

    assert 'href="https://pay-backup.example.com/invoice/INV-31"' in html
    assert PAY_URL not in html
    assert (
        "Notre service de paiement habituel est momentanément indisponible : les liens"
        " ci-dessous vous dirigent donc vers Adyen."
    ) in html.replace(NBSP, " ")


# --- the links a stranger might try --------------------------------------------------------


def test_a_link_we_did_not_sign_gets_the_same_404_naming_nobody(
    client: TestClient, settings: Settings, reminder: Reminder
) -> None:
    token = reminder.token
    payload, signature = token.rsplit(".", 1)
    claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    forged = base64.urlsafe_b64encode(json.dumps([claims[0], "BERT", claims[2]]).encode())
    tampered = forged.decode().rstrip("=") + "." + signature  # ANNA's signature, BERT's claims
    bad_signature = token[:-3] + ("AAA" if token[-3:] != "AAA" else "BBB")
    stranger = LinkSigner(["a key that is not ours, long enough"]).sign(
        reminder.message_id, "ANNA", reminder.today + timedelta(days=60)
    )
    no_such_message = signer(settings).sign(9999, "ANNA", reminder.today + timedelta(days=60))
    someone_else = signer(settings).sign(reminder.message_id, "BERT", reminder.today)
    pages = []
    for bad in ("abc", "x" * 600, tampered, bad_signature, stranger, no_such_message, someone_else):
        response = client.get(f"/r/{bad}", headers={"accept-language": "de-DE,de;q=0.9"})
        assert response.status_code == 404, bad
        pages.append(response.text)
        post_response = client.post(f"/r/{bad}", data={"intent": "unsubscribe"})
        assert post_response.status_code == 404
    assert len(set(pages)) == 1  # nothing tells one bad link from another
    assert "Dieser Link ist ungültig" in pages[0]
    for secret in ("ANNA", "Anna", "F-0031", "1234", "INV-"):
        assert secret not in pages[0]


def test_an_expired_link_says_so_and_how_to_reach_the_sender(
    client: TestClient, settings: Settings, reminder: Reminder
) -> None:
    expired = signer(settings).sign(reminder.message_id, "ANNA", reminder.today - timedelta(1))

    response = client.get(f"/r/{expired}")

    assert response.status_code == 410
    assert "Ce lien a expiré" in response.text  # in ANNA's language
    assert "Claire Martin" in response.text and "Northwind Supplies" in response.text
    assert 'href="mailto:billing@example.com"' in response.text
    assert "F-0031" not in response.text and "Anna" not in response.text
    assert client.post(f"/r/{expired}", data={"intent": "payment_failed"}).status_code == 410


# --- answers --------------------------------------------------------------------------------


def test_each_answer_does_what_it_says_and_confirms_in_the_customers_language(
    engine: Engine, client: TestClient, reminder: Reminder
) -> None:
    token, today = reminder.token, reminder.today
    promised = today + timedelta(days=10)
    answers = [
        ("already_paid", {"paid_on": str(today), "amount": "1 234,50", "reference": "VIR 88"}),
        ("payment_failed", {}),
        ("need_time", {"promise_date": promised.isoformat(), "amount": "500"}),
        ("order_problem", {"reason": "damaged", "text": "Carton abîmé."}),
        ("unsubscribe", {"invoices": None}),
    ]  # fmt: skip
    confirmations = {}
    for intent, fields in answers:
        response = post(client, token, intent, **fields)
        assert response.status_code == 303, (intent, response.text)
        assert response.headers["location"] == f"{token}?done={intent}"
        confirmation = client.get(f"/r/{token}", params={"done": intent})
        assert confirmation.status_code == 200
        confirmations[intent] = html_module.unescape(confirmation.text)

    recorded = responses(engine, reminder.case_id)
    assert [event["intent"] for event in recorded] == [intent for intent, _ in answers]
    assert recorded[0]["fields"] == {
        "paid_on": today.isoformat(), "amount": "1234.50", "currency": "EUR", "reference": "VIR 88",
    }  # fmt: skip
    assert all(event["source"] == "page" for event in recorded)
    assert all(event["message_id"] == reminder.message_id for event in recorded)
    with engine.connect() as conn:
        claim = conn.execute(select(ClaimedPayment.__table__)).mappings().one()
        promise = conn.execute(select(Promise.__table__)).mappings().one()
        dispute = conn.execute(select(Dispute.__table__)).mappings().one()
        block = conn.execute(select(ContactBlock.__table__)).mappings().one()
    assert (claim["invoice_id"], claim["reference"]) == ("INV-31", "VIR 88")
    assert (promise["promised_on"], promise["amount"]) == (promised, Decimal("500"))
    assert dispute["invoice_id"] == "INV-31" and "damaged" in dispute["reason"]
    assert (block["scope"], block["value"], block["reason"]) == ("customer", "ANNA", "opted_out")

    assert "pendant 5 jours ouvrés" in confirmations["already_paid"]
    assert f'href="{PAY_URL}"' in confirmations["payment_failed"]
    assert "d'ici le " in confirmations["need_time"]
    assert str(promised.year) in confirmations["need_time"]
    assert "transmis votre message à notre équipe" in confirmations["order_problem"]
    assert "Vous ne recevrez plus d'e-mails" in confirmations["unsubscribe"]


def test_the_same_answer_sent_twice_is_recorded_once(
    engine: Engine, client: TestClient, reminder: Reminder
) -> None:
    first = post(client, reminder.token, "payment_failed")
    second = post(client, reminder.token, "payment_failed")

    assert first.status_code == second.status_code == 303
    assert len(responses(engine, reminder.case_id)) == 1
    assert counts(engine)["customer_answers"] == 1


def test_forms_without_the_links_csrf_token_are_refused(
    engine: Engine, client: TestClient, settings: Settings, reminder: Reminder
) -> None:
    other_link = signer(settings).sign(reminder.message_id, "ANNA", reminder.today)
    others_csrf = csrf_of(client.get(f"/r/{other_link}").text)
    before = counts(engine)
    for csrf in ("", "forged", others_csrf, csrf_of(client.get(f"/r/{reminder.token}").text)[:-1]):
        response = post(client, reminder.token, "unsubscribe", csrf=csrf)
        assert response.status_code == 403, csrf
        assert "Ce formulaire n'a pas pu être accepté" in html_module.unescape(response.text)
    missing = client.post(f"/r/{reminder.token}", data={"intent": "unsubscribe"})
    assert missing.status_code == 403
    assert counts(engine) == before


def test_bad_fields_come_back_beside_the_field_with_the_input_kept(
    engine: Engine, client: TestClient, reminder: Reminder
) -> None:
    today, token = reminder.today, reminder.token
    too_far = today + timedelta(days=31)
    cases = [
        ("need_time", {"promise_date": (today - timedelta(days=1)).isoformat()},
         "need_time-promise_date", "Choisissez aujourd'hui ou une date ultérieure."),
        ("need_time", {"promise_date": too_far.isoformat()},
         "need_time-promise_date", "Nous pouvons accepter une date jusqu'au "),
        ("need_time", {"promise_date": "31/12/2026"},
         "need_time-promise_date", f"Saisissez une date au format {today.isoformat()}."),
        ("need_time", {"promise_date": today.isoformat(), "amount": "2 000"},
         "need_time-amount", f"C'est plus que les {OWED} restant à payer."),
        ("already_paid", {"amount": "12,3,4"}, "already_paid-amount",
         "Saisissez un montant, par exemple 1234,50."),
        ("already_paid", {"paid_on": (today + timedelta(days=1)).isoformat()},
         "already_paid-paid_on", "La date du paiement ne peut pas être dans le futur."),
        ("already_paid", {"reference": "R" * 101}, "already_paid-reference",
         "100 caractères au maximum (ici 101)."),
        ("order_problem", {"reason": "bored"}, "order_problem-reason", "Choisissez le problème."),
        ("payment_failed", {"invoices": ["INV-42"]}, "payment_failed-invoices",
         "Choisissez parmi les factures de ce message."),
        ("payment_failed", {"invoices": None}, "payment_failed-invoices",
         "Choisissez au moins une facture."),
    ]  # fmt: skip
    before = counts(engine)
    for intent, fields, field_id, error in cases:
        response = post(client, token, intent, **fields)
        assert response.status_code == 422, (intent, fields)
        assert field_error(response.text, field_id).startswith(error), field_error(
            response.text, field_id
        )
        assert f'<details class="answer" id="{intent}" open>' in response.text
        for value in fields.values():
            if isinstance(value, str) and value != "bored":
                assert f'value="{value}"' in response.text  # kept as typed
    assert counts(engine) == before
    latest = format_date(today + timedelta(days=30), format="long", locale="fr")
    assert (
        field_error(
            post(client, token, "need_time", promise_date=too_far.isoformat()).text,
            "need_time-promise_date",
        )
        == f"Nous pouvons accepter une date jusqu'au {latest}. Pour un délai plus long, "
        "écrivez-nous."
    )


def test_over_long_and_hostile_text_is_refused_or_kept_harmless(
    engine: Engine, client: TestClient, reminder: Reminder
) -> None:
    hostile = '<script>alert("x")</script> "quoted" & done'
    long = post(client, reminder.token, "order_problem", reason="other", text=hostile + "x" * 2000)
    assert long.status_code == 422
    assert field_error(long.text, "order_problem-text").startswith("2000 caractères au maximum")
    assert "<script>alert" not in long.text
    assert (
        "&lt;script&gt;alert(&#34;x&#34;)&lt;/script&gt; &#34;quoted&#34; &amp; done" in long.text
    )
    assert counts(engine)["customer_answers"] == 0

    stored = post(client, reminder.token, "order_problem", reason="other", text=hostile + "\x00")
    assert stored.status_code == 303
    [event] = responses(engine, reminder.case_id)
    assert event["fields"]["text"] == hostile  # stored as typed, less the NUL byte


def test_answers_past_the_hourly_limit_get_429(
    engine: Engine, settings: Settings, policy: Policy, reminder: Reminder
) -> None:
    strict = policy.model_copy(update={"feedback": Feedback(answers_per_link_per_hour=2)})
    with client_for(settings, reminder.today, strict) as client:
        assert post(client, reminder.token, "payment_failed").status_code == 303
        assert post(client, reminder.token, "order_problem", reason="other").status_code == 303
        third = post(client, reminder.token, "unsubscribe", invoices=None)
        one_click = client.post(
            f"/r/{reminder.token}/unsubscribe", data={"List-Unsubscribe": "One-Click"}
        )
    assert third.status_code == 429 and "Trop de réponses" in third.text
    assert one_click.status_code == 429
    assert counts(engine)["customer_answers"] == 2 and counts(engine)["contact_blocks"] == 0


def test_a_body_too_large_or_an_unknown_answer_is_refused(
    engine: Engine, client: TestClient, reminder: Reminder
) -> None:
    csrf = csrf_of(client.get(f"/r/{reminder.token}").text)
    huge = client.post(
        f"/r/{reminder.token}", data={"csrf": csrf, "intent": "payment_failed", "x": "y" * 70_000}
    )
    unknown = post(client, reminder.token, "sue_you")
    assert huge.status_code == 413 and unknown.status_code == 400
    assert counts(engine)["customer_answers"] == 0


# --- RFC 8058 one-click ---------------------------------------------------------------------


def test_one_click_opts_out_with_exactly_list_unsubscribe_one_click(
    engine: Engine, client: TestClient, settings: Settings, reminder: Reminder
) -> None:
    url = f"/r/{reminder.token}/unsubscribe"
    for wrong in (
        {},
        {"List-Unsubscribe": "Yes"},
        {"List-Unsubscribe": "One-Click", "extra": "1"},
        {"list-unsubscribe": "one-click"},
    ):
        assert client.post(url, data=wrong).status_code == 400, wrong
    opened = client.get(url)  # a person, or a link scanner: never an opt-out
    assert opened.status_code == 303
    assert opened.headers["location"] == f"../{reminder.token}?answer=unsubscribe#unsubscribe"
    assert (
        '<details class="answer" id="unsubscribe" open>'
        in client.get(f"/r/{reminder.token}", params={"answer": "unsubscribe"}).text
    )
    assert counts(engine)["contact_blocks"] == 0

    multipart = client.post(url, files={"List-Unsubscribe": (None, "One-Click")})
    assert multipart.status_code == 200
    again = client.post(url, data={"List-Unsubscribe": "One-Click"})
    assert again.status_code == 200
    [event] = responses(engine, reminder.case_id)
    assert (event["intent"], event["source"]) == ("unsubscribe", "one_click")
    with engine.connect() as conn:
        assert conn.execute(select(ContactBlock.__table__.c.value)).scalars().all() == ["ANNA"]


def test_one_click_still_works_once_the_link_has_expired(
    engine: Engine, client: TestClient, settings: Settings, reminder: Reminder
) -> None:
    expired = signer(settings).sign(reminder.message_id, "ANNA", reminder.today - timedelta(9))
    response = client.post(f"/r/{expired}/unsubscribe", data={"List-Unsubscribe": "One-Click"})
    assert response.status_code == 200
    assert counts(engine)["contact_blocks"] == 1
    assert (
        client.post("/r/forged/unsubscribe", data={"List-Unsubscribe": "One-Click"}).status_code
        == 404
    )


# --- serving --------------------------------------------------------------------------------


def test_serve_refuses_to_start_without_a_link_secret(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("COLLECTFLOW_LINK_SECRET")
    get_settings.cache_clear()

    result = CliRunner().invoke(cli, ["serve", "--port", "8999"])

    assert result.exit_code == 2
    assert "COLLECTFLOW_LINK_SECRET is not set" in result.stderr
    demo_key = settings.outbox.resolve().parent / ".collectflow-demo-link-secret"
    demo_key.write_text("a-key-the-demo-made-earlier-0123\n")
    after_demo = CliRunner().invoke(cli, ["serve", "--port", "8999"])
    assert after_demo.exit_code == 2
    unwrapped = "".join(after_demo.stderr.split())  # the console wraps long lines
    assert f"COLLECTFLOW_LINK_SECRET=$(cat{demo_key})collectflowserve" in unwrapped


def test_access_logs_never_show_a_token() -> None:
    import logging

    record = logging.LogRecord(
        "uvicorn.access", logging.INFO, "", 0, '%s - "%s %s HTTP/%s" %d',
        ("127.0.0.1:5000", "GET", "/r/WzEsIkFOTkEiXQ.abc?done=x", "1.1", 200), None,
    )  # fmt: skip
    RedactTokens().filter(record)
    assert "WzEs" not in record.getMessage() and "/r/…?done=x" in record.getMessage()


# --- reading what customers type ---------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "locale", "decimals", "expected"),
    [
        ("1,234.50", "en", 2, "1234.50"),
        ("1234.5", "en", 2, "1234.5"),
        ("1,234", "en", 2, "1234"),
        ("1 234,50", "fr", 2, "1234.50"),
        ("1\u202f234,50", "fr", 2, "1234.50"),
        ("1234.50", "fr", 2, "1234.50"),
        ("1.234,50", "de", 2, "1234.50"),
        ("1.234", "de", 2, "1234"),
        ("12.5", "de", 2, "12.5"),
        ("1'234.50", "de_CH", 2, "1234.50"),
        ("1,234,567", "en", 0, "1234567"),
    ],
)
def test_amounts_are_read_the_way_customers_write_them(
    raw: str, locale: str, decimals: int, expected: str
) -> None:
    assert parse_amount(raw, Locale.parse(locale), decimals) == Decimal(expected)


@pytest.mark.parametrize(
    ("raw", "locale", "decimals"),
    [
        ("", "en", 2), ("abc", "en", 2), ("1e5", "en", 2), ("-5", "en", 2), ("NaN", "en", 2),
        ("Infinity", "en", 2), ("\u0661\u0662\u0663", "en", 2), ("1,2,3", "en", 2),
        ("12.345,6.7", "de", 2), ("1.234", "en", 2), ("1,234", "fr", 2), ("12.5", "en", 0),
        ("1.23456", "en", 2), ("9" * 13, "en", 2),
    ],
)  # fmt: skip
def test_anything_else_is_not_an_amount(raw: str, locale: str, decimals: int) -> None:
    with pytest.raises(ValueError):
        parse_amount(raw, Locale.parse(locale), decimals)


def test_free_text_loses_control_characters_and_keeps_the_rest() -> None:
    typed = " Line one\r\nline\ttwo\x00\x1b[31m\u202eevil\u200b <b>&</b> "
    assert clean_text(typed) == "Line one\nline\ttwo[31mevil <b>&</b>"
    assert clean_text("REF\r\n42", one_line=True) == "REF 42"


def test_every_language_has_every_string_with_the_same_placeholders() -> None:
    def placeholders(text: str) -> set[str]:
        return {name for _, name, _, _ in Formatter().parse(text) if name}

    english = TEXTS["en"]
    for language in ("fr", "de"):
        assert TEXTS[language].keys() == english.keys(), language
        for key, text in TEXTS[language].items():
            assert placeholders(text) == placeholders(english[key]), (language, key)
            assert "<" not in text and ">" not in text  # plain text: the page escapes it


def test_the_page_speaks_the_customers_language_or_the_browsers_or_english() -> None:
    assert [language_of(tag) for tag in ("fr_CA", "de-AT", "en", "es", "", "x!y")] == [
        "fr", "de", "en", "en", "en", "en",
    ]  # fmt: skip
    assert language_from_header("de-CH,de;q=0.9,en;q=0.8") == "de"
    assert language_from_header("es, fr;q=0.5, en;q=0.1") == "fr"
    assert language_from_header("fr;q=0, en") == "en"
    assert language_from_header("q=;;,,;") == "en" and language_from_header(None) == "en"
