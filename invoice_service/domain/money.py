"""Currency scales (service_runtime.currencies) and the one rounding rule: ROUND_HALF_UP, per line item."""

from __future__ import annotations

from decimal import ROUND_HALF_UP, Decimal

from service_runtime.amounts import format_minor
from service_runtime.currencies import scale_of
from service_runtime.rejections import invalid


def currency_scale(currency: str, field: str = "currency") -> int:
    """The ISO 4217 minor-unit scale of `currency` (service_runtime.currencies, the one catalog the
    ledger's built-in units come from too: a plan is never priced in money the ledger cannot hold),
    or INVALID naming `field` for anything else."""
    if not currency:
        raise invalid(field, "is required (e.g. USD)")
    scale = scale_of(currency)
    if scale is None:
        raise invalid(field, f"unsupported currency {currency[:16]!r}: not an ISO 4217 currency code "
                             "(upper case, e.g. USD, EUR, JPY, KWD)")
    return scale


def round_to_minor(amount: Decimal, scale: int) -> int:
    """Exact amount -> integer minor units, ROUND_HALF_UP (0.005 USD -> 1 cent)."""
    return int(amount.scaleb(scale).quantize(Decimal(1), rounding=ROUND_HALF_UP))


def to_text(minor: int, scale: int) -> str:
    return format_minor(minor, scale)


def decimal_text(value: Decimal) -> str:
    """A Decimal as plain text without exponent or trailing zeros ("1.50" -> "1.5", 1E+3 -> "1000")."""
    if value == value.to_integral_value():
        return str(value.quantize(Decimal(1)))
    text = format(value.normalize(), "f")
    return text
