"""Ledger import: customers, invoices and payments from CSV, checked whole, then upserted.

All or nothing: every file present is read and checked first, and every problem is collected
as `file:line: field: why`; only a clean ledger is written, in one transaction, in foreign-key
order. Each file is streamed twice (check, then write) instead of being held in memory, so a
million invoices import in bounded memory. Each file is described by a small declarative spec
(its columns and their parsers), so the three files share one reader and one checker.
"""

from __future__ import annotations

import csv
import re
import unicodedata
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from decimal import Decimal
from functools import lru_cache
from itertools import islice
from pathlib import Path
from typing import Any, BinaryIO
from urllib.parse import urlsplit
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from babel import Locale, UnknownLocaleError
from babel.numbers import get_currency_precision, is_currency
from email_validator import EmailNotValidError, validate_email
from sqlalchemy import Connection, Engine, Table, select
from sqlalchemy.dialects import postgresql, sqlite

from collectflow.flows.config import Settings
from collectflow.flows.errors import ConfigError, ImportRejected
from collectflow.flows.ledger.balances import refresh_statistics
from collectflow.models.money import SCALE
from collectflow.models.tables import Customer, Invoice, Payment

__all__ = ["ImportReport", "import_ledger"]

BATCH_SIZE = 5_000
MAX_ID_LENGTH = 64
MAX_URL_LENGTH = 2048  # what browsers and mail clients reliably keep of a link
MAX_AMOUNT = Decimal(10) ** 14  # stored as 1/10,000 units in a BIGINT (max ~9.2e18)
YEARS = range(1900, 2200)  # dates outside are typing mistakes (and year 1 or 9999 overflow)

_DATE = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}")
_AMOUNT = re.compile(r"-?[0-9]+(?:\.[0-9]+)?")  # ASCII digits only: Decimal takes any script's
_CONTROL = {"Cc", "Cs", "Zl", "Zp"}  # NUL, other C0/C1 controls, surrogates, line separators
_NOT_COUNTRIES = frozenset(
    # Babel's territories that ISO 3166-1 does not assign to a country: the user-assigned
    # codes (AA, QM-QZ, XA-XZ, ZZ: "unknown region", Kosovo's XK) and the exceptionally
    # reserved ones (EU, UN, Canary Islands, ...). Numeric regions (001, 150) are not two letters.
    {"AA", "ZZ", "AC", "CP", "CQ", "DG", "EA", "EU", "EZ", "FX", "IC", "SU", "TA", "UK", "UN"}
    | {f"Q{letter}" for letter in "MNOPQRSTUVWXYZ"}
    | {f"X{letter}" for letter in "ABCDEFGHIJKLMNOPQRSTUVWXYZ"}
)
_BOOLEANS = {"true": True, "yes": True, "1": True, "false": False, "no": False, "0": False}
_UPSERT_INSERTS = {"sqlite": sqlite.insert, "postgresql": postgresql.insert}


@dataclass(frozen=True)
class ImportReport:
    """What an import wrote: rows per file, and the warnings that did not stop it."""

    files: dict[str, int]
    warnings: list[str]


class _Invalid(ValueError):
    """A value that does not fit its column; the message says why, in the user's terms."""


class _Unreadable(Exception):
    """A file that cannot be read as CSV from this line on (encoding, broken quoting)."""

    def __init__(self, line: int, why: str):
        super().__init__(why)
        self.line = line
        self.why = why


Problem = tuple[str | None, str]  # (column, why); no column for whole-row problems
Row = dict[str, Any]


@dataclass(frozen=True)
class CsvColumn:
    """One CSV column: how to parse a non-blank value, and what a blank one means."""

    name: str
    parse: Callable[[str], Any]
    required: bool = False
    default: Any = None


@dataclass(frozen=True)
class LedgerFile:
    """One ledger file: its table, columns, key, what its key must refer to, row-level rules."""

    name: str
    table: Table
    key: str
    columns: tuple[CsvColumn, ...]
    reference: tuple[str, LedgerFile] | None = None  # (column, the file whose key it names)
    check: Callable[[Row], Iterable[Problem]] = lambda row: ()
    carried: str | None = None  # a column its referrers check against (invoices: currency)
    check_referenced: Callable[[Row, Any], Iterable[Problem]] = lambda row, carried: ()
    derive: Callable[[Row], Row] = lambda row: {}


