"""The template context of a message: every value pre-formatted in its locale with Babel.

Template context (every value pre-formatted in the customer's locale with Babel, so templates
never do arithmetic or formatting):

    customer: {customer_id, name, email}
    stage: str                  # stage name, e.g. "gentle"
    case_id: int
    invoices: list of {invoice_id, number (number, else invoice_id), issued_on, due_on
              (long dates), amount, owed (currency amounts), currency, days_overdue (int,
              <= 0 means not yet due), payment_url (today's pay link: the invoice's own
              from the ledger, else the offered gateway's)}, oldest due first
    payment: {label, fallback}: the gateway the links without a ledger URL use, as
             customers know it (empty when no link uses a named gateway), and whether it
             stands in for the preferred one, down today (flows/ledger/paylinks.py)
    totals: list of formatted totals, one per currency (e.g. ["1 234,56 €", "50,00 $US"])
    total: the totals joined with " + "
    max_days_overdue: int
    sender: {name, title, company}
    today: long date of the run (as_of)
    history: list of {stage, sent_on (long date)}: the reminders sent on the case, oldest
             first; filled for internal messages only (empty for reminders)
    reminded: bool              # an earlier reminder of the case was sent: "despite our
                                # reminder" is true (false when the ladder entered by age)
    answer_url: the message's signed link to the customer page, where the customer says
                they paid, reports a problem or asks for time (flows/feedback/
                message_links.py); absent from internal messages, which go to colleagues,
                so a customer template rendered without one fails instead of linking nowhere

Money and dates are formatted in the message's locale when its templates are in that language
(`fr_CA` gets Canadian French figures with the `fr` templates); when the templates fell back to
another language, or Babel does not know the locale, formatting follows the templates' folder,
so a message never mixes English sentences with foreign number formats.
"""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Mapping, Sequence
from datetime import date, timedelta
from decimal import Decimal
from functools import lru_cache
from typing import Any

from babel import Locale, UnknownLocaleError
from babel.dates import format_date
from babel.numbers import format_currency

from collectflow.flows.ledger.paylinks import PayOffer, pay_link
from collectflow.flows.policy.document import Sender
from collectflow.flows.policy.gateways import Gateway, default_gateway

FALLBACK_LOCALE = "en"
CONTEXT_KEYS = frozenset(
    {
        "customer",
        "stage",
        "case_id",
        "invoices",
        "totals",
        "total",
        "max_days_overdue",
        "sender",
        "today",
        "history",
        "reminded",
        "payment",
        "answer_url",
    }
)


def build_context(
    message: Mapping[str, Any],
    items: Sequence[Mapping[str, Any]],
    customer: Mapping[str, Any],
    sender: Sender,
    as_of: date,
    locale: str,
    history: Sequence[Mapping[str, Any]] = (),
    reminded: bool = False,
    *,
    offer: PayOffer | None = None,
    answer_url: str | None = None,
) -> dict[str, Any]:
    """The template context (see the module docstring) for one message.

    `message` needs `stage` and `case_id`; each item `invoice_id, number, issued_on, due_on,
    amount, owed, currency` and optionally the ledger's `payment_url`; `history` rows
    `stage, sent_on`. `locale` is the Babel locale for money and dates (an unknown one
    formats as en). `offer` is the day's gateway (default: `sender.payment_url`'s).
    """
    babel_locale = babel_locale_for(locale)
    offer = offer or PayOffer(default_gateway(sender.payment_url))
    invoices = [_invoice(item, offer.gateway, as_of, babel_locale) for item in items]
    offered = any(invoice["payment_gateway"] == offer.gateway.name for invoice in invoices)
    owed: dict[str, Decimal] = defaultdict(Decimal)
    for item in items:
        owed[item["currency"]] += item["owed"]
    totals = [_money(owed[code], code, babel_locale) for code in sorted(owed)]
    context = {
        "customer": {key: customer[key] for key in ("customer_id", "name", "email")},
        "stage": message["stage"],
        "case_id": message["case_id"],
        "invoices": invoices,
        "totals": totals,
        "total": " + ".join(totals),
        "max_days_overdue": max((invoice["days_overdue"] for invoice in invoices), default=0),
        "sender": {
            "name": sender.name_in(babel_locale.language),
            "title": sender.titles.get(babel_locale.language, sender.title),
            "company": sender.company,
        },
        "today": _long_date(as_of, babel_locale),
        "history": [
            {"stage": row["stage"], "sent_on": _long_date(row["sent_on"], babel_locale)}
            for row in history
        ],
        "reminded": reminded,
        "payment": {
            "label": offer.gateway.shown_as if offered else "",
            "fallback": offer.fallback and offered,
        },
    }
    if answer_url is not None:
        context["answer_url"] = answer_url
    return context


