"""Every customer template speaks its language throughout: no English left in French or German.

English is the reference: every word the English templates render is English vocabulary, and a
French or German rendering may contain none of it but the words the languages share, listed
here by hand.
"""

from __future__ import annotations

import html
import re
from datetime import date

import pytest

from collectflow.flows.config import PROJECT_ROOT
from collectflow.flows.policy import load_policy
from collectflow.flows.steps.render import INTERNAL_TEMPLATES, TemplateCatalog
from collectflow.flows.steps.render.context import (
    SAMPLE_ANSWER_URL,
    build_context,
    sample_contexts,
)

TEMPLATES = PROJECT_ROOT / "templates"
CUSTOMER_TEMPLATES = sorted(
    path.name.removesuffix(".subject.j2")
    for path in (TEMPLATES / "en").glob("*.subject.j2")
    if path.name.removesuffix(".subject.j2") not in INTERNAL_TEMPLATES
)
SHARED = {
    "fr": {"a", "action", "conditions", "message", "minute", "moment", "patience", "question",
           "solution", "total", "us"},  # "us": of "$US", how Babel writes US dollars in French
    "de": {"an", "april", "button", "falls", "in", "link", "links", "minute", "online", "ref",
           "team"},
}  # fmt: skip


def words(text: str) -> set[str]:
    text = html.unescape(re.sub(r"<[^>]+>", " ", text))
    text = re.sub(r"https?://\S+", " ", text)
    return {word.lower() for word in re.findall(r"[^\W\d_]+", text)}


def rendered(catalog: TemplateCatalog, template: str, language: str) -> list[str]:
    parts = []
    for context in sample_contexts(language):
        message = catalog.render(template, language, context)
        parts.append("\n".join((message.subject, message.text, message.html)))
    return parts


@pytest.fixture(scope="module")
def catalog() -> TemplateCatalog:
    return TemplateCatalog(TEMPLATES, set(CUSTOMER_TEMPLATES))


@pytest.fixture(scope="module")
def english(catalog: TemplateCatalog) -> set[str]:
    vocabulary: set[str] = set()
    for template in CUSTOMER_TEMPLATES:
        for text in rendered(catalog, template, "en"):
            vocabulary |= words(text)
    return vocabulary


def context_words(language: str) -> set[str]:
    """Names, companies and the like come from the data, not the templates."""
    found: set[str] = set()
    for context in sample_contexts(language):
        found |= words(
            " ".join(map(str, (context["customer"], context["sender"], context["payment"])))
        )
        found |= {
            invoice["invoice_id"].lower().strip("-0123456789") for invoice in context["invoices"]
        }
    return found


@pytest.mark.parametrize("language", ["fr", "de"])
@pytest.mark.parametrize("template", CUSTOMER_TEMPLATES)
def test_no_english_word_in_a_french_or_german_message(
    catalog: TemplateCatalog, english: set[str], template: str, language: str
) -> None:
    allowed = SHARED[language] | context_words(language)
    for text in rendered(catalog, template, language):
        leaked = (words(text) & english) - allowed
        assert not leaked, f"{language}/{template}: English words {sorted(leaked)}"


@pytest.mark.parametrize("language", ["en", "fr", "de"])
@pytest.mark.parametrize("template", CUSTOMER_TEMPLATES)
def test_every_customer_message_invites_an_answer_through_its_link(
    catalog: TemplateCatalog, template: str, language: str
) -> None:
    """The text part carries the answer link as a bare URL on a line of its own (mail clients
    make it clickable), the HTML part as a link; and no message still asks to be disregarded."""
    for context in sample_contexts(language):
        message = catalog.render(template, language, context)
        assert SAMPLE_ANSWER_URL in message.text.splitlines(), f"{language}/{template}: text"
        assert f'<a href="{SAMPLE_ANSWER_URL}"' in message.html, f"{language}/{template}: html"
        assert message.text.count(SAMPLE_ANSWER_URL) == 1
        for one_way in ("disregard", "ne tenez pas compte", "gegenstandslos", "ignorieren"):
            assert one_way not in message.text + message.html, f"{language}/{template}"


def test_the_signature_of_the_shipped_policy_is_in_the_message_language(
    catalog: TemplateCatalog,
) -> None:
    sender = load_policy(PROJECT_ROOT / "policy.yaml").sender
    [sample, _] = sample_contexts("en")
    signatures = {}
    for language in ("en", "fr", "de"):
        context = build_context(
            {"stage": "gentle", "case_id": 19}, [], sample["customer"], sender,
            date(2026, 3, 2), language, answer_url=sample["answer_url"],
        )  # fmt: skip
        signatures[language] = catalog.render("gentle", language, context).text
    assert "Accounts Receivable" in signatures["en"]
    assert "Accounts Receivable" not in signatures["fr"]
    assert "Service comptabilité clients" in signatures["fr"]
    assert "Accounts Receivable" not in signatures["de"]
    assert "Debitorenbuchhaltung" in signatures["de"]