@dataclass
class _Header:
    """Where each known column sits in a file, and what was wrong with the header row."""

    positions: dict[str, int]
    width: int
    errors: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


# Parsers: each takes a stripped, non-blank value and returns what is stored, or raises _Invalid.


def _identifier(value: str) -> str:
    if len(value) > MAX_ID_LENGTH:
        raise _Invalid(f"{value[:20]!r}... is longer than {MAX_ID_LENGTH} characters")
    return _text(value)


def _text(value: str) -> str:
    """Any text but control characters: PostgreSQL refuses NUL, and none belongs in a name."""
    for position, char in enumerate(value, start=1):
        if unicodedata.category(char) in _CONTROL:
            raise _Invalid(
                f"{value[:40]!r} has a control character (U+{ord(char):04X}) at position {position}"
            )
    return value


def _email(value: str) -> str:
    """An address email-validator accepts (syntax only; IDN domains welcome), kept as given."""
    try:
        validate_email(value, check_deliverability=False)
    except EmailNotValidError as exc:
        raise _Invalid(f"{value!r} is not an email address: {exc}") from None
    return value


def _https_url(value: str) -> str:
    """An absolute https URL with a host, no spaces, at most MAX_URL_LENGTH characters: it goes
    into every email as a link, so anything else is refused rather than sent."""
    if len(value) > MAX_URL_LENGTH:
        raise _Invalid(f"{value[:40]!r}... is longer than {MAX_URL_LENGTH} characters")
    _text(value)
    try:
        parts = urlsplit(value)
        host = parts.hostname
    except ValueError as exc:
        raise _Invalid(f"{value[:80]!r} is not a URL: {exc}") from None
    if parts.scheme.lower() != "https":
        raise _Invalid(f"{value[:80]!r} is not an https:// URL")
    if not host or any(char.isspace() for char in value):
        raise _Invalid(f"{value[:80]!r} is not a URL (https://host/path, no spaces)")
    return value


def _boolean(value: str) -> bool:
    try:
        return _BOOLEANS[value.lower()]
    except KeyError:
        raise _Invalid(f"{value!r} is not true/false (or yes/no, 1/0)") from None


def _one_of(*choices: str) -> Callable[[str], str]:
    def parse(value: str) -> str:
        if value.lower() not in choices:
            raise _Invalid(f"{value!r} is not one of {'|'.join(choices)}")
        return value.lower()

    return parse


def _iso_date(value: str) -> date:
    try:
        day = date.fromisoformat(value) if _DATE.fullmatch(value) else None
    except ValueError:
        day = None
    if day is None:
        raise _Invalid(f"{value!r} is not a date (YYYY-MM-DD)")
    return _in_years(value, day)


def _in_years(value: str, moment: Any) -> Any:
    if moment.year not in YEARS:
        raise _Invalid(f"{value!r} is not between {YEARS.start} and {YEARS.stop - 1}")
    return moment


def _instant(value: str) -> datetime:
    """An ISO 8601 date-time with its UTC offset (or Z), returned in UTC."""
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        raise _Invalid(f"{value!r} is not a date-time (YYYY-MM-DDTHH:MM:SS+HH:MM)") from None
    if moment.tzinfo is None:
        raise _Invalid(f"{value!r} has no UTC offset; add Z or +HH:MM")
    if not value.isascii():
        raise _Invalid(f"{value!r} is not a date-time in ASCII digits")
    return _in_years(value, moment).astimezone(UTC)


def _amount(value: str) -> Decimal:
    if not _AMOUNT.fullmatch(value):
        raise _Invalid(f"{value!r} is not a decimal amount (like 1234.56)")
    amount = Decimal(value)
    if amount < 0:
        raise _Invalid(f"{value!r} is negative")
    if _decimal_places(amount) > SCALE:
        raise _Invalid(f"{value!r} has more than {SCALE} decimal places")
    if amount >= MAX_AMOUNT:
        raise _Invalid(f"{value!r} is too large")
    return amount


def _positive_amount(value: str) -> Decimal:
    amount = _amount(value)
    if amount == 0:
        raise _Invalid(f"{value!r} must be greater than 0")
    return amount


@lru_cache(maxsize=1024)
def _currency(value: str) -> str:
    code = value.upper()
    if not is_currency(code):
        raise _Invalid(f"{value!r} is not a known ISO 4217 currency code")
    return code


