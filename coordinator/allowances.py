"""Recurring allowances, the pure rules: calendar periods, the grant a period is owed, pro-rating.

No I/O: the GrantAllowance workflow calls these with the period's instant (its schedule's scheduled
start time, or the sign-up instant for the first grant), so the same period always yields the same
grant, whichever run asks (a schedule run, a backfill, a worker's retry, a repeated sign-up):
- Periods are calendar periods in UTC, `[start, end)`: a month from the 1st 00:00, a week from
  Monday 00:00, a day from 00:00. The schedule fires at each period's start.
- A period that ends at or before the allowance's `starts_at` (sign-up) is owed nothing.
- A period that starts at or after `starts_at` is owed the whole `amount`, effective at its start,
  expiring at its end.
- The first period (the one `starts_at` falls in, unless it starts exactly there) is owed per
  `first_grant`: PRO_RATED = `amount` x (end - starts_at) / (end - start) in whole seconds, rounded
  down to the unit's scale (a grant of 0 is no grant); FULL = the whole amount; NONE = nothing.
  Either grant is effective from `starts_at` (the customer was not signed up before) to the end.
"""

from __future__ import annotations

import calendar
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import ROUND_DOWN, Decimal
from enum import StrEnum

from coordinator.messages import AllowanceSpec


class Cadence(StrEnum):
    """credits.billing.v1.AllowanceCadence, by name."""

    MONTHLY = "MONTHLY"
    WEEKLY = "WEEKLY"
    DAILY = "DAILY"


class FirstGrant(StrEnum):
    """credits.billing.v1.FirstGrant, by name."""

    PRO_RATED = "PRO_RATED"
    FULL = "FULL"
    NONE = "NONE"


@dataclass(frozen=True)
class Period:
    start: datetime
    end: datetime


@dataclass(frozen=True)
class GrantPlan:
    """What one period of an allowance grants (effective_at may be later than the period's start)."""

    period: Period
    amount: str
    effective_at: datetime
    expires_at: datetime


def utc_instant(iso: str) -> datetime:
    """An ISO-8601 instant of a payload (no offset: UTC)."""
    value = datetime.fromisoformat(iso)
    return value.astimezone(UTC) if value.tzinfo else value.replace(tzinfo=UTC)


def period_containing(cadence: Cadence, instant: datetime) -> Period:
    """The calendar period (UTC) that `instant` lies in."""
    at = instant.astimezone(UTC)
    midnight = at.replace(hour=0, minute=0, second=0, microsecond=0)
    if cadence is Cadence.DAILY:
        return Period(midnight, midnight + timedelta(days=1))
    if cadence is Cadence.WEEKLY:
        monday = midnight - timedelta(days=midnight.weekday())
        return Period(monday, monday + timedelta(days=7))
    first = midnight.replace(day=1)
    days = calendar.monthrange(first.year, first.month)[1]
    return Period(first, first + timedelta(days=days))


def prorate(amount: str, scale: int, covered: timedelta, whole: timedelta) -> str:
    """`amount` x covered / whole (whole seconds), rounded down to `scale` decimal places."""
    covered_s, whole_s = int(covered.total_seconds()), int(whole.total_seconds())
    if not 0 <= covered_s <= whole_s or whole_s <= 0:
        raise ValueError(f"covered {covered_s}s is not within a period of {whole_s}s")
    exact = Decimal(amount) * covered_s / whole_s
    return str(exact.quantize(Decimal(1).scaleb(-scale), rounding=ROUND_DOWN))


def grant_for(spec: AllowanceSpec, instant: datetime) -> GrantPlan | None:
    """The grant the period containing `instant` is owed (None: nothing, see the module docstring)."""
    period = period_containing(Cadence(spec.cadence), instant)
    starts_at = utc_instant(spec.starts_at)
    if period.end <= starts_at:
        return None
    if period.start >= starts_at:
        return GrantPlan(period, spec.amount, period.start, period.end)
    first = FirstGrant(spec.first_grant)
    if first is FirstGrant.NONE:
        return None
    amount = spec.amount
    if first is FirstGrant.PRO_RATED:
        amount = prorate(spec.amount, spec.unit_scale, period.end - starts_at, period.end - period.start)
        if not Decimal(amount):
            return None
    return GrantPlan(period, amount, starts_at, period.end)
