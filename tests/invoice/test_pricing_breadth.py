"""Pricing breadth, by hand-computed tables (domain only; the end-to-end finalization of each case
is tests/coordinator/test_pricing_breadth.py): dimensional prices, time of use, the commitment
true-up, coupons, taxes, and a seeded random check that lines, discounts, credits and taxes add up."""

from __future__ import annotations

import random
from datetime import UTC, datetime
from decimal import Decimal

import pytest

from invoice_service.domain.dimensions import Dimensions, TimeOfUse, usage_key
from invoice_service.domain.discounts import Coupon, Redemption, apply_coupons
from invoice_service.domain.invoices import (
    TRUE_UP,
    ChargeKind,
    Component,
    InvoiceView,
    LineItem,
    MeterUsage,
    PlanTerms,
    TaxTerms,
    compute_line_items,
    line_due,
    split_line_items,
)
from invoice_service.domain.pricing import Price, PriceModel
from invoice_service.domain.taxes import apply_tax, tax_of

D = Decimal
START, END = datetime(2026, 8, 1, tzinfo=UTC), datetime(2026, 9, 1, tzinfo=UTC)


def per_unit(amount: str) -> Price:
    return Price(PriceModel.PER_UNIT, unit_amount=D(amount))


def lines(components: list[Component], usage: dict[str, str]) -> list[LineItem]:
    terms = PlanTerms("p", "USD", 2, tuple(components))
    return compute_line_items(terms, {}, {k: MeterUsage(D(v), {0: D(v)}) for k, v in usage.items()}, START, END)


def test_dimensional_ai_price_over_two_models() -> None:
    """0.03 per 1k tokens on model=large, 0.002 per 1k on model=small, 0.01 per 1k on any other model."""
    dims = Dimensions("model", (), (("large", per_unit("0.00003")), ("small", per_unit("0.000002"))))
    items = lines([Component(ChargeKind.USAGE, "tokens", "Tokens", per_unit("0.00001"), dimensions=dims)],
                  {usage_key("tokens", "model=large"): "1250000", usage_key("tokens", "model=small"): "3000000",
                   usage_key("tokens", "model=medium"): "100000"})
    table = [(i.line_item_id, i.variant, str(i.quantity), i.amount_minor) for i in items]
    assert table == [
        ("L001-1", "model=large", "1250000", 3750),   # 1,250 x 0.03
        ("L001-2", "model=small", "3000000", 600),    # 3,000 x 0.002
        ("L001-3", "model=medium", "100000", 100),    # 100 x 0.01 (the charge's own price)
    ]


def test_priced_values_without_usage_still_show_a_zero_line() -> None:
    dims = Dimensions("model", (), (("large", per_unit("0.00003")),))
    items = lines([Component(ChargeKind.USAGE, "tokens", "Tokens", per_unit("0.00001"), dimensions=dims)], {})
    assert [(i.variant, i.amount_minor) for i in items] == [("model=large", 0)]


def test_time_of_use_peak_and_off_peak() -> None:
    tou = TimeOfUse("Europe/Berlin", tuple(range(8, 20)), (1, 2, 3, 4, 5), per_unit("0.30"))
    assert tou.is_peak(8, 1) and tou.is_peak(19, 5)
    assert not tou.is_peak(7, 1) and not tou.is_peak(20, 1) and not tou.is_peak(12, 6)
    energy = Component(ChargeKind.USAGE, "kwh", "Energy", per_unit("0.10"), dimensions=Dimensions(time_of_use=tou))
    items = lines([energy],
                  {usage_key("kwh", "peak"): "120", usage_key("kwh", "off_peak"): "260"})
    assert [(i.variant, i.amount_minor) for i in items] == [("peak", 3600), ("off_peak", 2600)]


@pytest.mark.parametrize(("usage", "true_up"), [("6000", 4000), ("10000", None), ("12000", None), ("0", 10000),
                                                ("9999.4", 1), ("9999.5", None)])
