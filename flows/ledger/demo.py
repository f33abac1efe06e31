"""A deterministic demo portfolio, written in the ledger CSV contract (DESIGN.md).

Each customer follows a behaviour profile (punctual, slightly late, chronic, failed card,
disputes, never pays, new) and gets monthly invoices up to today, due 30 days after issue, so
that on `today` the pipeline meets invoices before their due date, just overdue and long
overdue. Only what is known today is written: no payment attempt after `today`.

The same seed gives byte-identical files. Rows are written as each customer is generated, so a
portfolio of a million invoices takes seconds and little memory (the benchmark relies on it).

The demo's messages carry signed answer links like any others: without COLLECTFLOW_LINK_SECRET
the demo uses a random key of its own, kept in a file beside its outbox (`demo_link_secret`) so
that a rerun signs with the same key, and the page's local address (`DEMO_PUBLIC_URL`).
"""

from __future__ import annotations

import csv
import math
import os
import random
import secrets
import unicodedata
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from itertools import accumulate
from pathlib import Path
from zoneinfo import ZoneInfo

from collectflow.flows.errors import BadUsage

DEMO_PUBLIC_URL = "http://127.0.0.1:8080"
"""Where `collectflow serve` answers by default: the demo's links point there."""
DEMO_SECRET_FILE = ".collectflow-demo-link-secret"


def demo_link_secret(folder: Path) -> str:
    """The demo's answer-link key: read from `folder`, or made (random, readable by the owner
    only) on the first demo there. Only for the demo: a production run without
    COLLECTFLOW_LINK_SECRET refuses to start instead."""
    path = folder / DEMO_SECRET_FILE
    if path.exists():
        return path.read_text(encoding="ascii").strip()
    folder.mkdir(parents=True, exist_ok=True)
    key = secrets.token_urlsafe(32)
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(descriptor, "w", encoding="ascii") as handle:
        handle.write(key + "\n")
    return key


CUSTOMER_COLUMNS = (
    "customer_id",
    "name",
    "email",
    "locale",
    "timezone",
    "country",
    "account_manager_email",
    "do_not_contact",
    "autopay",
)
INVOICE_COLUMNS = (
    "invoice_id",
    "customer_id",
    "number",
    "issued_on",
    "due_on",
    "amount",
    "currency",
    "status",
)
PAYMENT_COLUMNS = (
    "payment_id",
    "invoice_id",
    "attempted_at",
    "amount",
    "status",
    "failure_code",
    "gateway",
    "method",
)
FILES = {
    "customers.csv": CUSTOMER_COLUMNS,
    "invoices.csv": INVOICE_COLUMNS,
    "payments.csv": PAYMENT_COLUMNS,
}

PROFILES: dict[str, int] = {
    "punctual": 35,
    "slightly_late": 20,
    "chronic": 15,
    "failed_card": 10,
    "never_pays": 8,
    "disputes": 7,
    "new": 5,
}
FAILURE_CODES = (
    "card_declined",
    "insufficient_funds",
    "expired_card",
    "processing_error",
    "gateway_timeout",
)
TERMS_DAYS = 30
MIN_CENTS, MAX_CENTS = 8_000, 480_000
ACCOUNT_MANAGERS = (
    "sophie.laurent@northwind.example.com",
    "jonas.becker@northwind.example.com",
    "emily.carter@northwind.example.com",
    "david.okafor@northwind.example.com",
)


@dataclass(frozen=True)
class _Region:
    """Where a customer lives: locale, timezone, country, currencies and plausible names."""

    weight: int
    locale: str
    timezone: str
    country: str
    currencies: tuple[str, ...]
    first_names: tuple[str, ...]
    last_names: tuple[str, ...]
    company_suffixes: tuple[str, ...]


