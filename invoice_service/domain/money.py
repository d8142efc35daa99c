"""Currencies and the one rounding rule: ROUND_HALF_UP to the currency's minor unit, per line item."""

from __future__ import annotations

from decimal import ROUND_HALF_UP, Decimal

from service_runtime.amounts import format_minor, parse_minor
from service_runtime.rejections import invalid

# ISO 4217 codes we bill in, with their minor-unit scale.
CURRENCY_SCALES: dict[str, int] = {
    "USD": 2, "EUR": 2, "GBP": 2, "CHF": 2, "CAD": 2, "AUD": 2, "NZD": 2, "SEK": 2, "NOK": 2,
    "DKK": 2, "PLN": 2, "CZK": 2, "INR": 2, "BRL": 2, "MXN": 2, "SGD": 2, "HKD": 2, "CNY": 2,
    "ZAR": 2, "JPY": 0, "KRW": 0, "CLP": 0, "ISK": 0, "KWD": 3, "BHD": 3, "JOD": 3, "OMR": 3,
}


def currency_scale(currency: str, field: str = "currency") -> int:
    """The minor-unit scale of `currency`, or INVALID naming `field` for an unsupported one."""
    if not currency:
        raise invalid(field, "is required (e.g. USD)")
    scale = CURRENCY_SCALES.get(currency)
    if scale is None:
        raise invalid(field, f"unsupported currency {currency[:16]!r}; supported: "
                             + ", ".join(sorted(CURRENCY_SCALES)))
    return scale


def round_to_minor(amount: Decimal, scale: int) -> int:
    """Exact amount -> integer minor units, ROUND_HALF_UP (0.005 USD -> 1 cent)."""
    return int(amount.scaleb(scale).quantize(Decimal(1), rounding=ROUND_HALF_UP))


def to_text(minor: int, scale: int) -> str:
    return format_minor(minor, scale)


def parse_money(text: str, scale: int, field: str, *, allow_zero: bool = False) -> int:
    """A positive (or zero) money amount with at most `scale` decimals, as minor units."""
    return parse_minor(text, scale, field, allow_zero=allow_zero)


def decimal_text(value: Decimal) -> str:
    """A Decimal as plain text without exponent or trailing zeros ("1.50" -> "1.5", 1E+3 -> "1000")."""
    if value == value.to_integral_value():
        return str(value.quantize(Decimal(1)))
    text = format(value.normalize(), "f")
    return text