def _invoice(
    item: Mapping[str, Any], gateway: Gateway, as_of: date, locale: Locale
) -> dict[str, Any]:
    link = pay_link(item["invoice_id"], item.get("payment_url"), gateway)
    return {
        "invoice_id": item["invoice_id"],
        "number": item["number"] or item["invoice_id"],
        "issued_on": _long_date(item["issued_on"], locale),
        "due_on": _long_date(item["due_on"], locale),
        "amount": _money(item["amount"], item["currency"], locale),
        "owed": _money(item["owed"], item["currency"], locale),
        "currency": item["currency"],
        "days_overdue": (as_of - item["due_on"]).days,
        "payment_url": link.url,
        "payment_gateway": link.gateway,
    }


@lru_cache(maxsize=65536)
def _money(amount: Decimal, currency: str, locale: Locale) -> str:
    """Cached: Babel is most of the cost of a context, and an invoice's amount is often what is
    owed on it."""
    return format_currency(amount, currency, locale=locale)


@lru_cache(maxsize=4096)
def _long_date(day: date, locale: Locale) -> str:
    """Cached: a batch repeats the same few due dates thousands of times."""
    return format_date(day, format="long", locale=locale)


@lru_cache(maxsize=256)
def babel_locale_for(locale: str) -> Locale:
    """The Babel locale for a BCP 47 / POSIX tag: the most specific one Babel knows, else en."""
    for candidate in locale_chain(locale):
        try:
            return Locale.parse(candidate)
        except (UnknownLocaleError, ValueError):
            continue
    return Locale.parse(FALLBACK_LOCALE)


@lru_cache(maxsize=256)
def formatting_locale(locale: str, folder: str) -> str:
    """The message's own locale if its templates are in its language, else the folder's."""
    if babel_locale_for(locale).language == babel_locale_for(folder).language:
        return str(babel_locale_for(locale))
    return folder


def locale_chain(locale: str) -> list[str]:
    """`fr-CA` -> [fr_CA, fr, en]: most specific first, the fallback last."""
    parts = [part for part in re.split(r"[-_]", locale.strip()) if part]
    chain = ["_".join(parts[:end]) for end in range(len(parts), 0, -1)]
    return [*chain, FALLBACK_LOCALE]


_SAMPLE_AS_OF = date(2025, 3, 31)


SAMPLE_ANSWER_URL = "https://answers.example.com/r/sample-token"
SAMPLE_FALLBACK = PayOffer(
    Gateway(name="backup", url="https://backup.example.com/{invoice_id}", label="PayBackup"),
    fallback=True,
)


def sample_contexts(locale: str) -> list[dict[str, Any]]:
    """Contexts that exercise every branch a template may take: several invoices in two
    currencies (one overdue with the ledger's own pay link, one not yet due), offered by a
    backup gateway standing in for the preferred one, with a titled sender and a history; and a
    single invoice not yet due with the default gateway, an untitled sender and no history.
    Both carry an answer link (SAMPLE_ANSWER_URL)."""
    customer = {"customer_id": "C-1001", "name": "Sample Customer Ltd", "email": "ap@example.com"}
    message = {"stage": "sample", "case_id": 1}
    overdue = _sample_item("INV-1", "2025-0001", due_days_ago=21, amount="1234.56", currency="EUR")
    overdue["payment_url"] = "https://billing.example.com/pay/INV-1"
    upcoming = _sample_item("INV-2", None, due_days_ago=-3, amount="50", currency="USD")
    history = [{"stage": "gentle", "sent_on": _SAMPLE_AS_OF - timedelta(days=14)}]
    titled = Sender(
        name="Sam Sample",
        title="Accounts Receivable",
        titles={"fr": "Comptabilité clients", "de": "Debitorenbuchhaltung"},
        company="Sample Co",
    )
    both = [overdue, upcoming]
    answer = SAMPLE_ANSWER_URL
    full = build_context(
        message, both, customer, titled, _SAMPLE_AS_OF, locale, history, True,
        offer=SAMPLE_FALLBACK, answer_url=answer,
    )  # fmt: skip
    plain = build_context(
        message, [upcoming], customer, Sender(), _SAMPLE_AS_OF, locale, answer_url=answer
    )
    return [full, plain]


def _sample_item(
    invoice_id: str, number: str | None, due_days_ago: int, amount: str, currency: str
) -> dict[str, Any]:
    due_on = _SAMPLE_AS_OF - timedelta(days=due_days_ago)
    return {
        "invoice_id": invoice_id,
        "number": number,
        "issued_on": due_on - timedelta(days=30),
        "due_on": due_on,
        "amount": Decimal(amount),
        "owed": Decimal(amount),
        "currency": currency,
    }