REGIONS = (
    _Region(
        30,
        "en",
        "America/New_York",
        "US",
        ("USD",),
        ("James", "Mary", "Robert", "Jennifer", "Michael", "Linda", "David", "Susan", "Maria"),
        ("Smith", "Johnson", "Williams", "Brown", "Garcia", "Miller", "Davis", "O'Connor"),
        ("Inc.", "LLC", "& Co."),
    ),
    _Region(
        20,
        "en",
        "Europe/London",
        "GB",
        ("GBP",),
        ("Oliver", "Amelia", "Harry", "Isla", "George", "Ava", "Noah", "Emily", "Priya"),
        ("Taylor", "Evans", "Wilson", "Thomas", "Roberts", "Patel", "Hughes", "O'Brien"),
        ("Ltd", "PLC", "& Sons"),
    ),
    _Region(
        30,
        "fr",
        "Europe/Paris",
        "FR",
        ("EUR",) * 9 + ("USD",),
        ("Camille", "Léa", "Chloé", "Élodie", "Hugo", "Théo", "Louis", "François", "Inès"),
        ("Martin", "Bernard", "Dubois", "Lefèvre", "Moreau", "Girard", "Fournier", "Lemaître"),
        ("SARL", "SAS", "et Fils"),
    ),
    _Region(
        20,
        "de",
        "Europe/Berlin",
        "DE",
        ("EUR",) * 9 + ("GBP",),
        ("Lukas", "Anna", "Jürgen", "Sophie", "Maximilian", "Jörg", "Lena", "Björn", "Käthe"),
        ("Müller", "Schmidt", "Schneider", "Fischer", "Weiß", "Schröder", "Köhler", "Becker"),
        ("GmbH", "KG", "AG"),
    ),
)
_ZONES = {region.timezone: ZoneInfo(region.timezone) for region in REGIONS}
_ASCII = str.maketrans({"ä": "ae", "ö": "oe", "ü": "ue", "ß": "ss", "'": "", " ": ""})


@dataclass(frozen=True, slots=True)
class DemoCustomer:
    """One generated customer and its rows, each in the column order of FILES."""

    profile: str
    customer: tuple[str, ...]
    invoices: list[tuple[str, ...]]
    payments: list[tuple[str, ...]]


@dataclass(frozen=True, slots=True)
class _Attempt:
    on: date
    cents: int
    status: str = "succeeded"
    failure_code: str = ""


@dataclass(slots=True)
class _Bill:
    number: int
    issued: date
    cents: int
    status: str = "open"
    attempts: list[_Attempt] = field(default_factory=list)

    @property
    def due(self) -> date:
        return self.issued + timedelta(days=TERMS_DAYS)

    def pay(self, on: date, cents: int, status: str = "succeeded", failure_code: str = "") -> None:
        self.attempts.append(_Attempt(on, cents, status, failure_code))


@dataclass(frozen=True, slots=True)
class _Account:
    autopay: bool
    method: str
    gateway: str


def write_demo_ledger(
    directory: Path,
    today: date,
    customers: int = 300,
    invoices_per_customer: int = 12,
    seed: int = 7,
) -> dict[str, int]:
    """Write customers.csv, invoices.csv and payments.csv into `directory`; rows per file.

    Streams: memory stays flat whatever the portfolio size.
    """
    directory.mkdir(parents=True, exist_ok=True)
    counts = dict.fromkeys(FILES, 0)
    with ExitStack() as stack:
        writers = {}
        for name, columns in FILES.items():
            handle = stack.enter_context((directory / name).open("w", encoding="utf-8", newline=""))
            writers[name] = csv.writer(handle, lineterminator="\n")
            writers[name].writerow(columns)
        for demo in demo_customers(today, customers, invoices_per_customer, seed):
            for name, rows in (
                ("customers.csv", [demo.customer]),
                ("invoices.csv", demo.invoices),
                ("payments.csv", demo.payments),
            ):
                writers[name].writerows(rows)
                counts[name] += len(rows)
    return counts


def demo_customers(
    today: date, customers: int = 300, invoices_per_customer: int = 12, seed: int = 7
) -> Iterator[DemoCustomer]:
    """Generate the portfolio one customer at a time (the profile says how it was drawn)."""
    if customers < 1 or invoices_per_customer < 1:
        raise BadUsage("a demo ledger needs at least one customer and one invoice each")
    rng = random.Random(seed)
    profiles, profile_weights = list(PROFILES), list(accumulate(PROFILES.values()))
    region_weights = list(accumulate(region.weight for region in REGIONS))
    for number in range(1, customers + 1):
        region = rng.choices(REGIONS, cum_weights=region_weights)[0]
        profile = rng.choices(profiles, cum_weights=profile_weights)[0]
        yield _customer(rng, number, region, profile, today, invoices_per_customer)


