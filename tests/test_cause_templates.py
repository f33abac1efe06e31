"""The messages a cause sends instead of the ladder's: no blame, no late wording, a retry link.

A customer whose payment failed on our side (or in a gateway outage) did nothing wrong; the
technical-failure and apology templates must say so in every shipped language, whatever the
invoice's age, and never read like a dunning notice.
"""

from __future__ import annotations

import re

import pytest

from collectflow.flows.config import PROJECT_ROOT
from collectflow.flows.policy import Policy
from collectflow.flows.steps.render import TemplateCatalog, load_catalog, sample_contexts

LATE_WORDING = {
    "en": r"overdue|\blate\b|past due|unpaid|not paid|final notice|collection",
    "fr": r"retard|échu|impayé|pas payé|dernier rappel|recouvrement",
    "de": r"überfällig|verspät|verzug|nicht bezahlt|mahnung|inkasso",
}
NO_BLAME = {
    "en": "on our side",
    "fr": "de notre côté",
    "de": "auf unserer Seite",
}


@pytest.fixture(scope="module")
def catalog(policy: Policy) -> TemplateCatalog:
    return load_catalog(PROJECT_ROOT / "templates", policy)


@pytest.mark.parametrize("locale", sorted(LATE_WORDING))
@pytest.mark.parametrize("template", ["payment_retry", "outage_apology"])
def test_a_failure_on_our_side_is_never_worded_as_lateness(
    catalog: TemplateCatalog, policy: Policy, template: str, locale: str
) -> None:
    assert template in {
        policy.diagnosis.templates.payment_failed_technical,
        policy.diagnosis.templates.outage,
    }
    for context in sample_contexts(locale):  # one of them lists an invoice 21 days past due
        rendered = catalog.render(template, locale, context)
        for part in (rendered.subject, rendered.text, rendered.html):
            assert not re.search(LATE_WORDING[locale], part, re.IGNORECASE), (part, locale)
        if template == "payment_retry":
            assert NO_BLAME[locale] in rendered.text
        for item in context["invoices"]:
            assert item["payment_url"] in rendered.text  # a link to retry each invoice


@pytest.mark.parametrize("locale", sorted(LATE_WORDING))
def test_the_ladders_late_notice_does_use_such_wording(
    catalog: TemplateCatalog, locale: str
) -> None:
    """The patterns above do catch dunning language: the firm stage trips them."""
    rendered = catalog.render("firm", locale, sample_contexts(locale)[0])
    assert re.search(LATE_WORDING[locale], rendered.text, re.IGNORECASE)
