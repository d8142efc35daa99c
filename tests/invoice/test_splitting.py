"""Cutting line items at instants: pieces always sum exactly to the line item."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
from hypothesis import given
from hypothesis import strategies as st

from invoice_service.domain.invoices import (
    ChargeKind,
    Component,
    MeterUsage,
    PlanTerms,
    compute_line_items,
    split_line_items,
)
from invoice_service.domain.pricing import PriceModel, TierInput, build_price
from invoice_service.domain.splitting import apportion, intervals, normalize_instants
from service_runtime.rejections import Rejection

START = datetime(2026, 8, 1, tzinfo=UTC)
END = datetime(2026, 9, 1, tzinfo=UTC)


@given(st.integers(0, 10**12), st.lists(st.integers(0, 10**9), min_size=1, max_size=40))
def test_apportion_sums_exactly_and_stays_within_one_unit(total: int, weights: list[int]) -> None:
    if sum(weights) == 0:
        weights[0] = 1
    shares = apportion(total, weights)
    assert sum(shares) == total
    for share, w in zip(shares, weights, strict=True):
        assert abs(share - total * w / sum(weights)) < 1 + 1e-9 * total


def test_apportion_gives_leftovers_to_largest_remainders_then_earliest() -> None:
    assert apportion(100, [1, 1, 1]) == [34, 33, 33]
    assert apportion(10, [1, 2]) == [3, 7]
    assert apportion(1, [0, 5]) == [0, 1]


def test_instants_are_sorted_deduplicated_and_must_be_inside_the_period() -> None:
    mid = START + timedelta(days=10)
    assert normalize_instants([mid + timedelta(days=5), mid, mid], START, END) == [mid, mid + timedelta(days=5)]
    with pytest.raises(Rejection, match=r"split_at\[1\]"):
        normalize_instants([mid, END], START, END)
    with pytest.raises(Rejection, match=r"split_at\[0\]"):
        normalize_instants([START], START, END)
    assert intervals(START, END, [mid]) == [(START, mid), (mid, END)]


def _terms() -> PlanTerms:
    tiered = build_price(PriceModel.GRADUATED, "", "", "",
                         [TierInput("1000", "0.013", ""), TierInput("", "0.007", "")], "p")
    return PlanTerms("plan", "USD", 2, (
        Component(ChargeKind.USAGE, "api", "API calls", tiered),
        Component(ChargeKind.FIXED_FEE, "platform", "Platform fee", amount=Decimal("100")),
        Component(ChargeKind.LICENSE, "seat", "Seats", amount=Decimal("9.99")),
        Component(ChargeKind.ADD_ON, "sso", "SSO", amount=Decimal("25")),
    ))


@given(st.lists(st.integers(1, 31 * 24 * 3600 - 1), max_size=6, unique=True),
       st.lists(st.integers(0, 5000), min_size=7, max_size=7))
def test_every_line_item_splits_into_pieces_that_sum_exactly(offsets: list[int], piece_qty: list[int]) -> None:
    instants = normalize_instants([START + timedelta(seconds=s) for s in offsets], START, END)
    by_piece = {n: Decimal(q) / 3 for n, q in enumerate(piece_qty[: len(instants) + 1])}
    usage = {"api": MeterUsage(sum(by_piece.values(), Decimal(0)), by_piece)}
    items = compute_line_items(_terms(), {"seat": 7}, usage, START, END)
    pieces = split_line_items(items, usage, instants)
    for item in items:
        mine = [p for p in pieces if p.line_item_id == item.line_item_id]
        assert sum(p.amount_minor for p in mine) == item.amount_minor
        assert all(item.service_start <= p.service_start < p.service_end <= item.service_end for p in mine)


def test_usage_follows_event_time_and_fees_follow_the_clock() -> None:
    cut = START + timedelta(days=14)  # 14 of 31 days before the cut
    usage = {"api": MeterUsage(Decimal(3000), {0: Decimal(1000), 1: Decimal(2000)})}
    items = compute_line_items(_terms(), {"seat": 3}, usage, START, END)
    assert [(i.code, i.amount_minor) for i in items] == [("api", 2700), ("platform", 10000), ("seat", 2997)]
    pieces = {p.charge_id: p for p in split_line_items(items, usage, [cut])}
    # tiered on the whole 3000 (13 + 14 = $27), apportioned 1:2 by quantity
    assert (pieces["L001#1"].amount_minor, pieces["L001#2"].amount_minor) == (900, 1800)
    assert (pieces["L002#1"].amount_minor, pieces["L002#2"].amount_minor) == (4516, 5484)  # 14/31, 17/31
    assert pieces["L002#1"].service_end == cut and pieces["L002#2"].service_start == cut
    assert "L004#1" not in pieces  # the SSO add-on is not on the subscription


def test_usage_pieces_without_usage_get_nothing() -> None:
    usage = {"api": MeterUsage(Decimal(10), {1: Decimal(10)})}
    items = compute_line_items(_terms(), {}, usage, START, END)
    pieces = split_line_items(items[:1], usage, [START + timedelta(days=3), START + timedelta(days=9)])
    assert [(p.charge_id, p.amount_minor, p.quantity) for p in pieces] == [("L001#2", 13, Decimal(10))]
