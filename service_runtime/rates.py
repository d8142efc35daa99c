"""Published conversion rates (SPEC §8): what one unit of a credit unit is worth in a currency, and
the one rounding rule of a conversion. Shared by the ledger (PublishRate, ListRates), the
coordinator (how many units to reserve for a charge) and the invoice service (what they pay).

- A tenant publishes, per (credit unit, currency), versioned rates (1, 2, ...), each effective from
  an instant. The rate **in force at t** is the one with the latest `effective_at` <= t; several
  with that instant: the highest version (a correction). None: no conversion at t.
- A charge of `amount` (currency) at rate r needs **ceil(amount / r)** units, at the unit's scale.
- Units u pay **min(left, floor(u x r))** of a charge, at the currency's minor unit: never more
  than the charge, never more than the units are worth. A lot that pays a charge in part pays
  what its units are worth, rounded down.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from decimal import ROUND_CEILING, ROUND_FLOOR, Decimal

MAX_RATE_PLACES = 12


@dataclass(frozen=True)
class RateVersion:
    unit: str
    currency: str
    version: int
    rate: Decimal          # currency per one unit
    effective_at: datetime


def in_force(rates: Iterable[RateVersion], at: datetime) -> RateVersion | None:
    """The rate in force at `at`: latest effective_at <= at, then highest version; None if none."""
    best: RateVersion | None = None
    for r in rates:
        if r.effective_at <= at and (best is None or (r.effective_at, r.version) > (best.effective_at, best.version)):
            best = r
    return best


def units_needed(amount: Decimal, rate: Decimal, unit_scale: int) -> Decimal:
    """Units of a credit unit (at its scale) that pay `amount` of the currency at `rate`, rounded up."""
    return (amount / rate).quantize(Decimal(1).scaleb(-unit_scale), rounding=ROUND_CEILING)


def value_of(units: Decimal, rate: Decimal, currency_scale: int) -> Decimal:
    """What `units` are worth in the currency at `rate`, rounded down to its minor unit."""
    return (units * rate).quantize(Decimal(1).scaleb(-currency_scale), rounding=ROUND_FLOOR)


def applied_minor(left_minor: int, units: Decimal, rate: Decimal, currency_scale: int) -> int:
    """Minor units of a charge that `units` pay at `rate` when `left_minor` is still to pay."""
    worth = int(value_of(units, rate, currency_scale).scaleb(currency_scale))
    return max(min(left_minor, worth), 0)
