"""Step 4, render: planned messages become subject, text and HTML in the customer's language.

Templates live in `templates/<locale>/<template>.{subject,txt,html}.j2`; the HTML parts extend
the shared `templates/_layout.html.j2`, and files starting with `_` are partials (macros,
layout), never templates. A locale falls back from the most specific folder to the least, then
to `en` (`fr_CA` -> `fr` -> `en`), so `en` must hold every template. Internal messages
(`kind = 'internal'`, e.g. `escalation`) always render in `en`.

Templates are operator-edited, so they render in a Jinja2 sandbox (immutable: a template cannot
change its context) with `StrictUndefined`, and HTML parts are autoescaped. `validate()` renders
every template in every locale at startup, so a misspelled variable stops the run before any
message is rendered rather than halfway through it. Subjects are collapsed to one line, so a
name holding CR/LF cannot inject mail headers.

Template context (every value pre-formatted in the customer's locale with Babel, so templates
never do arithmetic or formatting):

    customer: {customer_id, name, email}
    stage: str                  # stage name, e.g. "gentle"
    case_id: int
    invoices: list of {invoice_id, number (number, else invoice_id), issued_on, due_on
              (long dates), amount, owed (currency amounts), currency, days_overdue (int,
              <= 0 means not yet due), payment_url}, oldest due first
    totals: list of formatted totals, one per currency (e.g. ["1 234,56 €", "50,00 $US"])
    total: the totals joined with " + "
    max_days_overdue: int
    sender: {name, title, company}
    today: long date of the run (as_of)
    history: list of {stage, sent_on (long date)}: the reminders sent on the case, oldest
             first; filled for internal messages only (empty for reminders)

Money and dates are formatted in the message's locale when its templates are in that language
(`fr_CA` gets Canadian French figures with the `fr` templates); when the templates fell back to
another language, or Babel does not know the locale, formatting follows the templates' folder,
so a message never mixes English sentences with foreign number formats.
"""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from collections.abc import Set as AbstractSet
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from functools import lru_cache
from pathlib import Path
from types import TracebackType
from typing import Any
from urllib.parse import quote

import jinja2
from babel import Locale, UnknownLocaleError
from babel.dates import format_date
from babel.numbers import format_currency
from jinja2 import meta
from jinja2.sandbox import ImmutableSandboxedEnvironment
from sqlalchemy import Connection, Row, String, bindparam, delete, func, insert, select, update

from collectflow.flows.errors import TemplateError
from collectflow.flows.mail.compose import message_id_for, mime_body
from collectflow.flows.policy.document import Policy, Sender
from collectflow.models import Customer, Invoice, Message, MessageContent, MessageItem

FALLBACK_LOCALE = "en"
INTERNAL_TEMPLATES = frozenset({"escalation"})
PARTS = ("subject", "txt", "html")
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
    }
)

MESSAGES = Message.__table__
CONTENTS = MessageContent.__table__
ITEMS = MessageItem.__table__
INVOICES = Invoice.__table__
CUSTOMERS = Customer.__table__


@dataclass(frozen=True)
class Rendered:
    """One message, ready to send."""

    subject: str
    text: str
    html: str


