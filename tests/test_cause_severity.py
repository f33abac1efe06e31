"""A cause's message still says the stage it stands in for: a failed card at the final stage
is a final notice about a failed card, in every language (docs/decisions.md, issue 15
continued). Rendered through the real catalog, with the sample contexts at each stage."""

from __future__ import annotations

from datetime import date

import pytest

from collectflow.flows.config import PROJECT_ROOT
from collectflow.flows.policy.document import Sender
from collectflow.flows.steps.render import INTERNAL_TEMPLATES, TemplateCatalog
from collectflow.flows.steps.render.context import build_context, sample_contexts

TEMPLATES = PROJECT_ROOT / "templates"
CAUSE_TEMPLATES = ("payment_failed", "payment_retry", "outage_apology")
# What the ladder's own subjects and final notices say, written here by hand per language.
FINAL = {
    "en": ("Final notice \N{EN DASH} ", "collections team"),
    "fr": ("Dernier avis \N{EN DASH} ", "service de recouvrement"),
    "de": ("Letzte Mahnung \N{EN DASH} ", "Inkasso-Team"),
}
FIRM = {
    "en": "Overdue payment, action required \N{EN DASH} ",
    "fr": "Retard de paiement, action requise \N{EN DASH} ",
    "de": "Zahlungsverzug, bitte handeln Sie jetzt \N{EN DASH} ",
}


@pytest.fixture(scope="module")
def catalog() -> TemplateCatalog:
    names = {path.name.removesuffix(".subject.j2") for path in TEMPLATES.glob("en/*.subject.j2")}
    return TemplateCatalog(TEMPLATES, names - INTERNAL_TEMPLATES)


def at_stage(catalog: TemplateCatalog, template: str, language: str, stage: str) -> tuple:
    context = sample_contexts(language)[0] | {"stage": stage}
    message = catalog.render(template, language, context)
    return message.subject, " ".join(message.text.split()), " ".join(message.html.split())


@pytest.mark.parametrize("language", ["en", "fr", "de"])
@pytest.mark.parametrize("template", CAUSE_TEMPLATES)
def test_a_cause_message_shows_the_severity_of_its_stage(
    catalog: TemplateCatalog, template: str, language: str
) -> None:
    gentle, firm, final = (at_stage(catalog, template, language, s) for s in STAGES)
    label, next_step = FINAL[language]

    assert len({gentle[0], firm[0], final[0]}) == 3
    assert final[0].startswith(label) and firm[0].startswith(FIRM[language])
    assert not gentle[0].startswith((label, FIRM[language]))
    assert firm[0].endswith(gentle[0]) and final[0].endswith(gentle[0])  # same cause after it
    assert next_step in final[1] and next_step in final[2]
    assert next_step not in gentle[1] and next_step not in firm[1]
    assert len(firm[1]) > len(gentle[1])  # firm says the payment is now overdue


STAGES = ("gentle", "firm", "final")


@pytest.mark.parametrize(
    ("language", "signed"),
    [("en", "Accounts Receivable"), ("fr", "Service comptabilité clients"),
     ("de", "Debitorenbuchhaltung")],
)  # fmt: skip
def test_a_policy_without_a_sender_signs_in_the_customers_language(
    catalog: TemplateCatalog, language: str, signed: str
) -> None:
    context = sample_contexts(language)[0]
    sender = Sender(company="Sample Co")
    context = build_context(
        {"stage": "gentle", "case_id": 1}, [], context["customer"], sender, date(2026, 4, 1),
        language, answer_url=context["answer_url"],
    )  # fmt: skip
    message = catalog.render("gentle", language, context)
    assert signed in message.text
    assert Sender(name="Ada Lovelace").name_in(language) == "Ada Lovelace"
    assert Sender(name="Ada", names={"fr": "Adèle"}).name_in("fr") == "Adèle"