def _customer(
    rng: random.Random, number: int, region: _Region, profile: str, today: date, invoices: int
) -> DemoCustomer:
    customer_id = f"C{number:06d}"
    account = _account(rng, profile, region)
    row = (
        customer_id,
        *_name_and_email(rng, number, region),
        region.locale,
        region.timezone,
        region.country,
        rng.choice(ACCOUNT_MANAGERS) if rng.random() < 0.10 else "",
        _flag(rng.random() < 0.05),
        _flag(account.autopay),
    )
    currency = rng.choice(region.currencies)
    bills = _bills(rng, today, rng.randint(1, 2) if profile == "new" else invoices)
    BEHAVIOURS[profile](rng, bills, today, account)
    _maybe_refund(rng, bills, today)
    return DemoCustomer(
        profile,
        row,
        [_invoice_row(customer_id, bill, currency) for bill in bills],
        _payment_rows(rng, number, bills, today, account, _ZONES[region.timezone]),
    )


def _account(rng: random.Random, profile: str, region: _Region) -> _Account:
    if profile == "failed_card" or (profile == "punctual" and rng.random() < 0.2):
        return _Account(rng.random() < 0.6, "card", rng.choice(("stripe", "adyen")))
    method = rng.choice(("bank_transfer", "bank_transfer", "card"))
    if method == "card":
        return _Account(False, "card", rng.choice(("stripe", "adyen")))
    return _Account(False, method, "")


def _name_and_email(rng: random.Random, number: int, region: _Region) -> tuple[str, str]:
    first, last = rng.choice(region.first_names), rng.choice(region.last_names)
    is_company = rng.random() < 0.4
    name = f"{last} {rng.choice(region.company_suffixes)}" if is_company else f"{first} {last}"
    tld = rng.choice(("com", "net", "org"))
    return name, f"{_ascii(first)}.{_ascii(last)}{number}@example.{tld}"


def _ascii(text: str) -> str:
    decomposed = unicodedata.normalize("NFKD", text.lower().translate(_ASCII))
    return decomposed.encode("ascii", "ignore").decode("ascii")


def _flag(value: bool) -> str:
    return "true" if value else "false"


def _bills(rng: random.Random, today: date, count: int) -> list[_Bill]:
    """Monthly invoices on a billing day, the latest issued in the last month up to today."""
    day = rng.randint(1, 28)
    months = today.year * 12 + today.month - 1 - (0 if today.day >= day else 1)
    base = math.exp(rng.uniform(math.log(150), math.log(3_000)))
    bills = []
    for index in range(count):
        year, month = divmod(months - (count - 1 - index), 12)
        cents = round(base * rng.uniform(0.85, 1.15) * 100)
        bill = _Bill(index + 1, date(year, month + 1, day), min(max(cents, MIN_CENTS), MAX_CENTS))
        if rng.random() < 0.01:
            bill.status = "void"
        bills.append(bill)
    return bills


def _payable(bills: list[_Bill]) -> list[_Bill]:
    return [bill for bill in bills if bill.status == "open"]


def _days(bill: _Bill, offset: int) -> date:
    return bill.due + timedelta(days=offset)


def _punctual(rng: random.Random, bills: list[_Bill], today: date, account: _Account) -> None:
    """Pays every invoice 0-5 days before it is due (autopay: on the due date)."""
    for bill in _payable(bills):
        bill.pay(_days(bill, 0 if account.autopay else -rng.randint(0, 5)), bill.cents)


def _slightly_late(rng: random.Random, bills: list[_Bill], today: date, account: _Account) -> None:
    """Pays about 4 invoices in 10 late, by 1-12 days, the others just before they are due.

    Often enough to miss the on-time segment, not so often as to look chronic.
    """
    for bill in _payable(bills):
        late = rng.random() < 0.4
        bill.pay(_days(bill, rng.randint(1, 12) if late else -rng.randint(0, 2)), bill.cents)


def _chronic(rng: random.Random, bills: list[_Bill], today: date, account: _Account) -> None:
    """Pays 20-60 days late, sometimes in two instalments, and leaves some invoices unpaid."""
    for bill in _payable(bills):
        draw = rng.random()
        if draw < 0.15:
            continue
        if draw < 0.4:
            half = bill.cents // 2
            bill.pay(_days(bill, rng.randint(20, 35)), half)
            bill.pay(_days(bill, rng.randint(40, 60)), bill.cents - half)
        else:
            bill.pay(_days(bill, rng.randint(20, 60)), bill.cents)


def _failed_card(rng: random.Random, bills: list[_Bill], today: date, account: _Account) -> None:
    """Card charges fail on the latest one or two due invoices; older ones went through."""
    due = [bill for bill in _payable(bills) if bill.due <= today]
    failing = {bill.number for bill in due[-rng.randint(1, 2) :]}
    for bill in _payable(bills):
        if bill.number in failing:
            _declined(rng, bill)
        else:
            bill.pay(_days(bill, 0 if account.autopay else -rng.randint(0, 3)), bill.cents)