def test_minimum_commitment_true_up(usage: str, true_up: int | None) -> None:
    """A commitment of 100.00 at 0.01 per call: 60.00 of usage -> true-up 40.00; none at or above it;
    compared with the usage lines as rounded (99.994 -> 99.99: 0.01 short; 99.995 -> 100.00: none)."""
    items = lines([Component(ChargeKind.USAGE, "calls", "Calls", per_unit("0.01")),
                   Component(ChargeKind.COMMITMENT, "minimum_commitment", "Minimum commitment", amount=D("100"))],
                  {"calls": usage})
    ups = [i for i in items if i.variant == TRUE_UP]
    assert [i.amount_minor for i in ups] == ([true_up] if true_up else [])
    if ups:
        assert ups[0].kind is ChargeKind.FIXED_FEE and sum(i.amount_minor for i in items) == 10000


def fee_line(line_id: str, code: str, minor: int) -> LineItem:
    return LineItem(line_id, ChargeKind.FIXED_FEE, code, code, D(1), D(minor) / 100, minor, START, END)


def coupon(code: str, *, percent: str = "", amount: str = "", periods: int = 0, applies_to: str = "") -> Coupon:
    return Coupon(code, code, D(percent) if percent else None, D(amount) if amount else None,
                  "USD" if amount else "", periods, applies_to)


def test_coupon_of_20_percent_for_3_periods() -> None:
    """Redeemed in period 0: periods 0, 1, 2 discounted 20%, the 4th (index 3) at full price."""
    c = coupon("LAUNCH20", percent="20", periods=3)
    redemption = Redemption("cust", c, START)
    table = []
    for index in range(4):
        coupons = [c] if redemption.covers(0, index) else []
        [item] = apply_coupons([fee_line("L001", "base", 10000)], coupons, 2, "USD")
        table.append((index, item.discount_minor, item.net_minor))
    assert table == [(0, 2000, 8000), (1, 2000, 8000), (2, 2000, 8000), (3, 0, 10000)]
    assert Redemption("cust", coupon("F", percent="5"), START).covers(0, 500)  # 0 periods = forever


def test_line_coupons_then_invoice_coupons_spread_by_largest_remainder() -> None:
    items = [fee_line("L001", "base", 10000), fee_line("L002", "support", 3333), fee_line("L003", "extra", 1)]
    out = apply_coupons(items, [coupon("INV10", amount="10.00"), coupon("SUP50", percent="50", applies_to="support")],
                        2, "USD")
    # SUP50 first (a line coupon): 50% of 33.33 = 16.665 -> 16.67 on support; then INV10 = 10.00 over what
    # is left (100.00, 16.66, 0.01; 116.67) by largest remainder: 857.12, 142.80, 0.09 -> the floors
    # 857 + 142 + 0 = 999, the one cent left to the largest remainder (.80): 857, 143, 0
    assert [(i.discount_minor, i.discount_codes) for i in out] == [
        (857, ("INV10",)), (1667 + 143, ("SUP50", "INV10")), (0, ())]
    assert sum(i.discount_minor for i in out) == 1667 + 1000


def test_amount_coupon_never_exceeds_the_lines_and_other_currencies_do_not_apply() -> None:
    [item] = apply_coupons([fee_line("L001", "base", 500)], [coupon("BIG", amount="50.00")], 2, "USD")
    assert (item.discount_minor, item.net_minor) == (500, 0)
    [item] = apply_coupons([fee_line("L001", "base", 500)], [coupon("BIG", amount="5.00")], 2, "EUR")
    assert item.discount_minor == 0


def view(items: list[LineItem], credits: int, tax: TaxTerms | None) -> InvoiceView:
    return InvoiceView("inv", "c", "a", "s", "p", "USD", 2, "DRAFT", "", START, END, tuple(items), (), (), (), "",
                       "", sum(i.amount_minor for i in items), credits, START, START,
                       discount_minor=sum(i.discount_minor for i in items), tax_minor=sum(i.tax_minor for i in items),
                       tax=tax)