@lru_cache(maxsize=1024)
def _locale(value: str) -> str:
    try:
        return str(Locale.parse(value.replace("-", "_")))
    except (UnknownLocaleError, ValueError):
        raise _Invalid(f"{value!r} is not a known locale (like en, fr-FR)") from None


@lru_cache(maxsize=1024)
def _timezone(value: str) -> str:
    try:
        ZoneInfo(value)
    except (ZoneInfoNotFoundError, ValueError):
        raise _Invalid(f"{value!r} is not an IANA timezone (like Europe/Paris)") from None
    return value


@lru_cache(maxsize=1024)
def _country(value: str) -> str:
    code = value.upper()
    if not (_COUNTRY.fullmatch(code) and code in _countries()):
        raise _Invalid(f"{value!r} is not an ISO 3166 two-letter country code")
    return code


_COUNTRY = re.compile(r"[A-Z]{2}")


@lru_cache(maxsize=1)
def _countries() -> frozenset[str]:
    """The two-letter codes ISO 3166-1 assigns to countries, as Babel knows them."""
    return frozenset(Locale("en").territories) - _NOT_COUNTRIES


def _decimal_places(amount: Decimal) -> int:
    """Significant decimal places: 1500.00 has none, 12.50 has one."""
    exponent = amount.normalize().as_tuple().exponent
    return max(0, -exponent) if isinstance(exponent, int) else 0


# Row-level rules.


def _invoice_rules(row: Row) -> Iterator[Problem]:
    issued_on, due_on = row.get("issued_on"), row.get("due_on")
    if issued_on and due_on and due_on < issued_on:
        yield "due_on", f"{due_on} is before issued_on {issued_on}"
    yield from _precision(row.get("amount"), row.get("currency"), "")


def _payment_rules(row: Row, currency: str | None) -> Iterator[Problem]:
    """A payment is in its invoice's currency, so no finer than that currency's unit."""
    yield from _precision(row.get("amount"), currency, " (the invoice's currency)")


def _precision(amount: Decimal | None, currency: str | None, whose: str) -> Iterator[Problem]:
    if amount is not None and currency:
        allowed = get_currency_precision(currency)
        if _decimal_places(amount) > allowed:
            yield (
                "amount",
                f"{amount} has more decimal places than {currency}{whose} allows ({allowed})",
            )


def _business_day(settings: Settings) -> Callable[[Row], Row]:
    zone = ZoneInfo(settings.timezone)

    def derive(row: Row) -> Row:
        return {"attempted_on": row["attempted_at"].astimezone(zone).date()}

    return derive


def _ledger_files(settings: Settings) -> tuple[LedgerFile, ...]:
    """The three ledger files of the CSV contract (DESIGN.md), in foreign-key order."""
    customers = LedgerFile(
        name="customers.csv",
        table=Customer.__table__,  # type: ignore[attr-defined]
        key="customer_id",
        columns=(
            CsvColumn("customer_id", _identifier, required=True),
            CsvColumn("name", _text, required=True),
            CsvColumn("email", _email, required=True),
            CsvColumn("locale", _locale, default="en"),
            CsvColumn("timezone", _timezone, default=settings.timezone),
            CsvColumn("country", _country),
            CsvColumn("account_manager_email", _email),
            CsvColumn("do_not_contact", _boolean, default=False),
            CsvColumn("autopay", _boolean, default=False),
        ),
    )
    invoices = LedgerFile(
        name="invoices.csv",
        table=Invoice.__table__,  # type: ignore[attr-defined]
        key="invoice_id",
        reference=("customer_id", customers),
        columns=(
            CsvColumn("invoice_id", _identifier, required=True),
            CsvColumn("customer_id", _identifier, required=True),
            CsvColumn("issued_on", _iso_date, required=True),
            CsvColumn("due_on", _iso_date, required=True),
            CsvColumn("amount", _amount, required=True),
            CsvColumn("currency", _currency, required=True),
            CsvColumn("number", _text),
            CsvColumn("status", _one_of("open", "paid", "void", "disputed"), default="open"),
            CsvColumn("payment_url", _https_url),
        ),
        check=_invoice_rules,
        carried="currency",
    )
    payments = LedgerFile(
        name="payments.csv",
        table=Payment.__table__,  # type: ignore[attr-defined]
        key="payment_id",
        reference=("invoice_id", invoices),
        columns=(
            CsvColumn("payment_id", _identifier, required=True),
            CsvColumn("invoice_id", _identifier, required=True),
            CsvColumn("attempted_at", _instant, required=True),
            CsvColumn("amount", _positive_amount, required=True),
            CsvColumn("status", _one_of("succeeded", "failed", "refunded"), required=True),
            CsvColumn("failure_code", _text),
            CsvColumn("gateway", _text),
            CsvColumn("method", _text),
        ),
        derive=_business_day(settings),
        check_referenced=_payment_rules,
    )
    return customers, invoices, payments