class TemplateCatalog:
    """Loads templates/ once, resolves locale fallback (fr_CA -> fr -> en), renders in a jinja2
    SandboxedEnvironment with StrictUndefined and autoescape for .html templates."""

    def __init__(self, directory: Path, templates: AbstractSet[str]):
        directory = Path(directory)
        if not directory.is_dir():
            raise TemplateError(f"{directory}: template directory not found")
        self.directory = directory
        self.templates = frozenset(templates)
        self._folders = {
            path.name.lower(): path.name
            for path in sorted(directory.iterdir())
            if path.is_dir() and not path.name.startswith(("_", "."))
        }
        self._files = {path.relative_to(directory).as_posix() for path in directory.glob("*/*.j2")}
        self._env = ImmutableSandboxedEnvironment(
            loader=jinja2.FileSystemLoader(directory),
            undefined=jinja2.StrictUndefined,
            autoescape=lambda name: name is not None and name.endswith(".html.j2"),
            trim_blocks=True,
            lstrip_blocks=True,
            auto_reload=False,
        )

    def validate(self) -> None:
        """Check every template in every locale now, so a broken one stops the run at startup.

        Raises TemplateError if a template has no `en` version, a locale folder has only some
        of a template's parts, a file uses a variable the context does not have, or a part
        fails to render with sample contexts (naming template, locale, part and variable).
        """
        for template in sorted(self.templates):
            if not self._has(FALLBACK_LOCALE, template):
                raise TemplateError(
                    f"{self.directory / FALLBACK_LOCALE}: template {template!r} is missing "
                    f"(en is the fallback for every locale and needs "
                    f"{', '.join(self._filename(template, part) for part in PARTS)})"
                )
        self._check_variables()
        for folder in self._folders.values():
            for template in sorted(self.templates):
                self._check_parts_complete(folder, template)
                if self._has(folder, template):
                    for context in sample_contexts(folder):
                        self._render_in(folder, template, context)

    def locale_for(self, locale: str, template: str | None = None) -> str:
        """The folder whose templates `locale` uses (for `template`, if given): the most
        specific folder that exists, else `en`."""
        for candidate in _locale_chain(locale):
            folder = self._folders.get(candidate.lower())
            if folder and (template is None or self._has(folder, template)):
                return folder
        return FALLBACK_LOCALE

    def render(self, template: str, locale: str, context: Mapping[str, Any]) -> Rendered:
        """Render the three parts of `template` in the folder `locale` falls back to."""
        return self._render_in(self.locale_for(locale, template), template, context)

    def _render_in(self, folder: str, template: str, context: Mapping[str, Any]) -> Rendered:
        subject, text, html = (self._render_part(folder, template, part, context) for part in PARTS)
        return Rendered(
            subject=" ".join(subject.split()), text=text.strip() + "\n", html=html.strip() + "\n"
        )

    def _render_part(
        self, folder: str, template: str, part: str, context: Mapping[str, Any]
    ) -> str:
        name = self._name(folder, template, part)
        try:
            return self._env.get_template(name).render(context)
        except jinja2.TemplateNotFound as exc:
            raise TemplateError(
                f"template {template!r}, locale {folder!r}, part {part}: "
                f"{self.directory / exc.name} not found"
            ) from exc
        except jinja2.TemplateError as exc:
            raise TemplateError(
                f"template {template!r}, locale {folder!r}, part {part} "
                f"({_where(exc, self.directory, name)}): {exc.message}"
            ) from exc
        except Exception as exc:  # operator-written code can fail any way, e.g. `owed + 1`
            raise TemplateError(
                f"template {template!r}, locale {folder!r}, part {part} "
                f"({_where(exc, self.directory, name)}): {type(exc).__name__}: {exc}"
            ) from exc

    def _check_variables(self) -> None:
        """Name any variable outside the context contract, even in branches samples miss."""
        allowed = CONTEXT_KEYS | set(self._env.globals)
        for path in sorted(self.directory.rglob("*.j2")):
            name = path.relative_to(self.directory).as_posix()
            try:
                parsed = self._env.parse(path.read_text(encoding="utf-8"), name, str(path))
            except jinja2.TemplateSyntaxError as exc:
                raise TemplateError(f"{_label(name)} ({path}:{exc.lineno}): {exc.message}") from exc
            unknown = meta.find_undeclared_variables(parsed) - allowed
            if unknown:
                raise TemplateError(
                    f"{_label(name)} ({path}): unknown variable {', '.join(sorted(unknown))} "
                    f"(the context has: {', '.join(sorted(CONTEXT_KEYS))})"
                )

    def _check_parts_complete(self, folder: str, template: str) -> None:
        present = [part for part in PARTS if self._name(folder, template, part) in self._files]
        if present and len(present) < len(PARTS):
            missing = [self._filename(template, part) for part in PARTS if part not in present]
            raise TemplateError(
                f"{self.directory / folder}: template {template!r} is incomplete, missing "
                f"{', '.join(missing)} (add them, or remove the others to fall back to en)"
            )

    def _has(self, folder: str, template: str) -> bool:
        return all(self._name(folder, template, part) in self._files for part in PARTS)

    def _name(self, folder: str, template: str, part: str) -> str:
        return f"{folder}/{self._filename(template, part)}"

    @staticmethod
    def _filename(template: str, part: str) -> str:
        return f"{template}.{part}.j2"


