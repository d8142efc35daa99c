"""Usage units as credits: which units are free under each price model, and how the value of the
covered units is spread over a line's pieces (invoice_service/domain/unit_credits.py)."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal

import pytest

from invoice_service.domain.invoices import ChargeKind, LineItem, Piece
from invoice_service.domain.pricing import Price, PriceModel, TierInput, build_price
from invoice_service.domain.unit_credits import UnitCover, billed_after_free_units, left_to_pay, value_covers
from service_runtime.rejections import Rejection

D = Decimal
TIERS = [TierInput("100", "1.00", ""), TierInput("1000", "0.50", "10"), TierInput("", "0.10", "")]
START, MID, END = (datetime(2026, 8, d, tzinfo=UTC) for d in (1, 16, 31))


def price(model: PriceModel, unit: str = "", size: str = "", flat: str = "") -> Price:
    tiers = TIERS if model in (PriceModel.GRADUATED, PriceModel.VOLUME) else []
    return build_price(model, unit, flat, size, tiers, "price")


@pytest.mark.parametrize(("p", "q", "free", "billed"), [
    # per unit: 1,000 free of 1,500 at 0.02 -> 500 billed
    (price(PriceModel.PER_UNIT, "0.02"), "1500", "1000", "10.00"),
    (price(PriceModel.PER_UNIT, "0.02"), "1500", "2000", "0"),
    # graduated: the first units are free, so the cheap tiers are billed: price(1500) - price(100) = 610 - 100
    (price(PriceModel.GRADUATED), "1500", "100", "510.00"),
    (price(PriceModel.GRADUATED), "1500", "1000", "50.00"),
    # volume: the period's total still picks the tier (0.10 per unit above 1,000, no flat fee there)
    (price(PriceModel.VOLUME), "1500", "1000", "50.00"),
    (price(PriceModel.VOLUME), "1500", "1500", "0"),
    # package: whole packages of what is left (ceil(250 / 100) = 3 x 5)
    (price(PriceModel.PACKAGE, "5", "100"), "1250", "1000", "15"),
    # flat: billed unless every unit is covered
    (price(PriceModel.FLAT, flat="9"), "10", "9", "9"),
    (price(PriceModel.FLAT, flat="9"), "10", "10", "0"),
])
def test_the_first_units_of_the_period_are_the_free_ones(p: Price, q: str, free: str, billed: str) -> None:
    assert billed_after_free_units(p, D(q), D(free)) == D(billed)


def _line(quantity: str, amount_minor: int) -> LineItem:
    return LineItem("L001", ChargeKind.USAGE, "compute", "Compute", D(quantity), D("0.02"), amount_minor, START, END,
                    "compute_minute")


def _pieces(first: tuple[str, int], second: tuple[str, int]) -> list[Piece]:
    return [Piece("L001#1", "L001", ChargeKind.USAGE, "compute", D(first[0]), first[1], START, MID),
            Piece("L001#2", "L001", ChargeKind.USAGE, "compute", D(second[0]), second[1], MID, END)]


def test_value_is_spread_over_the_covered_pieces_and_the_rest_is_left_to_pay() -> None:
    item, pieces = _line("1500", 3000), _pieces(("1000", 2000), ("500", 1000))
    covers = [UnitCover("L001#1", "lot-a", "PROMOTIONAL", "compute_minute", D(700), 0),
              UnitCover("L001#2", "lot-a", "PROMOTIONAL", "compute_minute", D(300), 1)]
    apps = value_covers([item], pieces, {"compute": price(PriceModel.PER_UNIT, "0.02")}, 2, covers)
    assert [(a.charge_id, a.units, a.amount_minor) for a in apps] == [("L001#1", 700, 1400), ("L001#2", 300, 600)]
    assert left_to_pay(pieces, apps) == {"L001#1": 600, "L001#2": 400}


def test_a_share_a_piece_cannot_take_moves_to_the_line_s_other_pieces() -> None:
    """Graduated with a dear first tier: the first 100 units are worth 100.00, more than the piece
    they were used in costs (its share of the line by quantity)."""
    tiered = price(PriceModel.GRADUATED)
    item, pieces = _line("200", 16000), _pieces(("100", 8000), ("100", 8000))
    covers = [UnitCover("L001#1", "lot-a", "PROMOTIONAL", "compute_minute", D(100), 0)]
    apps = value_covers([item], pieces, {"compute": tiered}, 2, covers)
    assert [(a.charge_id, a.units, a.amount_minor) for a in apps] == [("L001#1", 100, 8000), ("L001#2", 0, 2000)]
    assert sum(a.amount_minor for a in apps) == 16000 - 6000  # line 160.00, billed 60.00 (100 units at 0.50 + 10)


def test_covers_are_refused_beyond_the_piece_or_on_a_line_in_another_unit() -> None:
    item, pieces = _line("1500", 3000), _pieces(("1000", 2000), ("500", 1000))
    prices = {"compute": price(PriceModel.PER_UNIT, "0.02")}
    with pytest.raises(Rejection) as err:
        value_covers([item], pieces, prices, 2, [UnitCover("L001#2", "l", "PROMOTIONAL", "compute_minute", D(501), 3)])
    assert err.value.field == "applications[3].units"
    with pytest.raises(Rejection) as err:
        value_covers([item], pieces, prices, 2, [UnitCover("L001#1", "l", "PROMOTIONAL", "token", D(1), 0)])
    assert err.value.field == "applications[0].charge_id"
