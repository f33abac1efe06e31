"""Render: planned messages become subject, text and HTML in the customer's language."""

from __future__ import annotations

import shutil
from datetime import date
from decimal import Decimal
from email import policy as email_policy
from email.parser import Parser
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Connection, Engine, insert

from collectflow.flows.config import PROJECT_ROOT, get_settings
from collectflow.flows.errors import TemplateError
from collectflow.flows.feedback.message_links import message_links
from collectflow.flows.mail import mime_body
from collectflow.flows.policy import Policy, Sender
from collectflow.flows.steps.render import (
    INTERNAL_TEMPLATES,
    TemplateCatalog,
    build_context,
    load_catalog,
    render_planned,
)
from collectflow.flows.steps.render.context import SAMPLE_ANSWER_URL
from collectflow.models import Case, Customer, Invoice, Message, MessageItem
from tests.outbox import with_bodies

TEMPLATES = PROJECT_ROOT / "templates"
AS_OF = date(2025, 3, 31)
NNBSP, NBSP = "\u202f", "\xa0"  # what Babel puts in French and German amounts
DASH = "\u2013"  # the en dash in subjects

CUSTOMERS = Customer.__table__
INVOICES = Invoice.__table__
CASES = Case.__table__
MESSAGES = Message.__table__
ITEMS = MessageItem.__table__


@pytest.fixture(scope="module")
def catalog(policy: Policy) -> TemplateCatalog:
    """The shipped templates for the shipped policy, validated as at startup."""
    return load_catalog(TEMPLATES, policy)


def item(
    invoice_id: str = "INV-1",
    owed: str = "1234.56",
    currency: str = "EUR",
    due_on: date = date(2025, 3, 1),
    number: str | None = "F-2025-001",
) -> dict[str, Any]:
    return {
        "invoice_id": invoice_id,
        "number": number,
        "issued_on": date(2025, 2, 1),
        "due_on": due_on,
        "amount": Decimal(owed),
        "owed": Decimal(owed),
        "currency": currency,
    }


def context(
    locale: str, name: str = "Acme SARL", items: list[dict[str, Any]] | None = None
) -> dict[str, Any]:
    customer = {"customer_id": "C1", "name": name, "email": "ap@acme.example"}
    sender = Sender(name="Claire Martin", title="Accounts Receivable", company="Northwind")
    message = {"stage": "gentle", "case_id": 7}
    return build_context(
        message, items or [item()], customer, sender, AS_OF, locale, answer_url=SAMPLE_ANSWER_URL
    )


def copy_templates(tmp_path: Path) -> Path:
    directory = tmp_path / "templates"
    shutil.copytree(TEMPLATES, directory)
    return directory


def edit(path: Path, old: str, new: str) -> None:
    text = path.read_text(encoding="utf-8")
    assert old in text
    path.write_text(text.replace(old, new, 1), encoding="utf-8")


# The catalog: checked at startup


def test_shipped_templates_validate_for_every_template_the_policy_names(policy: Policy) -> None:
    TemplateCatalog(TEMPLATES, policy.templates() | INTERNAL_TEMPLATES).validate()


def test_a_misspelled_variable_fails_validation_naming_template_locale_part_and_variable(
    tmp_path: Path, policy: Policy
) -> None:
    directory = copy_templates(tmp_path)
    edit(directory / "fr" / "gentle.txt.j2", "{{ customer.name }}", "{{ customer.nmae }}")
    catalog = TemplateCatalog(directory, policy.templates())

    with pytest.raises(TemplateError) as error:
        catalog.validate()

    message = str(error.value)
    assert "'gentle'" in message and "'fr'" in message and "part txt" in message
    assert "nmae" in message
    assert "gentle.txt.j2:" in message  # file and line, for the operator to fix


def test_an_unknown_variable_in_a_branch_samples_never_take_still_fails_validation(
    tmp_path: Path, policy: Policy
) -> None:
    directory = copy_templates(tmp_path)
    edit(
        directory / "de" / "firm.html.j2",
        "{% block content %}",
        "{% block content %}{% if max_days_overdue > 9999 %}{{ custmer }}{% endif %}",
    )

    with pytest.raises(TemplateError, match=r"'firm', locale 'de', part html.*custmer"):
        TemplateCatalog(directory, policy.templates()).validate()


def test_a_template_without_an_english_version_is_refused(tmp_path: Path) -> None:
    directory = copy_templates(tmp_path)
    (directory / "en" / "firm.html.j2").unlink()

    with pytest.raises(TemplateError, match=r"'firm' is missing.*firm\.html\.j2"):
        TemplateCatalog(directory, {"gentle", "firm"}).validate()


