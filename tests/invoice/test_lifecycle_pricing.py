"""Both halves of issue #19 at once, over real gRPC: a subscription changed mid-period (life) onto a
plan with a dimensional price and a minimum commitment (pricing), with a coupon; hand-computed tables."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta
from decimal import Decimal

from credits.invoice.v1 import invoice_pb2 as pb

from invoice_service.domain.dimensions import Dimensions
from invoice_service.domain.discounts import Coupon, apply_coupons, coupon_discount
from invoice_service.domain.invoices import TRUE_UP, ChargeKind, Component, PlanTerms, compute_line_items
from invoice_service.domain.lifecycle import (
    Phase,
    Schedule,
    SegmentTerms,
    prorate,
    segment_line_items,
    segment_pieces,
    segments,
    usage_by_segment,
)
from invoice_service.domain.pricing import Price, PriceModel
from tests.invoice.conftest import InvoiceEnv, event, seed_catalog, ts, when


def per_unit(amount: str) -> pb.Price:
    return pb.Price(model=pb.PER_UNIT, unit_amount=amount)


BASIC = pb.CreatePlanRequest(idempotency_key="p-basic", plan_id="basic", currency="USD",
                             usage_charges=[pb.UsageCharge(meter_code="tokens", price=per_unit("0.00001"))],
                             fixed_fees=[pb.FixedFee(code="platform", amount="30.00")])


def pro(commitment: str = "") -> pb.CreatePlanRequest:
    return pb.CreatePlanRequest(
        idempotency_key="p-pro", plan_id="pro", currency="USD", minimum_commitment=commitment,
        usage_charges=[pb.UsageCharge(meter_code="tokens", price=per_unit("0.00001"), group_by="model",
                                      dimension_prices=[pb.DimensionPrice(value="large", price=per_unit("0.00003")),
                                                        pb.DimensionPrice(value="small", price=per_unit("0.000002"))])],
        fixed_fees=[pb.FixedFee(code="platform", amount="90.00")])


async def _upgraded(env: InvoiceEnv, commitment: str = "") -> None:
    """basic from Aug 1; September (30 days) upgraded to pro on Sep 11 (day 10 of 30); tokens by model."""
    await env.call("CreateMeter", pb.CreateMeterRequest(idempotency_key="m", meter_code="tokens", aggregation=pb.SUM))
    await env.call("CreatePlan", BASIC)
    await env.call("CreatePlan", pro(commitment))
    await seed_catalog(env, plan=BASIC)
    sep = lambda day: when(day, month=9)  # noqa: E731
    await env.call("IngestEvents", pb.IngestEventsRequest(idempotency_key="ev", events=[
        event("e1", "tokens", "1000000", sep(5), model="large"),   # before the change: basic's plain price
        event("e2", "tokens", "1000000", sep(15), model="large"),
        event("e3", "tokens", "3000000", sep(20), model="small"),
        event("e4", "tokens", "500000", sep(25), model="medium")]))  # no price of its own: the charge's
    await env.call("UpdateSubscription", pb.UpdateSubscriptionRequest(
        idempotency_key="up", subscription_id="sub-john-wick", effective_at=ts(sep(11)), plan_id="pro"))


def _table(inv: pb.Invoice) -> list[tuple[str, str, str, str]]:
    return [(i.line_item_id, i.variant, i.amount, i.discount) for i in inv.line_items]


async def test_an_upgrade_to_a_dimensional_price_with_a_20_percent_coupon(env: InvoiceEnv) -> None:
    await _upgraded(env)
    await env.call("CreateCoupon", pb.CreateCouponRequest(idempotency_key="c", coupon_code="TWENTY",
                                                          percent_off="20", duration_periods=3))
    await env.call("RedeemCoupon", pb.RedeemCouponRequest(idempotency_key="r", customer_id="john-wick",
                                                          coupon_code="TWENTY", redeemed_at=ts(when(20))))
    draft = await env.call("CreateDraft", pb.CreateDraftRequest(idempotency_key="d", customer_id="john-wick",
                                                                period_start=ts(when(1, month=9))))
    # | line   | segment           | what                         | amount | 20% off |
    # | L001   | Sep 1-11, basic   | 1M tokens x 0.00001          |  10.00 |    2.00 |
    # | L002   | Sep 1-11, basic   | platform 30.00 x 10/30       |  10.00 |    2.00 |
    # | L003-1 | Sep 11-Oct 1, pro | model=large 1M x 0.00003     |  30.00 |    6.00 |
    # | L003-2 | Sep 11-Oct 1, pro | model=small 3M x 0.000002    |   6.00 |    1.20 |
    # | L003-3 | Sep 11-Oct 1, pro | model=medium 0.5M x 0.00001  |   5.00 |    1.00 |
    # | L004   | Sep 11-Oct 1, pro | platform: C = 10 + 90 x 20/30 = 70.00 -> 70.00 - 10.00 | 60.00 | 12.00 |
    # subtotal 121.00, 20% = 24.20 (the coupon, redeemed in August's period, is in its 2nd of 3), due 96.80
    assert _table(draft) == [("L001", "", "10.00", "2.00"), ("L002", "", "10.00", "2.00"),
                             ("L003-1", "model=large", "30.00", "6.00"), ("L003-2", "model=small", "6.00", "1.20"),
                             ("L003-3", "model=medium", "5.00", "1.00"), ("L004", "", "60.00", "12.00")]
    assert (draft.subtotal, draft.discounts, draft.amount_due) == ("121.00", "24.20", "96.80")
    # cut at a lot boundary on Sep 18: usage by event time, the fee by time (7 : 13 days of its 20),
    # every piece net of its discount, so what the ledger reserves sums to the amount due
    split = await env.call("SplitDraft", pb.SplitDraftRequest(invoice_id=draft.invoice_id,
                                                              split_at=[ts(when(18, month=9))]))
    assert sorted((c.charge_id, c.amount) for c in split.charges) == [
        ("L001#1", "8.00"), ("L002#1", "8.00"), ("L003-1#1", "24.00"), ("L003-2#2", "4.80"), ("L003-3#2", "4.00"),
        ("L004#1", "16.80"), ("L004#2", "31.20")]
    # December is the coupon's 5th period counted from August's: past its 3, nothing off
    dec = await env.call("CreateDraft", pb.CreateDraftRequest(idempotency_key="d-dec", customer_id="john-wick",
                                                              period_start=ts(when(1, month=12))))
    assert (dec.subtotal, dec.discounts) == ("90.00", "0.00")


async def test_the_commitment_of_the_new_plan_is_pro_rated_over_the_whole_period(env: InvoiceEnv) -> None:
    await _upgraded(env, commitment="150")
    draft = await env.call("CreateDraft", pb.CreateDraftRequest(idempotency_key="d", customer_id="john-wick",
                                                                period_start=ts(when(1, month=9))))
    # committed: 150.00 x 20/30 = 100.00 (pro's part of September); usage of the whole period
    # 10.00 + 30.00 + 6.00 + 5.00 = 51.00; true-up 49.00, last, under pro's commitment id (L005)
    assert _table(draft)[-1] == ("L005", "true_up", "49.00", "0.00")
    assert (draft.subtotal, draft.amount_due) == ("170.00", "170.00")


def test_segments_with_dimensional_prices_commitments_and_coupons_add_up_seeded() -> None:
    """Random changes between a plain plan and a dimensional one with a commitment, random lot
    instants and a random percent coupon: ids are unique, each line's pieces sum to its net, the
    discounts to the coupon's share of the subtotal, the true-up to the pro-rated commitment short
    of the whole period's usage; a period under one phase prices as compute_line_items does."""
    rng = random.Random(19)
    sep, oct_ = datetime(2026, 9, 1, tzinfo=UTC), datetime(2026, 10, 1, tzinfo=UTC)
    price = Price(PriceModel.PER_UNIT, unit_amount=Decimal("0.0013"))
    plain = PlanTerms("plain", "USD", 2, (Component(ChargeKind.USAGE, "tokens", "Tokens", price),
                                          Component(ChargeKind.FIXED_FEE, "platform", "Platform", None, Decimal("9"))))
    dims = Dimensions("model", prices=(("large", Price(PriceModel.PER_UNIT, unit_amount=Decimal("0.0031"))),))
    dimensional = PlanTerms("dim", "USD", 2, (
        Component(ChargeKind.USAGE, "tokens", "Tokens", price, dimensions=dims),
        Component(ChargeKind.FIXED_FEE, "platform", "Platform", None, Decimal("29.99")),
        Component(ChargeKind.COMMITMENT, "minimum_commitment", "Minimum commitment", None, Decimal("60"))))
    period = Schedule(sep, 1).period(0)
    assert period is not None
    for _ in range(200):
        changes = sorted({sep + timedelta(hours=rng.randrange(1, 30 * 24)) for _ in range(rng.randrange(0, 3))})
        plans = [rng.choice([plain, dimensional]) for _ in range(len(changes) + 1)]
        phases = [Phase(t, p.plan_id, 1) for t, p in zip([sep, *changes], plans, strict=True)]
        parts = segments(phases, sep, oct_)
        lots = sorted({sep + timedelta(hours=rng.randrange(1, 30 * 24)) for _ in range(rng.randrange(0, 3))})
        edges = sorted(set(lots) | {p.start for p in parts[1:]})
        keys = ["tokens", "tokens[model=large]", "tokens[model=small]"]
        raw = {k: {g: Decimal(rng.randrange(0, 20000)) for g in range(len(edges) + 1)} for k in keys}
        seg_terms = []
        for part, plan in zip(parts, plans, strict=True):
            mine = {k: v for k, v in raw.items() if ("[" in k) == (plan is dimensional)}
            seg_terms.append(SegmentTerms(part, plan, usage_by_segment(mine, frozenset(), edges, [part])[0]))
        items = segment_line_items(seg_terms, period)
        coupon = Coupon("C", "C", Decimal(rng.randrange(1, 101)), None, "", 0)
        discounted = apply_coupons(items, [coupon], 2, "USD")
        pieces = segment_pieces(discounted, seg_terms, lots)
        assert len({i.line_item_id for i in items}) == len(items)
        for item in discounted:
            assert sum(p.amount_minor for p in pieces if p.line_item_id == item.line_item_id) == item.net_minor
        subtotal = sum(i.amount_minor for i in items)
        assert sum(i.discount_minor for i in discounted) == coupon_discount(coupon, subtotal, 2, "USD")
        committed = sum(prorate([Decimal(60) if p is dimensional else Decimal(0) for p in plans],
                                [(s.segment.start, s.segment.end) for s in seg_terms], (sep, oct_), 2))
        used = sum(i.amount_minor for i in items if i.kind is ChargeKind.USAGE)
        assert sum(i.amount_minor for i in items if i.variant == TRUE_UP) == max(committed - used, 0)
        if len(parts) == 1:
            assert items == compute_line_items(plans[0], {}, seg_terms[0].usage, sep, oct_)
