"""Billing periods: every `months` months from the subscription's anchor, days clamped to month end.

Period k is [anchor + k*months, anchor + (k+1)*months), each computed from the anchor (not chained),
so an anchor on the 31st bills Jan 31 -> Feb 28 -> Mar 31.
"""

from __future__ import annotations

import calendar
from dataclasses import dataclass
from datetime import datetime

INTERVAL_MONTHS = {"MONTHLY": 1, "QUARTERLY": 3, "YEARLY": 12}


@dataclass(frozen=True)
class Period:
    index: int
    start: datetime
    end: datetime


def add_months(anchor: datetime, months: int) -> datetime:
    total = anchor.year * 12 + (anchor.month - 1) + months
    year, month = divmod(total, 12)
    day = min(anchor.day, calendar.monthrange(year, month + 1)[1])
    return anchor.replace(year=year, month=month + 1, day=day)


def period(anchor: datetime, months: int, index: int) -> Period:
    return Period(index, add_months(anchor, index * months), add_months(anchor, (index + 1) * months))


def period_containing(anchor: datetime, months: int, instant: datetime) -> Period:
    """The period whose [start, end) holds `instant` (index may be negative before the anchor)."""
    guess = ((instant.year - anchor.year) * 12 + instant.month - anchor.month) // months
    p = period(anchor, months, guess)
    while instant < p.start:
        p = period(anchor, months, p.index - 1)
    while instant >= p.end:
        p = period(anchor, months, p.index + 1)
    return p


def period_starting_at(anchor: datetime, months: int, start: datetime) -> Period | None:
    """The period starting exactly at `start`, or None if `start` is not a period boundary."""
    p = period_containing(anchor, months, start)
    return p if p.start == start else None


# A period whose invoice is one of these is final: its charges will not change (ABANDONED: never billed).
SETTLED_STATUSES = frozenset({"FINALIZED", "VOIDED", "ABANDONED"})

