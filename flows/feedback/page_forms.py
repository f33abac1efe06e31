"""The customer page's forms read strictly: what the customer posted becomes an `Answer`, or
each field's problem in words the page can show next to that field.

Every value is checked here before the answer API sees it, so the customer reads why in
their language (the API's own refusals, `AnswerRefused`, still reach the form as a last
resort): invoices must be among the message's own still owed; dates are ISO (what a date
input posts); amounts are plain decimals in the customer's notation (`1234.56`, `1 234,56`,
`1.234,56`), positive, with at most the currency's decimals; free text is length-limited
(never truncated behind the customer's back) and stripped of control characters, which
PostgreSQL's text type refuses (NUL) and no person types.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date, timedelta
from decimal import Decimal, InvalidOperation
from typing import Any

from babel import Locale
from babel.numbers import format_decimal, get_currency_precision, get_decimal_symbol

from collectflow.flows.feedback.answers import (
    INTENTS,
    MAX_REFERENCE,
    MAX_TEXT,
    ORDER_REASONS,
    Answer,
)
from collectflow.flows.feedback.statement import Statement
from collectflow.flows.policy.document import Policy

MAX_AMOUNT_DIGITS = 12
FIELDS = ("paid_on", "amount", "currency", "reference", "reason", "text", "promise_date")
"""The form fields besides the invoices (named as `Answer`'s attributes)."""
FIELDS_OF = {
    "already_paid": ("invoices", "paid_on", "amount", "currency", "reference"),
    "payment_failed": ("invoices",),
    "order_problem": ("invoices", "reason", "text"),
    "need_time": ("invoices", "promise_date", "amount", "currency"),
    "unsubscribe": (),
}
"""The fields each answer's form shows: a problem with any other is the form's as a whole."""

ISO_DATE = re.compile("[0-9]{4}-[0-9]{2}-[0-9]{2}")  # ASCII digits only: \d takes any script
GROUPING = re.compile("[ \u00a0\u202f\u2009'\u2019]")  # spaces and apostrophes between digit groups
AMOUNT = re.compile("[0-9]+(?:[.,][0-9]+)*")


@dataclass(frozen=True)
class Problem:
    """What is wrong with one field: a key of the page's texts and its placeholders' values."""

    key: str
    values: Mapping[str, Any] = field(default_factory=dict)


class FormRefused(Exception):
    """The form cannot become an answer; `problems` maps each field to what is wrong with it."""

    def __init__(self, problems: dict[str, Problem]) -> None:
        super().__init__(", ".join(f"{name}: {problem.key}" for name, problem in problems.items()))
        self.problems = problems


@dataclass(frozen=True)
class Posted:
    """One posted form, as the page keeps it to show again: each field's text and the
    invoices ticked."""

    intent: str
    values: Mapping[str, str]
    invoices: tuple[str, ...]


def posted(form: Mapping[str, Sequence[str]]) -> Posted:
    """The posted form's intent, fields and ticked invoices (each field's first value)."""
    values = {name: form[name][0] for name in FIELDS if form.get(name)}
    return Posted(
        intent=(form.get("intent") or [""])[0],
        values=values,
        invoices=tuple(dict.fromkeys(form.get("invoices", ()))),
    )


def read_answer(
    form: Posted, statement: Statement, policy: Policy, today: date, locale: Locale
) -> Answer:
    """The answer the customer posted, or FormRefused naming each field that is wrong."""
    if form.intent not in INTENTS:
        raise FormRefused({"intent": Problem("bad_request")})
    problems: dict[str, Problem] = {}
    fields: dict[str, Any] = {}
    invoices: tuple[str, ...] = ()
    if form.intent != "unsubscribe":
        invoices = _invoices(form, statement, problems)
    if form.intent == "already_paid":
        fields["paid_on"] = _date(form, "paid_on", problems, today)
        if fields["paid_on"] and fields["paid_on"] > today:
            problems["paid_on"] = Problem("error_paid_in_future")
        fields["reference"] = _text(form, "reference", MAX_REFERENCE, problems, one_line=True)
        fields.update(_amount(form, statement, invoices, locale, problems, at_most_owed=False))
    elif form.intent == "order_problem":
        fields["reason"] = form.values.get("reason")
        if fields["reason"] not in ORDER_REASONS:
            problems["reason"] = Problem("error_reason")
        fields["text"] = _text(form, "text", MAX_TEXT, problems)
    elif form.intent == "need_time":
        fields["promise_date"] = _promise_date(form, policy, today, problems)
        fields.update(_amount(form, statement, invoices, locale, problems, at_most_owed=True))
    if problems:
        raise FormRefused(problems)
    return Answer(
        customer_id=statement.customer_id,
        intent=form.intent,
        source="page",
        message_id=statement.message_id,
        invoices=invoices,
        **{name: value for name, value in fields.items() if value is not None},
    )


def latest_promise(policy: Policy, today: date) -> date:
    """The latest date the page accepts for a promise to pay."""
    return today + timedelta(days=policy.feedback.max_promise_days)


def _invoices(form: Posted, statement: Statement, problems: dict[str, Problem]) -> tuple[str, ...]:
    owing = {line.invoice_id for line in statement.owing}
    if not form.invoices:
        problems["invoices"] = Problem("error_choose_invoice")
    elif not set(form.invoices) <= owing:
        problems["invoices"] = Problem("error_unknown_invoice")
    return form.invoices


def _date(form: Posted, name: str, problems: dict[str, Problem], today: date) -> date | None:
    raw = form.values.get(name, "").strip()
    if not raw:
        return None
    try:
        if not ISO_DATE.fullmatch(raw):
            raise ValueError(raw)
        return date.fromisoformat(raw)
    except ValueError:
        problems[name] = Problem("error_date", {"example": today.isoformat()})
        return None


def _promise_date(
    form: Posted, policy: Policy, today: date, problems: dict[str, Problem]
) -> date | None:
    if not form.values.get("promise_date", "").strip():
        problems["promise_date"] = Problem("error_promise_required")
        return None
    promised = _date(form, "promise_date", problems, today)
    latest = latest_promise(policy, today)
    if promised is not None and promised < today:
        problems["promise_date"] = Problem("error_promise_past")
    elif promised is not None and promised > latest:
        problems["promise_date"] = Problem("error_promise_too_far", {"latest": latest})
    return promised


def _text(
    form: Posted, name: str, limit: int, problems: dict[str, Problem], one_line: bool = False
) -> str | None:
    text = clean_text(form.values.get(name, ""), one_line)
    if len(text) > limit:
        problems[name] = Problem("error_too_long", {"max": limit, "length": len(text)})
    return text or None


def clean_text(raw: str, one_line: bool = False) -> str:
    """Free text as stored: newlines as `\\n` (none in a one-line field), without control or
    format characters (NUL, escape sequences, bidirectional overrides), stripped."""
    text = raw.replace("\r\n", "\n").replace("\r", "\n")
    if one_line:
        text = " ".join(text.split("\n"))
    kept = (
        char
        for char in text
        if char in "\n\t" or unicodedata.category(char) not in ("Cc", "Cf", "Cs", "Co")
    )
    return "".join(kept).strip()


def _amount(
    form: Posted,
    statement: Statement,
    invoices: Sequence[str],
    locale: Locale,
    problems: dict[str, Problem],
    at_most_owed: bool,
) -> dict[str, Any]:
    """`amount` and `currency` of the form: the currency of the invoices chosen, or the one
    picked when they are in several."""
    raw = form.values.get("amount", "").strip()
    if not raw:
        return {}
    chosen = [line for line in statement.owing if line.invoice_id in invoices]
    currencies = sorted({line.currency for line in chosen} or statement.totals())
    currency = currencies[0] if len(currencies) == 1 else form.values.get("currency")
    if currency not in currencies:
        problems["currency"] = Problem("error_currency")
        return {}
    decimals = get_currency_precision(currency)
    try:
        amount = parse_amount(raw, locale, decimals)
    except ValueError:
        pattern = "0." + "0" * decimals if decimals else "0"
        example = format_decimal(Decimal("1234.50"), format=pattern, locale=locale)
        problems["amount"] = Problem("error_amount", {"example": example})
        return {}
    owed = sum((line.owed for line in chosen if line.currency == currency), Decimal(0))
    if amount <= 0:
        problems["amount"] = Problem("error_amount_zero")
    elif at_most_owed and amount > owed:
        problems["amount"] = Problem("error_amount_too_high", {"owed": owed, "currency": currency})
    return {"amount": amount, "currency": currency}


def parse_amount(raw: str, locale: Locale, decimals: int) -> Decimal:
    """A positive decimal as a person types it: digits with `.` or `,` as the decimal mark and
    spaces, apostrophes or the other mark between groups of three. A lone mark followed by
    three digits (`1,234`) is read the locale's way. ValueError when it is not such a number
    or has more decimals than the currency has."""
    text = GROUPING.sub("", raw.strip())
    if not AMOUNT.fullmatch(text) or len(text) > MAX_AMOUNT_DIGITS + 8:
        raise ValueError(raw)
    marks = [char for char in text if char in ".,"]
    if not marks:
        whole, fraction = text, ""
    else:
        decimal_mark = _decimal_mark(text, marks, get_decimal_symbol(locale))
        if decimal_mark is None:
            whole, fraction = text, ""
        else:
            whole, _, fraction = text.rpartition(decimal_mark)
        groups = re.split(r"[.,]", whole)
        if len(groups) > 1 and (
            not 1 <= len(groups[0]) <= 3 or any(len(group) != 3 for group in groups[1:])
        ):
            raise ValueError(raw)
        whole = "".join(groups)
    if len(fraction) > decimals or len(whole.lstrip("0")) > MAX_AMOUNT_DIGITS:
        raise ValueError(raw)
    try:
        return Decimal(f"{whole}.{fraction or '0'}")
    except InvalidOperation:
        raise ValueError(raw) from None


def _decimal_mark(text: str, marks: list[str], locale_mark: str) -> str | None:
    """Which mark separates the decimals in `text`, or None when every mark groups thousands."""
    last = marks[-1]
    if len(set(marks)) == 2:
        return last if marks.count(last) == 1 else None
    if len(marks) > 1:
        return None  # 1,234,567 or 1.234.567: groups only
    digits_after = len(text) - text.rindex(last) - 1
    if digits_after != 3:
        return last
    return last if last == locale_mark else None