def _declined(rng: random.Random, bill: _Bill) -> None:
    """A failed charge on the due date, maybe a failed retry, sometimes a later success."""
    bill.pay(bill.due, bill.cents, "failed", rng.choice(FAILURE_CODES))
    if rng.random() < 0.5:
        bill.pay(_days(bill, 3), bill.cents, "failed", rng.choice(FAILURE_CODES))
    if rng.random() < 0.5:
        bill.pay(_days(bill, rng.randint(4, 10)), bill.cents)


def _disputes(rng: random.Random, bills: list[_Bill], today: date, account: _Account) -> None:
    """Disputes one recent invoice and pays the others around their due date."""
    payable = _payable(bills)
    due = [bill for bill in payable if bill.due <= today]
    if payable:
        rng.choice(due[-3:] or payable[-1:]).status = "disputed"
    for bill in _payable(bills):
        bill.pay(_days(bill, rng.randint(-3, 8)), bill.cents)


def _never_pays(rng: random.Random, bills: list[_Bill], today: date, account: _Account) -> None:
    """Leaves the latest 2-4 invoices unpaid; older ones were paid late, some only in part."""
    payable = _payable(bills)
    for bill in payable[: max(len(payable) - rng.randint(2, 4), 0)]:
        if rng.random() < 0.4:
            bill.pay(_days(bill, rng.randint(10, 40)), bill.cents * rng.randint(30, 70) // 100)
        else:
            bill.pay(_days(bill, rng.randint(15, 45)), bill.cents)


def _new(rng: random.Random, bills: list[_Bill], today: date, account: _Account) -> None:
    """A recent customer: one or two invoices, paid around the due date or not yet."""
    for bill in _payable(bills):
        if rng.random() < 0.4:
            bill.pay(_days(bill, rng.randint(-5, 10)), bill.cents)


BEHAVIOURS: dict[str, Callable[[random.Random, list[_Bill], date, _Account], None]] = {
    "punctual": _punctual,
    "slightly_late": _slightly_late,
    "chronic": _chronic,
    "failed_card": _failed_card,
    "never_pays": _never_pays,
    "disputes": _disputes,
    "new": _new,
}


def _maybe_refund(rng: random.Random, bills: list[_Bill], today: date) -> None:
    """A few customers get a payment refunded (in full or in part), reopening the invoice."""
    if rng.random() >= 0.02:
        return
    paid = [(bill, a) for bill in bills for a in bill.attempts if a.status == "succeeded"]
    if not paid:
        return
    bill, attempt = rng.choice(paid)
    cents = attempt.cents if rng.random() < 0.5 else attempt.cents * rng.randint(10, 50) // 100
    bill.pay(attempt.on + timedelta(days=rng.randint(2, 20)), cents, "refunded")


def _money(cents: int) -> str:
    return f"{cents // 100}.{cents % 100:02d}"


def _invoice_row(customer_id: str, bill: _Bill, currency: str) -> tuple[str, ...]:
    suffix = f"{customer_id[1:]}-{bill.number:02d}"
    return (
        f"INV-{suffix}",
        customer_id,
        f"{bill.issued.year}/{suffix}",
        bill.issued.isoformat(),
        bill.due.isoformat(),
        _money(bill.cents),
        currency,
        bill.status,
    )


def _payment_rows(
    rng: random.Random,
    number: int,
    bills: list[_Bill],
    today: date,
    account: _Account,
    zone: ZoneInfo,
) -> list[tuple[str, ...]]:
    """Attempts up to today, at a business hour in the customer's timezone (same date in UTC)."""
    rows = []
    for bill in bills:
        for index, attempt in enumerate(bill.attempts, start=1):
            if attempt.on > today:
                continue
            hours, seconds = divmod(rng.randrange(9 * 3600, 18 * 3600), 3600)
            at = datetime(
                attempt.on.year, attempt.on.month, attempt.on.day, hours, *divmod(seconds, 60)
            ).replace(tzinfo=zone)
            rows.append(
                (
                    f"PAY-{number:06d}-{bill.number:02d}-{index}",
                    f"INV-{number:06d}-{bill.number:02d}",
                    at.isoformat(),
                    _money(attempt.cents),
                    attempt.status,
                    attempt.failure_code,
                    account.gateway,
                    account.method,
                )
            )
    return rows
