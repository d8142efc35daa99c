"""Accounting periods: a UTC calendar month ("2026-11") or day ("2026-11-05"), half-open [start, end). Pure."""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from service_runtime.rejections import invalid

_MONTH = re.compile(r"^(\d{4})-(\d{2})$")
_DAY = re.compile(r"^(\d{4})-(\d{2})-(\d{2})$")


class Granularity(enum.StrEnum):
    MONTH = "MONTH"
    DAY = "DAY"


@dataclass(frozen=True, slots=True)
class Period:
    granularity: Granularity
    start: datetime
    end: datetime

    @property
    def name(self) -> str:
        return self.start.strftime("%Y-%m" if self.granularity is Granularity.MONTH else "%Y-%m-%d")

    def next(self) -> Period:
        return period_of(self.end, self.granularity)


def month_after(start: datetime) -> datetime:
    return start.replace(year=start.year + 1, month=1) if start.month == 12 else start.replace(month=start.month + 1)


def period_of(at: datetime, granularity: Granularity) -> Period:
    """The period holding the instant `at`."""
    at = at.astimezone(UTC)
    if granularity is Granularity.DAY:
        start = at.replace(hour=0, minute=0, second=0, microsecond=0)
        return Period(granularity, start, start + timedelta(days=1))
    start = at.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
    return Period(granularity, start, month_after(start))


def parse_period(text: str, field: str = "period") -> Period:
    """"2026-11" is a month, "2026-11-05" a day; anything else is INVALID_ARGUMENT naming `field`."""
    text = text.strip()
    try:
        if m := _MONTH.match(text):
            return period_of(datetime(int(m[1]), int(m[2]), 1, tzinfo=UTC), Granularity.MONTH)
        if m := _DAY.match(text):
            return period_of(datetime(int(m[1]), int(m[2]), int(m[3]), tzinfo=UTC), Granularity.DAY)
    except ValueError:
        pass
    shown = text if len(text) <= 32 else text[:32] + "..."
    raise invalid(field, f"{shown!r} is not a period: YYYY-MM (a month) or YYYY-MM-DD (a day), UTC")


def periods_between(start: datetime, end: datetime, granularity: Granularity) -> list[Period]:
    """Every period of `granularity` that overlaps [start, end)."""
    out = []
    p = period_of(start, granularity)
    while p.start < end:
        out.append(p)
        p = p.next()
    return out