def load_catalog(directory: Path, policy: Policy) -> TemplateCatalog:
    """The catalog for `policy`'s templates plus the internal ones, validated."""
    catalog = TemplateCatalog(directory, policy.templates() | INTERNAL_TEMPLATES)
    catalog.validate()
    return catalog


def build_context(
    message: Mapping[str, Any],
    items: Sequence[Mapping[str, Any]],
    customer: Mapping[str, Any],
    sender: Sender,
    as_of: date,
    locale: str,
    history: Sequence[Mapping[str, Any]] = (),
) -> dict[str, Any]:
    """The template context (see the module docstring) for one message.

    `message` needs `stage` and `case_id`; each item `invoice_id, number, issued_on, due_on,
    amount, owed, currency`; `history` rows `stage, sent_on`. `locale` is the Babel locale
    for money and dates (an unknown one formats as en).
    """
    babel_locale = babel_locale_for(locale)
    invoices = [_invoice(item, sender, as_of, babel_locale) for item in items]
    owed: dict[str, Decimal] = defaultdict(Decimal)
    for item in items:
        owed[item["currency"]] += item["owed"]
    totals = [_money(owed[code], code, babel_locale) for code in sorted(owed)]
    return {
        "customer": {key: customer[key] for key in ("customer_id", "name", "email")},
        "stage": message["stage"],
        "case_id": message["case_id"],
        "invoices": invoices,
        "totals": totals,
        "total": " + ".join(totals),
        "max_days_overdue": max((invoice["days_overdue"] for invoice in invoices), default=0),
        "sender": {"name": sender.name, "title": sender.title, "company": sender.company},
        "today": _long_date(as_of, babel_locale),
        "history": [
            {"stage": row["stage"], "sent_on": _long_date(row["sent_on"], babel_locale)}
            for row in history
        ],
    }


_STORE = (
    update(MESSAGES)
    .where(MESSAGES.c.id == bindparam("message_id"), MESSAGES.c.subject.is_(None))
    .values(
        subject=bindparam("subject"),
        rendered_at=bindparam("rendered_at"),
        message_id_header=func.coalesce(
            MESSAGES.c.message_id_header, bindparam("message_id_header", type_=String)
        ),
    )
)


def render_planned(
    conn: Connection,
    catalog: TemplateCatalog,
    policy: Policy,
    as_of: date,
    batch_size: int = 1000,
    *,
    domain: str | None = None,
) -> int:
    """Render every planned message not rendered yet, storing subject, bodies and rendered_at.

    The text and HTML go to `message_contents` as the email's MIME part (`mail.mime_body`):
    what is sent, built once, so that delivery only adds the headers.

    With `domain` (the sender's, `mail.sender_domain`), each message also gets its Message-ID
    now, with its content, so delivery does not write it per message; without, delivery
    names it just before sending.

    Streams in batches of `batch_size` (bounded memory, keyset-paged by id): one query for the
    batch's messages and customers, one for all their items joined with invoices, rendering in
    Python, one executemany UPDATE of the messages and one INSERT of their bodies. The caller
    owns the transaction. Returns how many were rendered; a second call renders nothing.
    """
    rendered = 0
    after = 0
    while batch := _next_batch(conn, after, batch_size):
        rows = _render_batch(conn, catalog, policy.sender, as_of, batch)
        for row in rows:
            row["message_id_header"] = message_id_for(row["key"], domain) if domain else None
        conn.execute(_STORE, rows)
        _store_contents(conn, rows)
        rendered += len(rows)
        after = batch[-1].id
    return rendered