def import_ledger(engine: Engine, directory: Path, settings: Settings) -> ImportReport:
    """Validate then upsert; raises ImportRejected with every error, nothing written.

    Any subset of customers.csv, invoices.csv and payments.csv may be present. The import owns
    its transaction: ids are checked against the database in the same transaction that writes.
    """
    files = [spec for spec in _ledger_files(settings) if (directory / spec.name).is_file()]
    if not files:
        expected = ", ".join(spec.name for spec in _ledger_files(settings))
        raise ImportRejected([f"{directory}: no ledger file found (expected any of {expected})"])
    with engine.begin() as conn:
        warnings = _validate(conn, directory, files)
        counts = {spec.name: _write(conn, spec, directory / spec.name) for spec in files}
        for spec in files:  # the next run plans its joins on what was just loaded
            refresh_statistics(conn, spec.table.name)
    return ImportReport(files=counts, warnings=warnings)


def _validate(conn: Connection, directory: Path, files: list[LedgerFile]) -> list[str]:
    """Check every file; raise ImportRejected with all errors, else return the warnings."""
    errors: list[str] = []
    warnings: list[str] = []
    keys: dict[str, dict[str, Any]] = {}
    for spec in files:
        known = None
        if spec.reference:
            target = spec.reference[1]
            known = _existing_ids(conn, target) | keys.get(target.name, {})
        file_errors, file_warnings, keys[spec.name] = _check_file(spec, directory, known)
        errors += file_errors
        warnings += file_warnings
    if errors:
        raise ImportRejected(errors)
    return warnings


def _check_file(
    spec: LedgerFile, directory: Path, known: dict[str, Any] | None
) -> tuple[list[str], list[str], dict[str, Any]]:
    """Every error and warning of one file, and the keys it defines with their carried value.

    `known` maps the ids the reference column may name (database and companion file) to
    their carried value; None when the file refers to nothing.
    """
    errors: list[str] = []
    warnings: list[str] = []
    first_seen: dict[str, int] = {}
    defined: dict[str, Any] = {}
    try:
        rows = _read(directory / spec.name)
        header = _header(spec, rows)
        errors += header.errors
        warnings += header.warnings
        for line, cells in rows:
            row, problems = _parse(spec, header, cells)
            problems += _key_problems(spec, row, line, first_seen, known)
            errors += [_message(spec.name, line, column, why) for column, why in problems]
            if row.get(spec.key) is not None:
                defined.setdefault(row[spec.key], row.get(spec.carried) if spec.carried else None)
    except _Unreadable as exc:
        errors.append(_message(spec.name, exc.line, None, exc.why))
    return errors, warnings, defined


def _key_problems(
    spec: LedgerFile, row: Row, line: int, first_seen: dict[str, int], known: dict[str, Any] | None
) -> list[Problem]:
    """Duplicate ids within the file, and references to ids that exist nowhere."""
    problems: list[Problem] = []
    key = row.get(spec.key)
    if key is not None and key in first_seen:
        problems.append((spec.key, f"{key!r} is already on line {first_seen[key]}"))
    elif key is not None:
        first_seen[key] = line
    if spec.reference and known is not None:
        column, target = spec.reference
        value = row.get(column)
        if value is not None and value not in known:
            problems.append((column, f"{value!r} is in neither the database nor {target.name}"))
        elif value is not None:
            problems += spec.check_referenced(row, known[value])
    return problems


def _write(conn: Connection, spec: LedgerFile, path: Path) -> int:
    """Upsert a checked file in batches; returns the number of rows written."""
    rows = _read(path)
    header = _header(spec, rows)
    parsed = (_parse(spec, header, cells)[0] for _line, cells in rows)
    count = 0
    while batch := list(islice(parsed, BATCH_SIZE)):
        _upsert(conn, spec, batch)
        count += len(batch)
    return count


