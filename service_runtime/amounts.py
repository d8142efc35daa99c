"""Exact amounts: decimal strings on the wire, integers in minor units inside.

A unit has a scale (USD 2, JPY 0, token 0); "12.5" in USD is 1250 minor units. An amount with
more decimals than the scale is rejected rather than rounded: credits are never approximated.
"""

from __future__ import annotations

import re
from decimal import Decimal

from service_runtime.rejections import invalid

_DECIMAL = re.compile(r"^-?(0|[1-9]\d{0,17})(\.\d{1,18})?$")
MAX_MINOR = 10**18  # fits bigint with room for sums of a few thousand


def parse_minor(text: str, scale: int, field: str, *, allow_zero: bool = False,
                allow_negative: bool = False) -> int:
    """Parses a decimal string into minor units of a unit with `scale` decimals."""
    if text.isdigit() and text.isascii() and (text[0] != "0" or text == "0") and len(text) <= 18:
        result = int(text) * 10**scale  # fast path: a plain whole number
        if result == 0 and not allow_zero:
            raise invalid(field, "must be positive")
        if result >= MAX_MINOR:
            raise invalid(field, "is too large")
        return result
    text = text.strip()
    if not _DECIMAL.match(text):
        raise invalid(field, f"must be a decimal number like 12.50, got {text[:40]!r}")
    value = Decimal(text)
    minor = value.scaleb(scale)
    if minor != minor.to_integral_value():
        raise invalid(field, f"has more than {scale} decimal places for this unit")
    result = int(minor)
    if result < 0 and not allow_negative:
        raise invalid(field, "must be positive")
    if result == 0 and not allow_zero:
        raise invalid(field, "must be positive")
    if abs(result) >= MAX_MINOR:
        raise invalid(field, "is too large")
    return result


def format_minor(minor: int, scale: int) -> str:
    """Formats minor units as a decimal string with exactly `scale` decimals."""
    if scale == 0:
        return str(minor)
    sign = "-" if minor < 0 else ""
    digits = str(abs(minor)).rjust(scale + 1, "0")
    return f"{sign}{digits[:-scale]}.{digits[-scale:]}"


def parse_decimal(text: str, field: str, *, max_places: int = 9) -> Decimal:
    """Parses a non-negative decimal (prices, cost basis) keeping at most `max_places` decimals."""
    text = text.strip() or "0"
    if not _DECIMAL.match(text) or text.startswith("-"):
        raise invalid(field, f"must be a non-negative decimal, got {text[:40]!r}")
    value = Decimal(text)
    exponent = value.as_tuple().exponent
    if isinstance(exponent, int) and -exponent > max_places:
        raise invalid(field, f"has more than {max_places} decimal places")
    return value