def test_a_locale_with_only_some_parts_of_a_template_is_refused(tmp_path: Path) -> None:
    directory = copy_templates(tmp_path)
    (directory / "de" / "gentle.subject.j2").unlink()

    with pytest.raises(TemplateError, match=r"de: template 'gentle' is incomplete.*subject"):
        TemplateCatalog(directory, {"gentle"}).validate()


def test_templates_cannot_reach_python_internals(tmp_path: Path) -> None:
    directory = copy_templates(tmp_path)
    edit(directory / "en" / "gentle.txt.j2", "{{ customer.name }}", "{{ customer.__class__ }}")

    with pytest.raises(TemplateError, match="__class__"):
        TemplateCatalog(directory, {"gentle"}).validate()


# Locales: formatting and fallback


def test_french_amounts_and_dates_are_formatted_the_french_way(
    catalog: TemplateCatalog,
) -> None:
    ctx = context("fr", items=[item(), item("INV-2", "50", "USD", date(2025, 4, 3), None)])

    assert ctx["invoices"][0]["owed"] == f"1{NNBSP}234,56{NBSP}€"
    assert ctx["invoices"][0]["due_on"] == "1 mars 2025"
    assert ctx["invoices"][0]["days_overdue"] == 30
    assert ctx["invoices"][1]["number"] == "INV-2"  # no number: the id stands in
    assert ctx["invoices"][1]["days_overdue"] == -3  # not yet due
    assert ctx["totals"] == [f"1{NNBSP}234,56{NBSP}€", f"50,00{NBSP}$US"]
    assert ctx["total"] == f"1{NNBSP}234,56{NBSP}€ + 50,00{NBSP}$US"
    assert ctx["today"] == "31 mars 2025"

    text = catalog.render("gentle", "fr", ctx).text
    assert text.startswith("Bonjour Acme SARL,\n")
    assert (
        f"- Facture F-2025-001 : 1{NNBSP}234,56{NBSP}€, échéance le 1 mars 2025 "
        "(30 jours de retard)\n  Payer en ligne : https://pay.example.com/INV-1\n"
    ) in text
    assert f"Montant restant dû au 31 mars 2025 : 1{NNBSP}234,56{NBSP}€ + 50,00{NBSP}$US" in text


def test_german_amounts_and_dates_are_formatted_the_german_way(
    catalog: TemplateCatalog,
) -> None:
    ctx = context("de")

    assert ctx["total"] == f"1.234,56{NBSP}€"
    assert ctx["invoices"][0]["due_on"] == "1. März 2025"
    text = catalog.render("final", "de", ctx).text
    assert text.startswith("Guten Tag Acme SARL,\n")
    assert f"Rechnung F-2025-001: 1.234,56{NBSP}€, fällig am 1. März 2025 (30 Tage" in text
    assert "Inkasso" in text
    assert text.rstrip().endswith("Claire Martin\nAccounts Receivable\nNorthwind")


def test_an_unknown_locale_falls_back_to_english_templates_and_formats(
    catalog: TemplateCatalog,
) -> None:
    ctx = context("xx")

    assert catalog.locale_for("xx") == "en"
    assert ctx["total"] == "€1,234.56"
    assert ctx["invoices"][0]["due_on"] == "March 1, 2025"
    rendered = catalog.render("gentle", "xx", ctx)
    assert rendered.text.startswith("Dear Acme SARL,\n")
    # the stage first, so the inbox list shows it (issue 15)
    assert rendered.subject == (
        f"Payment reminder {DASH} Northwind {DASH} invoice F-2025-001 for Acme SARL (ref. 7)"
    )


def test_a_regional_locale_uses_its_language_templates(catalog: TemplateCatalog) -> None:
    assert catalog.locale_for("fr_CA") == "fr"
    assert catalog.locale_for("fr-CA") == "fr"
    assert catalog.locale_for("de_AT") == "de"
    assert catalog.render("gentle", "fr_CA", context("fr_CA")).text.startswith("Bonjour")


def test_internal_messages_use_the_english_templates_whatever_the_locale(
    catalog: TemplateCatalog,
) -> None:
    assert catalog.locale_for("fr", "escalation") == "en"
    assert catalog.render("escalation", "fr", context("en")).subject.startswith("Escalation:")


# Safety: escaping and header injection


