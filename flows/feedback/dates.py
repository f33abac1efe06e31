"""Dates written in a reply, as English, French and German write them, so "I need more
time" can carry the day the customer names.

Forms read: "by 15 December", "December 15th, 2026", "le 15 décembre", "bis zum 15.
Dezember", 15/12/2026, 15.12.2026, "15.12.", 2026-12-15.

Month names come from Babel (wide and abbreviated, in each language of the rule set), so a
language added to the rules brings its months along. The text searched is the reply folded
as the rules see it (lower case, no accents: `policy.replies.folded`). Numeric dates are read
day first (15/12/2026, 15.12.2026), as English outside the US, French and German write them,
unless the second number cannot be a month (12/15/2026 is read as 15 December). A date
without a year is the one of that day and month nearest to today: "3 December" written on
5 December is two days ago, "2 January" the coming one.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from datetime import date
from functools import lru_cache

from babel.dates import get_month_names

from collectflow.flows.policy.replies import folded


@lru_cache(maxsize=8)
def month_numbers(languages: tuple[str, ...]) -> dict[str, int]:
    """Every month name of `languages` (folded, without a final dot) -> month number."""
    names: dict[str, int] = {}
    for language in languages:
        for width in ("wide", "abbreviated"):
            for context in ("format", "stand-alone"):
                try:
                    months = get_month_names(width, context=context, locale=language)
                except (ValueError, LookupError):  # a language Babel does not know
                    continue
                for number, name in months.items():
                    names[folded(name).rstrip(".")] = number
    return names


@lru_cache(maxsize=8)
def date_pattern(languages: tuple[str, ...]) -> re.Pattern[str]:
    """One expression for every written form, so a scan finds them left to right."""
    months = sorted(month_numbers(languages), key=len, reverse=True)
    month = "(?:" + "|".join(re.escape(name) for name in months) + r")\.?"
    return re.compile(
        rf"\b(?P<iso_y>\d{{4}})-(?P<iso_m>\d{{1,2}})-(?P<iso_d>\d{{1,2}})\b"
        rf"|\b(?P<dm_d>\d{{1,2}})(?:st|nd|rd|th|er|e|\.)?\s+(?:of\s+|de\s+)?(?P<dm_m>{month})"
        rf"(?:,?\s+(?P<dm_y>\d{{4}}))?(?!\w)"
        rf"|\b(?P<md_m>{month})\s+(?P<md_d>\d{{1,2}})(?:st|nd|rd|th)?(?!\d)"
        rf"(?:,?\s+(?P<md_y>\d{{4}}))?"
        r"|\b(?P<n_a>\d{1,2})(?P<sep>[./])(?P<n_b>\d{1,2})(?P=sep)(?P<n_y>\d{4}|\d{2})\b"
        r"|\b(?P<de_d>\d{1,2})\.(?P<de_m>\d{1,2})\.(?!\d)"
    )


def dates_in(text: str, today: date, languages: Iterable[str] = ("en", "fr", "de")) -> list[date]:
    """The real dates written in `text`, in the order written (impossible ones skipped)."""
    languages = tuple(sorted(languages))
    names = month_numbers(languages)
    found = []
    for match in date_pattern(languages).finditer(folded(text)):
        parts = _parts(match.groupdict(), names)
        if parts is None:
            continue
        year, month, day = parts
        written = _dated(year, month, day) if year else _nearest(month, day, today)
        if written is not None:
            found.append(written)
    return found


def _parts(groups: dict[str, str | None], names: dict[str, int]) -> tuple[int, int, int] | None:
    """(year or 0, month, day) of one match."""
    if groups["iso_y"]:
        return int(groups["iso_y"]), int(groups["iso_m"] or 0), int(groups["iso_d"] or 0)
    if groups["dm_d"]:
        month = names[(groups["dm_m"] or "").rstrip(".")]
        return int(groups["dm_y"] or 0), month, int(groups["dm_d"])
    if groups["md_m"]:
        month = names[groups["md_m"].rstrip(".")]
        return int(groups["md_y"] or 0), month, int(groups["md_d"] or 0)
    if groups["n_a"]:
        first, second = int(groups["n_a"]), int(groups["n_b"] or 0)
        day, month = (second, first) if second > 12 >= first else (first, second)
        year = int(groups["n_y"] or 0)
        return (year + 2000 if year < 100 else year), month, day
    if groups["de_d"]:
        return 0, int(groups["de_m"] or 0), int(groups["de_d"])
    return None


def _dated(year: int, month: int, day: int) -> date | None:
    try:
        return date(year, month, day)
    except ValueError:
        return None


def _nearest(month: int, day: int, today: date) -> date | None:
    """The date of that day and month nearest to today (last year, this year or next)."""
    candidates = [_dated(today.year + shift, month, day) for shift in (-1, 0, 1)]
    real = [candidate for candidate in candidates if candidate is not None]
    return min(real, key=lambda candidate: abs((candidate - today).days), default=None)
