"""Every price model, including the quantities right at and around tier boundaries."""

from __future__ import annotations

from decimal import Decimal

import pytest

from invoice_service.domain.money import round_to_minor
from invoice_service.domain.pricing import Price, PriceModel, TierInput, build_price, price_quantity
from service_runtime.rejections import Reason, Rejection

D = Decimal
TIERS = [TierInput("100", "1.00", ""), TierInput("1000", "0.50", "10"), TierInput("", "0.10", "")]


def tiered(model: PriceModel) -> Price:
    return build_price(model, "", "", "", TIERS, "price")


def amount(price: Price, q: str) -> Decimal:
    return price_quantity(price, D(q)).amount


@pytest.mark.parametrize(("q", "expected"), [
    ("0", "0"), ("1", "1.00"), ("99.5", "99.5"), ("100", "100.00"),
    # crossing into tier 2 touches its flat fee once
    ("100.5", "110.25"), ("101", "110.50"), ("1000", "560.00"),
    ("1001", "560.10"), ("2500", "710.00"),
])
def test_graduated_prices_each_unit_in_its_tier(q: str, expected: str) -> None:
    assert amount(tiered(PriceModel.GRADUATED), q) == D(expected)


@pytest.mark.parametrize(("q", "expected"), [
    ("0", "0"), ("1", "1.00"), ("100", "100.00"),           # up_to is inclusive
    ("101", "60.50"), ("1000", "510.00"),                    # 1000 * 0.50 + 10
    ("1001", "100.10"), ("2500", "250.00"),
])
def test_volume_prices_all_units_at_the_total_tier(q: str, expected: str) -> None:
    assert amount(tiered(PriceModel.VOLUME), q) == D(expected)


def test_volume_unit_price_is_the_tier_of_the_total() -> None:
    assert price_quantity(tiered(PriceModel.VOLUME), D("101")).unit_price == D("0.50")


def test_graduated_unit_price_is_the_average() -> None:
    assert price_quantity(tiered(PriceModel.GRADUATED), D("200")).unit_price == D("0.8")


@pytest.mark.parametrize(("q", "expected"), [("0", "0"), ("1", "5"), ("1000", "5"), ("1000.5", "10"),
                                             ("2000", "10"), ("2001", "15")])
def test_package_rounds_up_to_whole_packages(q: str, expected: str) -> None:
    price = build_price(PriceModel.PACKAGE, "5", "", "1000", [], "price")
    assert amount(price, q) == D(expected)


def test_per_unit_and_flat() -> None:
    per_unit = build_price(PriceModel.PER_UNIT, "0.00003", "", "", [], "price")
    assert amount(per_unit, "2000000") == D("60")
    flat = build_price(PriceModel.FLAT, "", "49", "", [], "price")
    assert amount(flat, "0") == 0 and amount(flat, "0.1") == D("49") and amount(flat, "1e6") == D("49")


def test_negative_total_prices_as_zero() -> None:
    assert amount(build_price(PriceModel.PER_UNIT, "2", "", "", [], "price"), "-5") == 0


@pytest.mark.parametrize(("exact", "scale", "minor"), [
    ("0.005", 2, 1), ("0.004999", 2, 0), ("0.015", 2, 2), ("0.025", 2, 3), ("1.5", 0, 2), ("2.5", 0, 3),
    ("0.0005", 3, 1), ("123.455", 2, 12346),
])
def test_rounding_is_half_up_to_the_minor_unit(exact: str, scale: int, minor: int) -> None:
    assert round_to_minor(D(exact), scale) == minor


@pytest.mark.parametrize(("tiers", "field", "words"), [
    ([TierInput("100", "1", ""), TierInput("100", "1", ""), TierInput("", "1", "")], "price.tiers[1].up_to",
     "ascending"),
    ([TierInput("100", "1", ""), TierInput("50", "1", ""), TierInput("", "1", "")], "price.tiers[1].up_to",
     "overlap"),
    ([TierInput("", "1", ""), TierInput("100", "1", "")], "price.tiers[0].up_to", "only the last"),
    ([TierInput("100", "1", "")], "price.tiers[0].up_to", "unbounded"),
    ([TierInput("0", "1", ""), TierInput("", "1", "")], "price.tiers[0].up_to", "ascending"),
    ([TierInput("10", "-1", ""), TierInput("", "1", "")], "price.tiers[0].unit_amount", "non-negative"),
    ([], "price.tiers", "at least one"),
])
def test_bad_tiers_are_rejected_naming_the_field(tiers: list[TierInput], field: str, words: str) -> None:
    with pytest.raises(Rejection) as err:
        build_price(PriceModel.GRADUATED, "", "", "", tiers, "price")
    assert err.value.reason is Reason.INVALID and err.value.field == field and words in err.value.message


def test_other_price_inputs_are_checked() -> None:
    with pytest.raises(Rejection, match=r"price\.package_size"):
        build_price(PriceModel.PACKAGE, "5", "", "0", [], "price")
    with pytest.raises(Rejection, match=r"price\.model"):
        build_price(None, "5", "", "", [], "price")
    with pytest.raises(Rejection, match=r"price\.unit_amount"):
        build_price(PriceModel.PER_UNIT, "", "", "", [], "price")
    with pytest.raises(Rejection, match=r"price\.flat_amount"):
        build_price(PriceModel.FLAT, "1", "", "", [], "price")


def test_price_survives_its_json_form() -> None:
    price = tiered(PriceModel.VOLUME)
    assert Price.from_json(price.to_json()) == price