def test_html_escapes_what_the_customer_name_holds(catalog: TemplateCatalog) -> None:
    rendered = catalog.render("gentle", "en", context("en", name="<script>alert(1)</script>"))

    assert "<script>" not in rendered.html
    assert "Dear &lt;script&gt;alert(1)&lt;/script&gt;," in rendered.html
    assert "Dear <script>alert(1)</script>," in rendered.text  # plain text is not HTML


def test_a_name_with_line_breaks_cannot_break_the_subject_into_headers(
    catalog: TemplateCatalog,
) -> None:
    name = "Acme\r\nBcc: everyone@example.com\n"
    for locale in ("en", "fr", "de"):
        subject = catalog.render("firm", locale, context(locale, name=name)).subject
        assert "\r" not in subject and "\n" not in subject
        assert "Acme Bcc: everyone@example.com" in subject


# render_planned on a real database


def add_customer(conn: Connection, customer_id: str, name: str, locale: str) -> None:
    conn.execute(
        insert(CUSTOMERS).values(
            customer_id=customer_id, name=name, email=f"{customer_id}@example.com", locale=locale
        )
    )


def add_invoice(
    conn: Connection, invoice_id: str, customer_id: str, due_on: date, amount: str, **extra: Any
) -> None:
    conn.execute(
        insert(INVOICES).values(
            invoice_id=invoice_id,
            customer_id=customer_id,
            issued_on=date(2025, 1, 15),
            due_on=due_on,
            amount=Decimal(amount),
            currency=extra.pop("currency", "EUR"),
            **extra,
        )
    )


def open_case(conn: Connection, customer_id: str) -> int:
    values = dict(customer_id=customer_id, segment="new", ladder="standard", opened_on=AS_OF)
    return conn.execute(insert(CASES).values(**values)).inserted_primary_key[0]


def add_message(
    conn: Connection,
    case_id: int,
    customer_id: str,
    template: str,
    items: list[tuple[str, str, str]],
    **extra: Any,
) -> int:
    """A message with its items, given as (invoice_id, owed, currency)."""
    values = dict(
        key=f"{case_id}:{template}:{extra.get('kind', 'reminder')}",
        case_id=case_id,
        customer_id=customer_id,
        stage=template,
        stage_index=0,
        template=template,
        to_address=f"{customer_id}@example.com",
        planned_on=AS_OF,
    )
    message_id = conn.execute(insert(MESSAGES).values({**values, **extra})).inserted_primary_key[0]
    rows = [
        dict(message_id=message_id, invoice_id=invoice_id, owed=Decimal(owed), currency=code)
        for invoice_id, owed, code in items
    ]
    conn.execute(insert(ITEMS), rows)
    return message_id


def stored(engine: Engine, message_id: int) -> Any:
    with engine.connect() as conn:
        [message] = with_bodies(conn, MESSAGES.c.id == message_id)
    return message


@pytest.fixture
def ledger(engine: Engine) -> dict[str, int]:
    """A French customer two stages into a case (one reminder sent, the firm one and an
    escalation planned) and a customer whose locale nobody knows, with a pre-due reminder."""
    with engine.begin() as conn:
        add_customer(conn, "C-FR", "Boulangerie <Dupont> & Fils", "fr")
        add_invoice(conn, "INV-1", "C-FR", date(2025, 3, 1), "1234.56", number="F-001")
        add_invoice(conn, "INV-2", "C-FR", date(2025, 3, 20), "80", currency="USD")
        case = open_case(conn, "C-FR")
        owed = [("INV-1", "1000.5", "EUR"), ("INV-2", "80", "USD")]
        ids = {
            "case": case,
            "sent": add_message(
                conn, case, "C-FR", "gentle", owed[:1], status="sent", sent_on=date(2025, 3, 4)
            ),
            "firm": add_message(conn, case, "C-FR", "firm", owed, locale="fr"),
            "escalation": add_message(
                conn, case, "C-FR", "escalation", owed[:1], kind="internal", locale="fr"
            ),
        }
        add_customer(conn, "C-XX", "Nowhere Ltd", "xx")
        add_invoice(conn, "INV-3", "C-XX", date(2025, 4, 3), "10")
        other = open_case(conn, "C-XX")
        ids["pre_due"] = add_message(
            conn, other, "C-XX", "pre_due", [("INV-3", "10", "EUR")], locale="xx"
        )
    return ids


