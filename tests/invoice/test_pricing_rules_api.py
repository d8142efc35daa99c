"""Pricing rules over real gRPC and creditctl: plans with prices by property, time of use and a
commitment; tax rules and regions; coupons. Bad input names the field and writes nothing; a draft
shows and renders every new line kind (dimension, time of use, true-up, discount, tax)."""

from __future__ import annotations

import asyncio
from datetime import timedelta

import grpc
import pytest
from credits.invoice.v1 import invoice_pb2 as pb

from creditctl.main import main
from tests.invoice.conftest import InvoiceEnv, event, seed_catalog, ts, when
from tests.invoice.test_catalog_api import expect_error


def per_unit(amount: str) -> pb.Price:
    return pb.Price(model=pb.PER_UNIT, unit_amount=amount)


async def meters(env: InvoiceEnv, *codes: str, aggregation: int = pb.SUM, prop: str = "") -> None:
    for code in codes:
        await env.call("CreateMeter", pb.CreateMeterRequest(idempotency_key=f"m-{code}", meter_code=code,
                                                            aggregation=aggregation, property=prop))  # type: ignore[arg-type]


async def test_plan_validation_names_the_field_and_writes_nothing(env: InvoiceEnv) -> None:
    await meters(env, "tokens")
    await meters(env, "users", aggregation=pb.UNIQUE_COUNT, prop="user")
    tou = pb.TimeOfUse(time_zone="Europe/Berlin", peak_hours=[9], peak_price=per_unit("1"))
    cases = [
        (pb.UsageCharge(meter_code="tokens", price=per_unit("1"), group_by="model", time_of_use=tou),
         "", "usage_charges[0].time_of_use"),
        (pb.UsageCharge(meter_code="tokens", price=per_unit("1"), time_of_use=pb.TimeOfUse(
            time_zone="Mars/Olympus", peak_hours=[9], peak_price=per_unit("1"))),
         "", "usage_charges[0].time_of_use.time_zone"),
        (pb.UsageCharge(meter_code="tokens", price=per_unit("1"), time_of_use=pb.TimeOfUse(
            time_zone="UTC", peak_hours=[24], peak_price=per_unit("1"))),
         "", "usage_charges[0].time_of_use.peak_hours[0]"),
        (pb.UsageCharge(meter_code="tokens", price=per_unit("1"),
                        dimension_prices=[pb.DimensionPrice(value="x", price=per_unit("1"))]),
         "", "usage_charges[0].dimension_prices"),
        (pb.UsageCharge(meter_code="users", price=per_unit("1"), group_by="region"), "", "usage_charges[0].group_by"),
        (pb.UsageCharge(meter_code="tokens", price=per_unit("1")), "-5", "minimum_commitment"),
    ]
    for n, (charge, commitment, field) in enumerate(cases):
        code = grpc.StatusCode.INVALID_ARGUMENT
        await expect_error(env, "CreatePlan", pb.CreatePlanRequest(
            idempotency_key=f"bad-{n}", plan_id=f"bad-{n}", currency="USD", usage_charges=[charge],
            minimum_commitment=commitment), code, field)
    assert await env.count("plans") == 0


