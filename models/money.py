"""Exact money in the database.

Amounts are stored as integers of 1/10,000 of the currency unit (BIGINT), so that every
database sums them exactly: SQLite has no exact decimal type and would otherwise fall back to
floating point. Four places cover every ISO 4217 currency (the largest exponent is 3).
Python sees `Decimal` on both sides.
"""

from __future__ import annotations

from decimal import Decimal, InvalidOperation

from sqlalchemy import BigInteger
from sqlalchemy.types import TypeDecorator

SCALE = 4
_FACTOR = Decimal(10) ** SCALE
_QUANTUM = Decimal(1).scaleb(-SCALE)


class MoneyPrecisionError(ValueError):
    """Raised when an amount has more decimal places than the storage keeps."""


def to_units(amount: Decimal | int) -> int:
    """Convert an amount to stored units, refusing to round silently."""
    value = Decimal(amount)
    units = value * _FACTOR
    if units != units.to_integral_value():
        raise MoneyPrecisionError(f"{amount} has more than {SCALE} decimal places")
    return int(units)


def from_units(units: int) -> Decimal:
    """Convert stored units back to a Decimal with exactly SCALE places."""
    return (Decimal(int(units)) / _FACTOR).quantize(_QUANTUM)


class Money(TypeDecorator[Decimal]):
    """A Decimal column stored as scaled BIGINT; SQL sums and comparisons stay exact."""

    impl = BigInteger
    cache_ok = True

    def process_bind_param(self, value: Decimal | int | None, dialect: object) -> int | None:
        if value is None:
            return None
        try:
            return to_units(value)
        except InvalidOperation as exc:  # pragma: no cover - Decimal() already validated
            raise MoneyPrecisionError(str(exc)) from exc

    def process_result_value(self, value: int | None, dialect: object) -> Decimal | None:
        if value is None:
            return None
        return from_units(value)

    def coerce_compared_value(self, op: object, value: object) -> TypeDecorator[Decimal]:
        return self