@pytest.mark.parametrize(("rate", "inclusive", "amount", "credits", "tax", "due"), [
    ("19", False, 10000, 3000, 1330, 8330),    # VAT 19% on top of 70.00 left after credits
    ("21", True, 12100, 2100, 1736, 10000),    # 21% inside 100.00: 100.00 - round(100/1.21 = 82.6446) = 17.36
    ("21", True, 12100, 0, 2100, 12100),       # 121.00 incl. 21% = 100.00 + 21.00
    ("19", False, 10000, 10000, 0, 0),         # fully paid by (purchased) credit: taxed at purchase, not again
    ("7.7", False, 1, 0, 0, 1),                # 0.01 x 7.7% = 0.00077 -> 0.00
    ("19", False, 3, 0, 1, 4),                 # 0.03 x 19% = 0.0057 -> 0.01 (half-up per line)
])
def test_vat_exclusive_and_inclusive(rate: str, inclusive: bool, amount: int, credits: int, tax: int,
                                     due: int) -> None:
    terms = TaxTerms("DE", "VAT", D(rate), inclusive)
    [item] = apply_tax([fee_line("L001", "base", amount)], {"L001": credits}, terms, 2)
    assert item.tax_minor == tax
    assert view([item], credits, terms).amount_due_minor == due


def test_no_tax_region_no_tax() -> None:
    [item] = apply_tax([fee_line("L001", "base", 10000)], {}, None, 2)
    assert item.tax_minor == 0 and view([item], 0, None).amount_due_minor == 10000


@pytest.mark.parametrize("seed", range(300))
def test_lines_discounts_credits_and_taxes_always_add_up(seed: int) -> None:
    """Seeded random invoices: per line 0 <= discount <= amount, pieces sum to the net, credits at most
    the net, tax as the rule says; the invoice's totals are the sums of its lines' and amount due is
    subtotal - discounts - credits (+ exclusive tax) = the sum of the lines' amounts due."""
    rng = random.Random(seed)
    scale = rng.choice([0, 2, 3])
    items = [fee_line(f"L{n:03d}", rng.choice(["a", "b", "c"]), rng.randint(0, 10**rng.randint(1, 7)))
             for n in range(1, rng.randint(1, 6) + 1)]
    coupons = [coupon(f"C{n}", percent=str(D(rng.randint(1, 10000)) / 100), applies_to=rng.choice(["", "a", "b"]))
               if rng.random() < 0.5 else
               Coupon(f"C{n}", "", None, D(rng.randint(1, 10**6)).scaleb(-scale), "USD", 0, rng.choice(["", "a"]))
               for n in range(rng.randint(0, 3))]
    discounted = apply_coupons(items, coupons, scale, "USD")
    instants = sorted({datetime(2026, 8, rng.randint(2, 30), tzinfo=UTC) for _ in range(rng.randint(0, 3))})
    pieces = split_line_items(discounted, {}, instants)
    credits: dict[str, int] = {}
    for item in discounted:
        assert 0 <= item.discount_minor <= item.amount_minor
        assert sum(p.amount_minor for p in pieces if p.line_item_id == item.line_item_id) == item.net_minor
        credits[item.line_item_id] = rng.randint(0, item.net_minor)
    terms = TaxTerms("X", "tax", D(rng.randint(0, 300000)) / 10000, rng.random() < 0.5) if rng.random() < 0.8 else None
    taxed = apply_tax(discounted, credits, terms, scale)
    inv = view(taxed, sum(credits.values()), terms)
    assert inv.discount_minor == sum(i.discount_minor for i in taxed)
    for item in taxed:
        left = item.net_minor - credits[item.line_item_id]
        expected = 0 if terms is None else tax_of(left, terms, scale)
        assert item.tax_minor == expected and 0 <= item.tax_minor
        if terms is not None and terms.inclusive:
            assert item.tax_minor <= left
    due = sum(line_due(inv, i, credits[i.line_item_id]) for i in taxed)
    exclusive = terms is not None and not terms.inclusive
    assert inv.amount_due_minor == due == (inv.subtotal_minor - inv.discount_minor - inv.credits_minor
                                           + (inv.tax_minor if exclusive else 0))
    assert inv.amount_due_minor >= 0