async def test_tax_rules_and_coupons_refuse_bad_input(env: InvoiceEnv) -> None:
    await seed_catalog(env)
    await expect_error(env, "SetTaxRule", pb.SetTaxRuleRequest(idempotency_key="t1", region="DE", rate="101"),
                       grpc.StatusCode.INVALID_ARGUMENT, "rate")
    await expect_error(env, "SetCustomerTaxRegion", pb.SetCustomerTaxRegionRequest(
        idempotency_key="t2", customer_id="john-wick", tax_region="DE"), grpc.StatusCode.NOT_FOUND, "tax_region")
    await expect_error(env, "CreateCoupon", pb.CreateCouponRequest(idempotency_key="c1",
        coupon_code="X", percent_off="10", amount_off="5", currency="USD"), grpc.StatusCode.INVALID_ARGUMENT,
        "percent_off")
    await expect_error(env, "CreateCoupon", pb.CreateCouponRequest(idempotency_key="c2",
        coupon_code="X", amount_off="5.001", currency="USD"), grpc.StatusCode.INVALID_ARGUMENT, "amount_off")
    await expect_error(env, "RedeemCoupon", pb.RedeemCouponRequest(
        idempotency_key="r1", customer_id="john-wick", coupon_code="NOPE"), grpc.StatusCode.NOT_FOUND, "coupon_code")
    assert await env.count("tax_rules") == 0 and await env.count("coupons") == 0
    await env.call("CreateCoupon", pb.CreateCouponRequest(idempotency_key="c3",
        coupon_code="TEN", percent_off="10"))
    await env.call("RedeemCoupon", pb.RedeemCouponRequest(idempotency_key="r2", customer_id="john-wick",
                                                          coupon_code="TEN"))
    await expect_error(env, "RedeemCoupon", pb.RedeemCouponRequest(
        idempotency_key="r3", customer_id="john-wick", coupon_code="TEN"), grpc.StatusCode.ALREADY_EXISTS,
        "coupon_code")


async def test_a_draft_shows_and_renders_every_new_line_kind(env: InvoiceEnv) -> None:
    await meters(env, "tokens", "kwh")
    plan = pb.CreatePlanRequest(idempotency_key="p", plan_id="all", currency="USD", minimum_commitment="200",
                                usage_charges=[
        pb.UsageCharge(meter_code="tokens", price=per_unit("0.00001"), group_by="model",
                       dimension_prices=[pb.DimensionPrice(value="large", price=per_unit("0.00003"))]),
        pb.UsageCharge(meter_code="kwh", price=per_unit("0.10"), time_of_use=pb.TimeOfUse(
            time_zone="UTC", peak_hours=[12], peak_price=per_unit("0.30")))])
    await env.call("CreatePlan", plan)
    await seed_catalog(env, plan=plan)
    await env.call("SetTaxRule", pb.SetTaxRuleRequest(idempotency_key="t", region="DE", name="VAT", rate="19"))
    await env.call("SetCustomerTaxRegion", pb.SetCustomerTaxRegionRequest(idempotency_key="tr",
                                                                          customer_id="john-wick", tax_region="DE"))
    await env.call("CreateCoupon", pb.CreateCouponRequest(idempotency_key="c",
        coupon_code="KWH5", amount_off="5", currency="USD", applies_to="kwh"))
    await env.call("RedeemCoupon", pb.RedeemCouponRequest(idempotency_key="r", customer_id="john-wick",
                                                          coupon_code="KWH5", redeemed_at=ts(when(1))))
    await env.call("IngestEvents", pb.IngestEventsRequest(events=[
        event("e1", "tokens", "1000000", when(3), model="large"),
        event("e2", "tokens", "500000", when(3), model="tiny"),
        event("e3", "kwh", "100", when(4).replace(hour=12)), event("e4", "kwh", "50", when(4).replace(hour=3))]))
    draft = await env.call("CreateDraft", pb.CreateDraftRequest(idempotency_key="d", customer_id="john-wick",
                                                                period_start=ts(when(1))))
    # tokens large 30.00, tiny 5.00; kwh peak 30.00, off-peak 5.00; usage 70.00 -> true-up 130.00;
    # KWH5 takes 5.00 off the kwh lines in proportion 30 : 5 (4.2857 -> 4.29 by the largest remainder, 0.71);
    # VAT 19% per line on the net: 5.70, 0.95, 25.71 -> 4.8849 -> 4.88, 4.29 -> 0.8151 -> 0.82, 24.70 = 37.05
    assert [(i.variant, i.amount, i.discount, i.tax) for i in draft.line_items] == [
        ("model=large", "30.00", "0.00", "5.70"), ("model=tiny", "5.00", "0.00", "0.95"),
        ("peak", "30.00", "4.29", "4.88"), ("off_peak", "5.00", "0.71", "0.82"),
        ("true_up", "130.00", "0.00", "24.70")]
    assert (draft.subtotal, draft.discounts, draft.tax, draft.amount_due) == ("200.00", "5.00", "37.05", "232.05")
    text = (await env.call("RenderInvoice", pb.RenderInvoiceRequest(invoice_id=draft.invoice_id))).content
    for shown in ("tokens (model=large)", "kwh (peak)", "kwh (off_peak)", "Minimum commitment true-up",
                  "discount KWH5", "tax 19%", "Discounts", "Tax VAT (19%, DE, added)", "232.05"):
        assert shown in text, (shown, text)