def render_all(engine: Engine, catalog: TemplateCatalog, policy: Policy) -> int:
    with engine.begin() as conn:
        return render_planned(
            conn, catalog, policy, AS_OF, batch_size=2, links=message_links(get_settings())
        )


def test_render_planned_writes_the_reminder_in_the_customers_language(
    engine: Engine, catalog: TemplateCatalog, policy: Policy, ledger: dict[str, int]
) -> None:
    assert render_all(engine, catalog, policy) == 3

    firm = stored(engine, ledger["firm"])
    assert firm.subject == (
        f"Retard de paiement, action requise {DASH} Northwind Supplies {DASH} 2 factures pour "
        f"Boulangerie <Dupont> & Fils (réf. {ledger['case']})"
    )
    assert firm.rendered_at is not None
    assert firm.body_text.startswith("Bonjour Boulangerie <Dupont> & Fils,\n")
    assert "a désormais 30 jours de retard." in firm.body_text
    assert (
        f"- Facture F-001 : 1{NNBSP}000,50{NBSP}€, échéance le 1 mars 2025 (30 jours de retard)\n"
        "  Payer en ligne : https://pay.example.com/invoice/INV-1\n"
        f"- Facture INV-2 : 80,00{NBSP}$US, échéance le 20 mars 2025 (11 jours de retard)\n"
    ) in firm.body_text
    assert f"Montant restant dû au 31 mars 2025 : 1{NNBSP}000,50{NBSP}€ + 80,00{NBSP}$US" in (
        firm.body_text
    )
    # the title in French, from the policy's sender.titles (issue 15)
    assert firm.body_text.endswith(
        "Claire Martin\nService comptabilité clients\nNorthwind Supplies\n"
    )
    assert '<html lang="fr">' in firm.body_html
    assert "Bonjour Boulangerie &lt;Dupont&gt; &amp; Fils," in firm.body_html
    assert 'href="https://pay.example.com/invoice/INV-2"' in firm.body_html


def test_render_planned_stores_the_mime_body_delivery_sends(
    engine: Engine, catalog: TemplateCatalog, policy: Policy, ledger: dict[str, int]
) -> None:
    render_all(engine, catalog, policy)

    firm = stored(engine, ledger["firm"])
    assert firm.body_mime.isascii()
    assert max(len(line) for line in firm.body_mime.splitlines()) <= 76
    email = Parser(policy=email_policy.default).parsestr("To: x@y.org\n" + firm.body_mime)
    assert email.get_content_type() == "multipart/alternative"
    parts = [email.get_body((subtype,)) for subtype in ("plain", "html")]
    assert [(part["Content-Transfer-Encoding"], part.get_content_charset()) for part in parts] == [
        ("quoted-printable", "utf-8")
    ] * 2
    assert "a désormais 30 jours de retard." in parts[0].get_content()
    assert "Bonjour Boulangerie &lt;Dupont&gt; &amp; Fils," in parts[1].get_content()
    # read back and built again, the part is the same: what render stores is mime_body's
    assert firm.body_mime == mime_body(firm.body_text, firm.body_html, firm.key)


def test_render_planned_writes_internal_messages_in_english_with_the_case_story(
    engine: Engine, catalog: TemplateCatalog, policy: Policy, ledger: dict[str, int]
) -> None:
    render_all(engine, catalog, policy)

    escalation = stored(engine, ledger["escalation"])
    assert escalation.subject == (
        "Escalation: Boulangerie <Dupont> & Fils (C-FR) owes €1,000.50, 30 days overdue "
        f"(case {ledger['case']})"
    )
    assert "Reminders sent:\n- gentle on March 4, 2025\n" in escalation.body_text


def test_render_planned_falls_back_to_english_for_an_unknown_locale(
    engine: Engine, catalog: TemplateCatalog, policy: Policy, ledger: dict[str, int]
) -> None:
    render_all(engine, catalog, policy)

    pre_due = stored(engine, ledger["pre_due"])
    assert pre_due.body_text.startswith("Dear Nowhere Ltd,\n")
    assert "- Invoice INV-3: €10.00, due April 3, 2025\n" in pre_due.body_text


def test_render_planned_renders_each_planned_message_once_and_nothing_else(
    engine: Engine, catalog: TemplateCatalog, policy: Policy, ledger: dict[str, int]
) -> None:
    render_all(engine, catalog, policy)
    first = stored(engine, ledger["firm"])

    assert render_all(engine, catalog, policy) == 0
    assert stored(engine, ledger["firm"]) == first
    assert stored(engine, ledger["sent"]).subject is None  # not planned: left alone