def _upsert(conn: Connection, spec: LedgerFile, rows: list[Row]) -> None:
    """Insert new ids, overwrite the imported columns of existing ones (others untouched)."""
    insert = _UPSERT_INSERTS.get(conn.dialect.name)
    if insert is None:
        raise ConfigError(f"ledger import supports SQLite and PostgreSQL, not {conn.dialect.name}")
    statement = insert(spec.table)
    updates = {name: statement.excluded[name] for name in rows[0] if name != spec.key}
    conn.execute(statement.on_conflict_do_update(index_elements=[spec.key], set_=updates), rows)


def _existing_ids(conn: Connection, spec: LedgerFile) -> dict[str, Any]:
    """Every id already in the file's table with its carried value (or None), loaded once
    instead of one query per row."""
    if spec.carried is None:
        return dict.fromkeys(conn.scalars(select(spec.table.c[spec.key])))
    return dict(conn.execute(select(spec.table.c[spec.key], spec.table.c[spec.carried])).all())


def _read(path: Path) -> Iterator[tuple[int, list[str]]]:
    """Each non-blank CSV row with the physical line it starts on (the header is line 1)."""
    with path.open("rb") as raw:
        reader = csv.reader(_utf8_lines(raw))
        start = 1
        while True:
            try:
                cells = next(reader)
            except StopIteration:
                return
            except csv.Error as exc:
                raise _Unreadable(reader.line_num, f"not valid CSV: {exc}") from None
            if any(cell.strip() for cell in cells):
                yield start, cells
            start = reader.line_num + 1


def _utf8_lines(raw: BinaryIO) -> Iterator[str]:
    """Decode line by line so an encoding error names its line; a leading BOM is dropped."""
    for number, line in enumerate(raw, start=1):
        try:
            text = line.decode("utf-8")
        except UnicodeDecodeError as exc:
            byte = line[exc.start]
            why = f"not UTF-8 (byte 0x{byte:02x} at position {exc.start + 1}); save it as UTF-8"
            raise _Unreadable(number, why) from None
        yield text.removeprefix("\ufeff") if number == 1 else text


def _header(spec: LedgerFile, rows: Iterator[tuple[int, list[str]]]) -> _Header:
    """Read the header row: known columns located, unknown ones warned, missing ones errors."""
    first = next(rows, None)
    if first is None:
        return _Header({}, 0, errors=[_message(spec.name, 1, None, "empty file, no header row")])
    line, cells = first
    known = {column.name for column in spec.columns}
    header = _Header({}, len(cells))
    for position, cell in enumerate(cells):
        name = cell.strip().lower()
        if name in header.positions:
            header.errors.append(_message(spec.name, line, name, "column appears twice"))
        elif name in known:
            header.positions[name] = position
        else:
            label = cell.strip() or f"column {position + 1}"
            header.warnings.append(_message(spec.name, line, label, "unknown column ignored"))
    for column in spec.columns:
        if column.required and column.name not in header.positions:
            header.errors.append(_message(spec.name, line, column.name, "required column missing"))
    return header


def _parse(spec: LedgerFile, header: _Header, cells: list[str]) -> tuple[Row, list[Problem]]:
    """One row as the table's values, with every problem found in it.

    A blank optional value takes the column's default; an invalid value becomes None so the
    row-level rules skip it instead of reporting it twice.
    """
    row: Row = {}
    problems: list[Problem] = []
    if len(cells) > header.width:
        problems.append((None, f"{len(cells)} values but the header has {header.width} columns"))
    elif len(cells) < header.width:
        cells = cells + [""] * (header.width - len(cells))
    for column in spec.columns:
        position = header.positions.get(column.name)
        raw = cells[position].strip() if position is not None else ""
        if not raw:
            if column.required and position is not None:
                problems.append((column.name, "required value missing"))
            row[column.name] = column.default
            continue
        try:
            row[column.name] = column.parse(raw)
        except _Invalid as exc:
            row[column.name] = None
            problems.append((column.name, str(exc)))
    problems += spec.check(row)
    if not problems:
        row.update(spec.derive(row))
    return row, problems


def _message(file: str, line: int, column: str | None, why: str) -> str:
    """`file:line: column: why`, the one shape of every import error and warning."""
    return f"{file}:{line}: {column}: {why}" if column else f"{file}:{line}: {why}"
