"""Prices on one flag (`--usage METER=PRICE`): each model, and what a wrong one says."""

from __future__ import annotations

import pytest
from credits.invoice.v1 import invoice_pb2 as ipb

from creditctl.prices import describe, parse_price
from creditctl.records import record


@pytest.mark.parametrize(("text", "expected"), [
    ("per_unit:0.00001", ipb.Price(model=ipb.PER_UNIT, unit_amount="0.00001")),
    ("flat:10.00", ipb.Price(model=ipb.FLAT, flat_amount="10.00")),
    ("package:5.00/1000", ipb.Price(model=ipb.PACKAGE, unit_amount="5.00", package_size="1000")),
    ("graduated:1000@0.01,@0.005", ipb.Price(model=ipb.GRADUATED, tiers=[
        ipb.Tier(up_to="1000", unit_amount="0.01"), ipb.Tier(up_to="", unit_amount="0.005")])),
    ("volume:1000@0.01,@0.008+5.00", ipb.Price(model=ipb.VOLUME, tiers=[
        ipb.Tier(up_to="1000", unit_amount="0.01"), ipb.Tier(up_to="", unit_amount="0.008", flat_amount="5.00")])),
])
def test_each_model_and_back(text: str, expected: ipb.Price) -> None:
    assert parse_price(text) == expected
    assert describe(record(expected)) == text


@pytest.mark.parametrize("text", ["0.01", "per_unit:", "tiered:1@2", "package:5.00", "graduated:1000,2000"])
def test_a_wrong_price_says_what_a_price_looks_like(text: str) -> None:
    with pytest.raises(ValueError, match=r"price|package:|tier"):
        parse_price(text)