def _store_contents(conn: Connection, rows: list[dict[str, Any]]) -> None:
    """The batch's bodies as their emails' MIME parts, replacing any left from an earlier
    rendering."""
    ids = [row["message_id"] for row in rows]
    conn.execute(delete(CONTENTS).where(CONTENTS.c.message_id.in_(ids)))
    conn.execute(
        insert(CONTENTS),
        [
            {
                "message_id": row["message_id"],
                "body_mime": mime_body(row["body_text"], row["body_html"], row["key"]),
            }
            for row in rows
        ],
    )


def _next_batch(conn: Connection, after: int, size: int) -> Sequence[Row[Any]]:
    """The next `size` unrendered planned messages after id `after`, with their customer."""
    query = (
        select(
            MESSAGES.c.id,
            MESSAGES.c.key,
            MESSAGES.c.kind,
            MESSAGES.c.template,
            MESSAGES.c.locale,
            MESSAGES.c.stage,
            MESSAGES.c.case_id,
            CUSTOMERS.c.customer_id,
            CUSTOMERS.c.name,
            CUSTOMERS.c.email,
        )
        .join_from(MESSAGES, CUSTOMERS, MESSAGES.c.customer_id == CUSTOMERS.c.customer_id)
        .where(MESSAGES.c.status == "planned", MESSAGES.c.subject.is_(None), MESSAGES.c.id > after)
        .order_by(MESSAGES.c.id)
        .limit(size)
    )
    return conn.execute(query).all()


def _render_batch(
    conn: Connection,
    catalog: TemplateCatalog,
    sender: Sender,
    as_of: date,
    batch: Sequence[Row[Any]],
) -> list[dict[str, Any]]:
    items = _items_by_message(conn, [message.id for message in batch])
    internal_cases = [message.case_id for message in batch if message.kind == "internal"]
    history = _history_by_case(conn, internal_cases) if internal_cases else {}
    rendered_at = datetime.now(UTC)
    rows = []
    for message in batch:
        locale = FALLBACK_LOCALE if message.kind == "internal" else message.locale
        folder = catalog.locale_for(locale, message.template)
        context = build_context(
            message._mapping,
            items.get(message.id, []),
            message._mapping,
            sender,
            as_of,
            _formatting_locale(locale, folder),
            history.get(message.case_id, []) if message.kind == "internal" else (),
        )
        try:
            result = catalog.render(message.template, locale, context)
        except TemplateError as exc:
            raise TemplateError(f"message {message.id}: {exc}") from exc
        rows.append(
            {
                "message_id": message.id,
                "key": message.key,
                "subject": result.subject,
                "body_text": result.text,
                "body_html": result.html,
                "rendered_at": rendered_at,
            }
        )
    return rows


def _items_by_message(conn: Connection, ids: list[int]) -> dict[int, list[Mapping[str, Any]]]:
    query = (
        select(
            ITEMS.c.message_id,
            ITEMS.c.invoice_id,
            ITEMS.c.currency,
            ITEMS.c.owed,
            INVOICES.c.number,
            INVOICES.c.issued_on,
            INVOICES.c.due_on,
            INVOICES.c.amount,
        )
        .join_from(ITEMS, INVOICES, ITEMS.c.invoice_id == INVOICES.c.invoice_id)
        .where(ITEMS.c.message_id.in_(ids))
        .order_by(ITEMS.c.message_id, INVOICES.c.due_on, ITEMS.c.invoice_id)
    )
    return _group(conn.execute(query).mappings(), "message_id")


def _history_by_case(conn: Connection, case_ids: list[int]) -> dict[int, list[Mapping[str, Any]]]:
    query = (
        select(MESSAGES.c.case_id, MESSAGES.c.stage, MESSAGES.c.sent_on)
        .where(
            MESSAGES.c.case_id.in_(case_ids),
            MESSAGES.c.kind == "reminder",
            MESSAGES.c.status == "sent",
        )
        .order_by(MESSAGES.c.case_id, MESSAGES.c.sent_on, MESSAGES.c.id)
    )
    return _group(conn.execute(query).mappings(), "case_id")


