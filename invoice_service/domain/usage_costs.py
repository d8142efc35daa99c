"""What each usage bucket cost and how much credit paid it: an invoice's usage line spread over the
buckets of the events it billed.

A USAGE line item carries one amount for its whole service interval (graduated and volume tiers
price the interval's total, not a day), so a bucket's share is its weight in the line: the summed
quantity for a SUM meter, the events for COUNT, MAX and UNIQUE_COUNT meters. The line's amount and
the credits applied to it are spread in integer minor units by largest remainder.

Invariant (checked by seeded random tests, tests/invoice/test_usage_costs.py): the shares of a
line add up to its amount (and to its credits) exactly, each share is >= 0, and a bucket with
twice the weight never gets less than one with less weight.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal


def spread(amount_minor: int, weights: Sequence[Decimal]) -> list[int]:
    """`amount_minor` split over `weights` (each >= 0) in proportion, exactly: floors first, then one
    minor unit each to the largest remainders (ties: the larger weight, then the earlier bucket).
    No positive weight: nothing to spread over (all zeros)."""
    total = sum(weights, Decimal(0))
    if total <= 0 or amount_minor == 0:
        return [0] * len(weights)
    exact = [amount_minor * w / total for w in weights]
    shares = [int(x) for x in exact]  # floor: amount and weights are >= 0
    left = amount_minor - sum(shares)
    order = sorted(range(len(weights)), key=lambda i: (-(exact[i] - shares[i]), -weights[i], i))
    for i in order[:left]:
        shares[i] += 1
    return shares


@dataclass(frozen=True, slots=True)
class BilledLine:
    """A USAGE line item of a frozen invoice, and the weight of each of its buckets (in the asked
    window or not: the spread is over the whole line, only the window's buckets are kept)."""

    meter_code: str
    currency: str
    amount_minor: int
    credits_minor: int
    buckets: tuple[tuple[datetime, bool, Decimal], ...]   # (bucket start, inside the window, weight)


@dataclass
class BucketCost:
    by_currency: dict[str, tuple[int, int]] = field(default_factory=dict)   # currency -> (cost, credits)

    def add(self, currency: str, cost: int, credits: int) -> None:
        c, k = self.by_currency.get(currency, (0, 0))
        self.by_currency[currency] = (c + cost, k + credits)


def bucket_costs(lines: Sequence[BilledLine]) -> dict[tuple[str, datetime], BucketCost]:
    """(meter, bucket start) -> what the window's buckets cost and the credits that paid them."""
    out: dict[tuple[str, datetime], BucketCost] = {}
    for line in lines:
        weights = [w for _, _, w in line.buckets]
        costs, credits = spread(line.amount_minor, weights), spread(line.credits_minor, weights)
        for (at, inside, _), cost, credit in zip(line.buckets, costs, credits, strict=True):
            if inside:
                out.setdefault((line.meter_code, at), BucketCost()).add(line.currency, cost, credit)
    return out
