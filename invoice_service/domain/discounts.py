"""Coupons: percentage or amount discounts on one plan component's lines or on the whole invoice,
for a number of billing periods. Exact in minor units.

Order on an invoice (the one documented rule, README "Discounts, credits and taxes"):
1. every line is priced and rounded (and the minimum-commitment true-up computed from the usage
   lines' amounts *before* discounts);
2. line coupons (`applies_to` = a component code), then invoice coupons (`applies_to` = ""), each
   kind in redemption order; each coupon works on what is left of its lines after the coupons before it;
3. a coupon's discount is computed once on the total left on its lines — percent:
   round_half_up(total x percent / 100); amount: min(amount, total) — and spread over those lines in
   proportion to what is left of each (largest remainder), so no line goes below 0;
4. the line's net (amount - discount) is what credits may pay (the pieces the ledger reserves against
   sum to it); tax comes last (domain/taxes.py).
A coupon with `duration_periods` = N applies to the N billing periods starting with the one its
redemption falls in (0 = every period); an amount coupon in another currency than the invoice's
does not apply.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal

from invoice_service.domain.invoices import LineItem
from invoice_service.domain.money import round_to_minor
from invoice_service.domain.splitting import apportion

_HUNDRED = Decimal(100)


@dataclass(frozen=True)
class Coupon:
    coupon_code: str
    name: str
    percent_off: Decimal | None  # 0 < p <= 100
    amount_off: Decimal | None   # in `currency`, per period
    currency: str                # amount coupons only ("" for percent)
    duration_periods: int        # 0 = forever
    applies_to: str = ""         # "" = the whole invoice; else a plan component code
    created_at: datetime | None = None


@dataclass(frozen=True)
class Redemption:
    customer_id: str
    coupon: Coupon
    redeemed_at: datetime
    created_at: datetime | None = None

    def covers(self, first_index: int, period_index: int) -> bool:
        """Whether the period numbered `period_index` is within the coupon's duration, counted from
        the period the redemption falls in (`first_index`)."""
        if period_index < first_index:
            return False
        return self.coupon.duration_periods == 0 or period_index < first_index + self.coupon.duration_periods


def coupon_discount(coupon: Coupon, base_minor: int, scale: int, currency: str) -> int:
    """What `coupon` takes off `base_minor` (what is left on its lines), never more than the base."""
    if base_minor <= 0:
        return 0
    if coupon.percent_off is not None:
        return min(round_to_minor(Decimal(base_minor).scaleb(-scale) * coupon.percent_off / _HUNDRED, scale),
                   base_minor)
    if coupon.amount_off is None or coupon.currency != currency:
        return 0
    return min(round_to_minor(coupon.amount_off, scale), base_minor)


def apply_coupons(items: Sequence[LineItem], coupons: Sequence[Coupon], scale: int,
                  currency: str) -> list[LineItem]:
    """The line items with `discount_minor` (and the codes that gave it) set; `coupons` in
    redemption order. Line coupons first, then invoice coupons."""
    left = [i.amount_minor for i in items]
    discount = [0] * len(items)
    codes: list[list[str]] = [[] for _ in items]
    ordered = [c for c in coupons if c.applies_to] + [c for c in coupons if not c.applies_to]
    for coupon in ordered:
        targets = [n for n, i in enumerate(items) if not coupon.applies_to or i.code == coupon.applies_to]
        base = sum(left[n] for n in targets)
        total = coupon_discount(coupon, base, scale, currency)
        if total == 0:
            continue
        for n, share in zip(targets, apportion(total, [left[n] for n in targets]), strict=True):
            if share:
                left[n] -= share
                discount[n] += share
                codes[n].append(coupon.coupon_code)
    return [dataclasses.replace(i, discount_minor=d, discount_codes=tuple(c))
            for i, d, c in zip(items, discount, codes, strict=True)]
