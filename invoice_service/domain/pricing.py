"""Price models: flat, per unit, package, graduated and volume tiers — exact Decimal arithmetic.

A tier covers quantities in (previous up_to, up_to]; the last tier is unbounded. Tiered prices are
always applied to the whole period's quantity; splitting a line item apportions the result.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass
from decimal import ROUND_CEILING, Decimal
from typing import Any

from service_runtime.amounts import parse_decimal
from service_runtime.rejections import invalid

_ZERO = Decimal(0)
_AVERAGE_PLACES = Decimal("1e-9")


class PriceModel(enum.Enum):
    FLAT = "FLAT"
    PER_UNIT = "PER_UNIT"
    PACKAGE = "PACKAGE"
    GRADUATED = "GRADUATED"
    VOLUME = "VOLUME"


@dataclass(frozen=True)
class Tier:
    up_to: Decimal | None  # None = unbounded (last tier only)
    unit_amount: Decimal
    flat_amount: Decimal


@dataclass(frozen=True)
class Price:
    model: PriceModel
    unit_amount: Decimal = _ZERO
    flat_amount: Decimal = _ZERO
    package_size: Decimal = _ZERO
    tiers: tuple[Tier, ...] = ()

    def to_json(self) -> dict[str, Any]:
        return {
            "model": self.model.value,
            "unit_amount": str(self.unit_amount),
            "flat_amount": str(self.flat_amount),
            "package_size": str(self.package_size),
            "tiers": [
                {"up_to": None if t.up_to is None else str(t.up_to), "unit_amount": str(t.unit_amount),
                 "flat_amount": str(t.flat_amount)}
                for t in self.tiers
            ],
        }

    @staticmethod
    def from_json(data: dict[str, Any]) -> Price:
        return Price(
            model=PriceModel(data["model"]),
            unit_amount=Decimal(data["unit_amount"]),
            flat_amount=Decimal(data["flat_amount"]),
            package_size=Decimal(data["package_size"]),
            tiers=tuple(
                Tier(None if t["up_to"] is None else Decimal(t["up_to"]), Decimal(t["unit_amount"]),
                     Decimal(t["flat_amount"]))
                for t in data["tiers"]
            ),
        )


@dataclass(frozen=True)
class TierInput:
    """A tier as it arrives on the wire (decimal strings, "" = unbounded)."""

    up_to: str
    unit_amount: str
    flat_amount: str


def build_price(model: PriceModel | None, unit_amount: str, flat_amount: str, package_size: str,
                tiers: Sequence[TierInput], field: str) -> Price:
    """Validates wire values into a Price; every rejection names the offending field."""
    if model is None:
        raise invalid(f"{field}.model", "is required (FLAT, PER_UNIT, PACKAGE, GRADUATED or VOLUME)")
    unit = parse_decimal(unit_amount, f"{field}.unit_amount")
    flat = parse_decimal(flat_amount, f"{field}.flat_amount")
    if model is PriceModel.FLAT:
        if not flat_amount.strip():
            raise invalid(f"{field}.flat_amount", "is required for a FLAT price")
        return Price(model, flat_amount=flat)
    if model is PriceModel.PER_UNIT:
        if not unit_amount.strip():
            raise invalid(f"{field}.unit_amount", "is required for a PER_UNIT price")
        return Price(model, unit_amount=unit)
    if model is PriceModel.PACKAGE:
        size = parse_decimal(package_size, f"{field}.package_size")
        if size <= 0:
            raise invalid(f"{field}.package_size", "must be positive for a PACKAGE price")
        if not unit_amount.strip():
            raise invalid(f"{field}.unit_amount", "is required for a PACKAGE price (amount per package)")
        return Price(model, unit_amount=unit, package_size=size)
    return Price(model, tiers=_build_tiers(tiers, f"{field}.tiers"))


def _build_tiers(tiers: Sequence[TierInput], field: str) -> tuple[Tier, ...]:
    if not tiers:
        raise invalid(field, "a tiered price needs at least one tier")
    if len(tiers) > 100:
        raise invalid(field, "at most 100 tiers")
    built: list[Tier] = []
    previous = _ZERO
    for i, t in enumerate(tiers):
        last = i == len(tiers) - 1
        up_to: Decimal | None = None
        if t.up_to.strip():
            up_to = parse_decimal(t.up_to, f"{field}[{i}].up_to")
            if up_to <= previous:
                raise invalid(f"{field}[{i}].up_to",
                              f"tiers must be in ascending order without overlap: {up_to} is not above "
                              f"the previous bound {previous}")
            previous = up_to
        elif not last:
            raise invalid(f"{field}[{i}].up_to", "only the last tier may be unbounded")
        if last and up_to is not None:
            raise invalid(f"{field}[{i}].up_to", "the last tier must be unbounded (up_to empty)")
        built.append(Tier(up_to, parse_decimal(t.unit_amount, f"{field}[{i}].unit_amount"),
                          parse_decimal(t.flat_amount, f"{field}[{i}].flat_amount")))
    return tuple(built)


@dataclass(frozen=True)
class Priced:
    """An exact (unrounded) amount for a quantity, and the unit price shown on the line item."""

    amount: Decimal
    unit_price: Decimal


def price_quantity(price: Price, quantity: Decimal) -> Priced:
    """Prices a whole period's quantity. A negative total (allowed corrections) is priced as 0."""
    q = max(quantity, _ZERO)
    if price.model is PriceModel.FLAT:
        return Priced(price.flat_amount if q > 0 else _ZERO, price.flat_amount)
    if price.model is PriceModel.PER_UNIT:
        return Priced(q * price.unit_amount, price.unit_amount)
    if price.model is PriceModel.PACKAGE:
        packages = (q / price.package_size).to_integral_value(rounding=ROUND_CEILING)
        return Priced(packages * price.unit_amount, price.unit_amount)
    if price.model is PriceModel.GRADUATED:
        amount = graduated_amount(price.tiers, q)
        unit = (amount / q).quantize(_AVERAGE_PLACES) if q > 0 else price.tiers[0].unit_amount
        return Priced(amount, unit)
    tier = volume_tier(price.tiers, q)
    amount = q * tier.unit_amount + tier.flat_amount if q > 0 else _ZERO
    return Priced(amount, tier.unit_amount)


def graduated_amount(tiers: Sequence[Tier], q: Decimal) -> Decimal:
    amount = _ZERO
    lower = _ZERO
    for tier in tiers:
        if q <= lower:
            break
        upper = q if tier.up_to is None else min(q, tier.up_to)
        amount += (upper - lower) * tier.unit_amount + tier.flat_amount
        if tier.up_to is None:
            break
        lower = tier.up_to
    return amount


def volume_tier(tiers: Sequence[Tier], q: Decimal) -> Tier:
    for tier in tiers:
        if tier.up_to is None or q <= tier.up_to:
            return tier
    return tiers[-1]