def _group(rows: Iterable[Mapping[str, Any]], key: str) -> dict[Any, list[Mapping[str, Any]]]:
    grouped: dict[Any, list[Mapping[str, Any]]] = defaultdict(list)
    for row in rows:
        grouped[row[key]].append(row)
    return grouped


def _invoice(
    item: Mapping[str, Any], sender: Sender, as_of: date, locale: Locale
) -> dict[str, Any]:
    return {
        "invoice_id": item["invoice_id"],
        "number": item["number"] or item["invoice_id"],
        "issued_on": _long_date(item["issued_on"], locale),
        "due_on": _long_date(item["due_on"], locale),
        "amount": _money(item["amount"], item["currency"], locale),
        "owed": _money(item["owed"], item["currency"], locale),
        "currency": item["currency"],
        "days_overdue": (as_of - item["due_on"]).days,
        "payment_url": sender.payment_url.format(invoice_id=quote(item["invoice_id"], safe="")),
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
    for candidate in _locale_chain(locale):
        try:
            return Locale.parse(candidate)
        except (UnknownLocaleError, ValueError):
            continue
    return Locale.parse(FALLBACK_LOCALE)


@lru_cache(maxsize=256)
def _formatting_locale(locale: str, folder: str) -> str:
    """The message's own locale if its templates are in its language, else the folder's."""
    if babel_locale_for(locale).language == babel_locale_for(folder).language:
        return str(babel_locale_for(locale))
    return folder


def _locale_chain(locale: str) -> list[str]:
    """`fr-CA` -> [fr_CA, fr, en]: most specific first, the fallback last."""
    parts = [part for part in re.split(r"[-_]", locale.strip()) if part]
    chain = ["_".join(parts[:end]) for end in range(len(parts), 0, -1)]
    return [*chain, FALLBACK_LOCALE]


def _label(name: str) -> str:
    """`fr/gentle.txt.j2` -> "template 'gentle', locale 'fr', part txt"; shared files by name."""
    folder, _, filename = name.rpartition("/")
    template, _, part = filename.removesuffix(".j2").rpartition(".")
    if folder and part in PARTS and not filename.startswith("_"):
        return f"template {template!r}, locale {folder!r}, part {part}"
    return f"shared file {name}"


def _where(exc: Exception, directory: Path, name: str) -> str:
    """`file:line` of the template frame that failed, for an error a person can fix."""
    if isinstance(exc, jinja2.TemplateSyntaxError) and exc.lineno:
        return f"{directory / (exc.name or name)}:{exc.lineno}"
    frame: TracebackType | None = exc.__traceback__
    where = str(directory / name)
    while frame is not None:
        filename = frame.tb_frame.f_code.co_filename
        if filename.endswith(".j2"):
            where = f"{filename}:{frame.tb_lineno}"
        frame = frame.tb_next
    return where


_SAMPLE_AS_OF = date(2025, 3, 31)


def sample_contexts(locale: str) -> list[dict[str, Any]]:
    """Contexts that exercise every branch a template may take: several invoices in two
    currencies (one overdue, one not yet due) with a titled sender and a history, and a single
    invoice not yet due with an untitled sender and no history."""
    customer = {"customer_id": "C-1001", "name": "Sample Customer Ltd", "email": "ap@example.com"}
    message = {"stage": "sample", "case_id": 1}
    overdue = _sample_item("INV-1", "2025-0001", due_days_ago=21, amount="1234.56", currency="EUR")
    upcoming = _sample_item("INV-2", None, due_days_ago=-3, amount="50", currency="USD")
    history = [{"stage": "gentle", "sent_on": _SAMPLE_AS_OF - timedelta(days=14)}]
    titled = Sender(name="Sam Sample", title="Accounts Receivable", company="Sample Co")
    both = [overdue, upcoming]
    return [
        build_context(message, both, customer, titled, _SAMPLE_AS_OF, locale, history),
        build_context(message, [upcoming], customer, Sender(), _SAMPLE_AS_OF, locale),
    ]


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
