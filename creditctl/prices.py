"""Prices written on one flag, as `creditctl plans create --usage METER=PRICE` takes them.

    per_unit:0.00001                 quantity x 0.00001
    flat:10.00                       10.00 once per period when the quantity is > 0
    package:5.00/1000                5.00 per started package of 1000
    graduated:1000@0.01,@0.005       tiers UP_TO@UNIT_AMOUNT[+FLAT]; the last one has no UP_TO
    volume:1000@0.01,@0.008+5.00     every unit at the tier the total falls in (plus its flat amount)

Amounts stay decimal strings: the invoice service checks them (scale, sign) and names the field.
"""

from __future__ import annotations

from typing import Any

from credits.invoice.v1 import invoice_pb2 as ipb

MODELS = ("per_unit", "flat", "package", "graduated", "volume")


def parse_price(text: str) -> ipb.Price:
    """The Price for `text`; ValueError saying what a price looks like otherwise."""
    model, sep, rest = text.strip().partition(":")
    model = model.lower().replace("-", "_")
    if not sep or model not in MODELS or not rest:
        raise ValueError(f"{text!r} is not a price: use {', '.join(m + ':...' for m in MODELS)}")
    if model == "per_unit":
        return ipb.Price(model=ipb.PER_UNIT, unit_amount=rest)
    if model == "flat":
        return ipb.Price(model=ipb.FLAT, flat_amount=rest)
    if model == "package":
        amount, slash, size = rest.partition("/")
        if not slash or not amount or not size:
            raise ValueError(f"{text!r}: a package price is package:AMOUNT/SIZE, e.g. package:5.00/1000")
        return ipb.Price(model=ipb.PACKAGE, unit_amount=amount, package_size=size)
    tiers = [_tier(t, text) for t in rest.split(",")]
    return ipb.Price(model=ipb.GRADUATED if model == "graduated" else ipb.VOLUME, tiers=tiers)


def _tier(text: str, whole: str) -> ipb.Tier:
    up_to, at, amounts = text.strip().partition("@")
    if not at or not amounts:
        raise ValueError(f"{whole!r}: a tier is UP_TO@UNIT_AMOUNT[+FLAT] (the last without UP_TO), e.g. 1000@0.01")
    unit_amount, _, flat = amounts.partition("+")
    return ipb.Tier(up_to=up_to, unit_amount=unit_amount, flat_amount=flat)


def describe(price: dict[str, Any]) -> str:
    """A Price record back in the flag's form, for tables."""
    model = str(price.get("model", "")).lower()
    if model == "per_unit":
        return f"per_unit:{price.get('unit_amount', '')}"
    if model == "flat":
        return f"flat:{price.get('flat_amount', '')}"
    if model == "package":
        return f"package:{price.get('unit_amount', '')}/{price.get('package_size', '')}"
    tiers: list[dict[str, str]] = price.get("tiers") or []
    parts = [f"{t.get('up_to', '')}@{t.get('unit_amount', '')}"
             + (f"+{t['flat_amount']}" if _nonzero(t.get("flat_amount")) else "") for t in tiers]
    return f"{model}:{','.join(parts)}"


def _nonzero(amount: str | None) -> bool:
    return amount is not None and amount.strip("0.") != ""