async def test_cli_prices_taxes_and_coupons(env: InvoiceEnv, monkeypatch: pytest.MonkeyPatch,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    await seed_catalog(env)
    await meters(env, "tokens", "kwh")
    monkeypatch.setenv("CREDITS_INVOICE_ADDR", f"127.0.0.1:{env.port}")
    monkeypatch.setenv("CREDITS_API_KEY", env.key)

    async def cli(*argv: str) -> str:
        assert await asyncio.to_thread(main, list(argv)) == 0
        return capsys.readouterr().out

    shown = await cli("plans", "create", "ai", "--usage", "tokens=per_unit:0.00001", "--usage", "kwh=per_unit:0.10",
                      "--price-by", "tokens:model=large=per_unit:0.00003", "--filter", "tokens:region=eu,us",
                      "--peak", "kwh=Europe/Berlin@8-19@1-5=per_unit:0.30", "--commitment", "100")
    for text in ("tokens model=large", "only region in eu, us", "peak", "Europe/Berlin", "100 of usage per period"):
        assert text in shown, (text, shown)
    assert "DE" in await cli("taxes", "set", "DE", "--rate", "19", "--name", "VAT 19%")
    assert "VAT 19%" in await cli("taxes", "list")
    assert "DE" in await cli("taxes", "assign", "john-wick", "DE")
    assert "LAUNCH20" in await cli("coupons", "create", "LAUNCH20", "--percent", "20", "--periods", "3")
    assert "LAUNCH20" in await cli("coupons", "list")
    assert "LAUNCH20" in await cli("coupons", "redeem", "john-wick", "LAUNCH20", "--at", "2026-08-01")
    with pytest.raises(SystemExit):
        await asyncio.to_thread(main, ["plans", "create", "bad", "--usage", "kwh=per_unit:1", "--peak", "kwh=UTC"])
    with pytest.raises(SystemExit):
        await asyncio.to_thread(main, ["coupons", "create", "BOTH", "--percent", "5", "--amount", "1"])


async def test_prepare_taxes_after_credits_and_an_abort_taxes_the_whole_net_again(env: InvoiceEnv) -> None:
    plan = pb.CreatePlanRequest(idempotency_key="p", plan_id="fee", currency="USD",
                                fixed_fees=[pb.FixedFee(code="base", amount="100")])
    await env.call("CreatePlan", plan)
    await seed_catalog(env, plan=plan)
    await env.call("SetTaxRule", pb.SetTaxRuleRequest(idempotency_key="t", region="DE", name="VAT", rate="19"))
    await env.call("SetCustomerTaxRegion", pb.SetCustomerTaxRegionRequest(idempotency_key="tr",
                                                                          customer_id="john-wick", tax_region="DE"))
    draft = await env.call("CreateDraft", pb.CreateDraftRequest(idempotency_key="d", customer_id="john-wick",
                                                                period_start=ts(when(1))))
    assert (draft.tax, draft.amount_due) == ("19.00", "119.00")
    prepared = await env.call("PrepareFinalize", pb.PrepareFinalizeRequest(
        idempotency_key="prep", invoice_id=draft.invoice_id, applications=[pb.CreditApplication(
            charge_id="L001#1", lot_id="lot-1", lot_type="PURCHASED", amount="30.00")]))
    # 100.00 - 30.00 credit = 70.00 taxable: 13.30 tax, 83.30 due
    assert (prepared.credits_applied, prepared.tax, prepared.amount_due) == ("30.00", "13.30", "83.30")
    aborted = await env.call("AbortFinalize", pb.AbortFinalizeRequest(idempotency_key="abort",
                                                                      invoice_id=draft.invoice_id,
                                                                      prepare_key="prep"))
    assert (aborted.status, aborted.credits_applied, aborted.tax, aborted.amount_due) == (
        pb.DRAFT, "0.00", "19.00", "119.00")
    assert aborted.line_items[0].tax == "19.00"


async def test_tax_rules_and_coupons_list_in_pages(env: InvoiceEnv) -> None:
    for n in range(5):
        await env.call("SetTaxRule", pb.SetTaxRuleRequest(idempotency_key=f"t{n}", region=f"R{n}", rate=str(n)))
        await env.call("CreateCoupon", pb.CreateCouponRequest(idempotency_key=f"c{n}",
            coupon_code=f"C{n}", percent_off="5"))
    for method, field, key in (("ListTaxRules", "rules", "region"), ("ListCoupons", "coupons", "coupon_code")):
        seen, token = [], ""
        while True:
            page = await env.call(method, getattr(pb, f"{method}Request")(page_size=2, page_token=token))
            seen += [getattr(x, key) for x in getattr(page, field)]
            token = page.next_page_token
            if not token:
                break
        assert seen == [f"{key[0].upper()}{n}" for n in range(5)], (method, seen)


@pytest.mark.parametrize("seed", [1, 2])
async def test_postgres_splits_usage_as_the_rule_says(env: InvoiceEnv, seed: int) -> None:
    """Seeded random events in October 2026 (Europe/Berlin leaves summer time on the 25th): Postgres's peak
    and off-peak totals equal TimeOfUse.is_peak on each event's local time, and the totals per model (a
    missing property counts as `model=`) equal the events', with region=us filtered out."""
    from random import Random
    from zoneinfo import ZoneInfo

    from invoice_service.domain.dimensions import TimeOfUse
    from invoice_service.domain.pricing import Price, PriceModel

    rng = Random(seed)
    hours, days = sorted(rng.sample(range(24), 10)), sorted(rng.sample(range(1, 8), 4))
    await meters(env, "kwh", "tokens")
    plan = pb.CreatePlanRequest(idempotency_key="p", plan_id="mix", currency="USD", usage_charges=[
        pb.UsageCharge(meter_code="kwh", price=per_unit("1"), time_of_use=pb.TimeOfUse(
            time_zone="Europe/Berlin", peak_hours=hours, peak_days=days, peak_price=per_unit("2"))),
        pb.UsageCharge(meter_code="tokens", price=per_unit("1"), group_by="model",
                       filters=[pb.PropertyFilter(property="region", values=["eu", "ch"])])])
    await env.call("CreatePlan", plan)
    october = when(1, month=10)
    await seed_catalog(env, plan=plan, anchor=october)
    rule = TimeOfUse("Europe/Berlin", tuple(hours), tuple(days), Price(PriceModel.PER_UNIT))
    expected: dict[str, int] = {}
    events = []
    for n in range(400):
        at = october + timedelta(seconds=rng.randrange(31 * 86400))
        quantity = rng.randint(1, 100)
        if n % 2:
            local = at.astimezone(ZoneInfo("Europe/Berlin"))
            variant = "peak" if rule.is_peak(local.hour, local.isoweekday()) else "off_peak"
            events.append(event(f"k{n}", "kwh", str(quantity), at))
        else:
            model, region = rng.choice(["a", "b", None]), rng.choice(["eu", "ch", "us"])
            props = {"region": region, **({"model": model} if model else {})}
            variant = f"model={model or ''}" if region != "us" else "filtered"
            events.append(event(f"t{n}", "tokens", str(quantity), at, **props))
        expected[variant] = expected.get(variant, 0) + quantity
    await env.call("IngestEvents", pb.IngestEventsRequest(events=events))
    draft = await env.call("CreateDraft", pb.CreateDraftRequest(idempotency_key="d", customer_id="john-wick",
                                                                period_start=ts(october)))
    got = {i.variant: int(i.quantity) for i in draft.line_items}
    expected.pop("filtered", None)
    assert got == expected
