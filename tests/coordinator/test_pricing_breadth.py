"""Issue 19 part B end to end: each new price kind, coupon and tax rule on real services (ledger,
invoice, Temporal), finalized by the unchanged FinalizeInvoice saga with credits applied, then the
reconciler finds 0 violations. Amounts are computed by hand in the comments."""

from __future__ import annotations

from datetime import UTC, datetime

from credits.invoice.v1 import invoice_pb2 as ipb
from credits.ledger.v1 import ledger_pb2 as lpb

from invoice_service.domain.invoices import TRUE_UP
from reconciler.run import reconcile
from stack.scenario import ts
from tests.coordinator.conftest import TENANT, Stack

AUG = datetime(2026, 8, 1, tzinfo=UTC)


def at(month: int, day: int, hour: int = 12, minute: int = 0) -> datetime:
    return datetime(2026, month, day, hour, minute, tzinfo=UTC)


async def meter(stack: Stack, code: str) -> None:
    await stack.services.invoice.CreateMeter(ipb.CreateMeterRequest(
        idempotency_key=f"m-{code}", meter_code=code, name=code, aggregation=ipb.SUM), metadata=stack.md)


async def customer(stack: Stack, customer_id: str, plan_id: str, plan: ipb.CreatePlanRequest | None = None) -> str:
    """Plan (if given), ledger account, customer, subscription from August 2026; returns the account id."""
    s, md = stack.services, stack.md
    if plan is not None:
        await s.invoice.CreatePlan(plan, metadata=md)
    account = f"acct-{customer_id}"
    await s.ledger.CreateAccount(lpb.CreateAccountRequest(idempotency_key=f"a-{account}", account_id=account,
                                                          name=customer_id), metadata=md)
    await s.invoice.CreateCustomer(ipb.CreateCustomerRequest(idempotency_key=f"c-{customer_id}",
                                                             customer_id=customer_id, name=customer_id,
                                                             ledger_account_id=account), metadata=md)
    await s.invoice.CreateSubscription(ipb.CreateSubscriptionRequest(
        idempotency_key=f"s-{customer_id}", subscription_id=f"sub-{customer_id}", customer_id=customer_id,
        plan_id=plan_id, anchor=ts(AUG)), metadata=md)
    return account


async def grant(stack: Stack, account: str, amount: str, key: str, lot_type: int = lpb.PROMOTIONAL) -> None:
    await stack.services.ledger.GrantCredits(lpb.GrantCreditsRequest(
        idempotency_key=key, account_id=account, type=lot_type, unit="USD", amount=amount,  # type: ignore[arg-type]
        effective_at=ts(AUG), source="test", reason_code="pricing", campaign_id="pricing-2026"), metadata=stack.md)


async def ingest(stack: Stack, customer_id: str, meter_code: str,
                 events: list[tuple[datetime, str, dict[str, str]]]) -> None:
    await stack.services.invoice.IngestEvents(ipb.IngestEventsRequest(events=[
        ipb.UsageEvent(event_id=f"{customer_id}-{n}", customer_id=customer_id, meter_code=meter_code, quantity=q,
                       properties=props, timestamp=ts(when)) for n, (when, q, props) in enumerate(events)]),
        metadata=stack.md)


async def finalize(stack: Stack, customer_id: str, period_start: datetime = AUG) -> ipb.Invoice:
    draft = await stack.services.invoice.CreateDraft(ipb.CreateDraftRequest(
        idempotency_key=f"d-{customer_id}-{period_start:%m}", customer_id=customer_id, period_start=ts(period_start)),
        metadata=stack.md)
    async with stack.worker():
        result = await (await stack.start_finalize(draft.invoice_id)).result()
    assert result.outcome == "finalized", result
    inv = await stack.invoice(draft.invoice_id)
    if period_start == AUG:  # the account's first invoice: its balance consumed is this invoice's credits
        await stack.assert_both_or_neither(draft.invoice_id, inv.ledger_account_id)
    else:
        await stack.verify_journal()
        [hold] = [h for h in await stack.holds(draft.invoice_id) if h.status == lpb.COMMITTED]
        assert hold.posted == inv.credits_applied
    return inv


async def assert_reconciled(stack: Stack) -> None:
    report = await reconcile(stack.ledger_dsn, stack.invoice_dsn, stack.client, tenants=[TENANT])
    assert report.ok and not report.violations, report.render()


def usd(minor: int) -> str:
    return f"{minor // 100}.{minor % 100:02d}"


def lines(inv: ipb.Invoice) -> list[tuple[str, str, str, str]]:
    return [(i.variant, i.quantity, i.amount, i.discount) for i in inv.line_items]


def per_unit(amount: str) -> ipb.Price:
    return ipb.Price(model=ipb.PER_UNIT, unit_amount=amount)


async def test_dimensional_ai_price_over_two_models_with_a_meter_filter(stack: Stack) -> None:
    """model=large 0.03 / 1k tokens, model=small 0.002 / 1k; only region=eu counts (the us event does not)."""
    await meter(stack, "tokens")
    plan = ipb.CreatePlanRequest(idempotency_key="p-ai", plan_id="ai", currency="USD", usage_charges=[
        ipb.UsageCharge(meter_code="tokens", price=per_unit("0.00001"), group_by="model",
                        filters=[ipb.PropertyFilter(property="region", values=["eu"])],
                        dimension_prices=[ipb.DimensionPrice(value="large", price=per_unit("0.00003")),
                                          ipb.DimensionPrice(value="small", price=per_unit("0.000002"))])])
    account = await customer(stack, "ai-co", "ai", plan)
    await grant(stack, account, "10.00", "g-ai")
    await ingest(stack, "ai-co", "tokens", [
        (at(8, 3), "1000000", {"model": "large", "region": "eu"}),
        (at(8, 9), "250000", {"model": "large", "region": "eu"}),
        (at(8, 4), "3000000", {"model": "small", "region": "eu"}),
        (at(8, 5), "500000", {"model": "large", "region": "us"})])
    inv = await finalize(stack, "ai-co")
    # large: 1,250,000 tokens x 0.00003 = 37.50; small: 3,000,000 x 0.000002 = 6.00; total 43.50
    assert lines(inv) == [("model=large", "1250000", "37.50", "0.00"), ("model=small", "3000000", "6.00", "0.00")]
    assert (inv.subtotal, inv.credits_applied, inv.amount_due) == ("43.50", "10.00", "33.50")
    await assert_reconciled(stack)


async def test_peak_and_off_peak_in_the_plans_time_zone(stack: Stack) -> None:
    """Peak: 08:00-19:59 Europe/Berlin (UTC+2 in August), Monday-Friday, 0.30/kWh; otherwise 0.10/kWh."""
    await meter(stack, "kwh")
    tou = ipb.TimeOfUse(time_zone="Europe/Berlin", peak_hours=list(range(8, 20)), peak_days=[1, 2, 3, 4, 5],
                        peak_price=per_unit("0.30"))
    plan = ipb.CreatePlanRequest(idempotency_key="p-tou", plan_id="tou", currency="USD", usage_charges=[
        ipb.UsageCharge(meter_code="kwh", price=per_unit("0.10"), time_of_use=tou)])
    account = await customer(stack, "tou-co", "tou", plan)
    await grant(stack, account, "20.00", "g-tou")
    await ingest(stack, "tou-co", "kwh", [
        (at(8, 3, 7), "100", {}),        # Mon 09:00 local: peak
        (at(8, 4, 6, 30), "20", {}),     # Tue 08:30 local (06:30 UTC, not a peak hour in UTC): peak
        (at(8, 4, 5, 30), "10", {}),     # Tue 07:30 local: off-peak
        (at(8, 3, 18, 30), "200", {}),   # Mon 20:30 local: off-peak
        (at(8, 8, 10), "50", {})])       # Sat 12:00 local: off-peak (weekend)
    inv = await finalize(stack, "tou-co")
    # peak 120 x 0.30 = 36.00; off-peak 260 x 0.10 = 26.00
    assert lines(inv) == [("peak", "120", "36.00", "0.00"), ("off_peak", "260", "26.00", "0.00")]
    assert (inv.subtotal, inv.credits_applied, inv.amount_due) == ("62.00", "20.00", "42.00")
    await assert_reconciled(stack)


async def test_commitment_of_100_with_60_of_usage_trues_up_40(stack: Stack) -> None:
    await meter(stack, "calls")
    plan = ipb.CreatePlanRequest(idempotency_key="p-commit", plan_id="commit", currency="USD",
                                 usage_charges=[ipb.UsageCharge(meter_code="calls", price=per_unit("0.01"))],
                                 minimum_commitment="100")
    account = await customer(stack, "commit-co", "commit", plan)
    await grant(stack, account, "50.00", "g-commit")
    await ingest(stack, "commit-co", "calls", [(at(8, 10), "2500", {}), (at(8, 20), "3500", {})])
    inv = await finalize(stack, "commit-co")
    # usage 6,000 x 0.01 = 60.00; true-up 100.00 - 60.00 = 40.00 (a FIXED_FEE line); credit 50.00
    assert lines(inv) == [("", "6000", "60.00", "0.00"), (TRUE_UP, "1", "40.00", "0.00")]
    assert inv.line_items[1].kind == ipb.FIXED_FEE
    assert (inv.subtotal, inv.credits_applied, inv.amount_due) == ("100.00", "50.00", "50.00")
    text = await stack.services.invoice.RenderInvoice(ipb.RenderInvoiceRequest(invoice_id=inv.invoice_id),
                                                      metadata=stack.md)
    assert "Minimum commitment true-up" in text.content
    await assert_reconciled(stack)


async def test_coupon_of_20_percent_for_3_periods_then_full_price(stack: Stack) -> None:
    plan = ipb.CreatePlanRequest(idempotency_key="p-base", plan_id="base", currency="USD",
                                 fixed_fees=[ipb.FixedFee(code="platform", name="Platform", amount="100")])
    account = await customer(stack, "coupon-co", "base", plan)
    await stack.services.invoice.CreateCoupon(ipb.CreateCouponRequest(idempotency_key="k-launch",
        coupon_code="LAUNCH20", name="Launch", percent_off="20", duration_periods=3), metadata=stack.md)
    await stack.services.invoice.RedeemCoupon(ipb.RedeemCouponRequest(
        idempotency_key="r-launch", customer_id="coupon-co", coupon_code="LAUNCH20", redeemed_at=ts(at(8, 1, 0))),
        metadata=stack.md)
    table = []
    for month in (8, 9, 10, 11):
        await grant(stack, account, "10.00", f"g-coupon-{month}")
        inv = await finalize(stack, "coupon-co", at(month, 1, 0))
        table.append((month, inv.subtotal, inv.discounts, inv.credits_applied, inv.amount_due))
    # 100.00 - 20% (20.00) - 10.00 credit = 70.00 for August, September, October; November at full price
    assert table == [(8, "100.00", "20.00", "10.00", "70.00"), (9, "100.00", "20.00", "10.00", "70.00"),
                     (10, "100.00", "20.00", "10.00", "70.00"), (11, "100.00", "0.00", "10.00", "90.00")]
    await assert_reconciled(stack)


async def test_vat_19_exclusive_and_21_inclusive(stack: Stack) -> None:
    s, md = stack.services, stack.md
    await s.invoice.SetTaxRule(ipb.SetTaxRuleRequest(idempotency_key="t-de", region="DE", name="VAT 19%", rate="19"),
                               metadata=md)
    await s.invoice.SetTaxRule(ipb.SetTaxRuleRequest(idempotency_key="t-nl", region="NL", name="BTW 21%", rate="21",
                                                     inclusive=True), metadata=md)
    rules = await s.invoice.ListTaxRules(ipb.ListTaxRulesRequest(), metadata=md)
    assert [(r.region, r.rate, r.inclusive) for r in rules.rules] == [("DE", "19", False), ("NL", "21", True)]
    await s.invoice.CreatePlan(ipb.CreatePlanRequest(idempotency_key="p-de", plan_id="de", currency="USD",
                                                     fixed_fees=[ipb.FixedFee(code="base", amount="100")]), metadata=md)
    await s.invoice.CreatePlan(ipb.CreatePlanRequest(idempotency_key="p-nl", plan_id="nl", currency="USD",
                                                     fixed_fees=[ipb.FixedFee(code="base", amount="121")]), metadata=md)
    for cust, plan, region, credit, lot_type in (("de-co", "de", "DE", "30.00", lpb.PURCHASED),
                                                 ("nl-co", "nl", "NL", "21.00", lpb.PROMOTIONAL)):
        account = await customer(stack, cust, plan)
        await grant(stack, account, credit, f"g-{cust}", lot_type)
        await s.invoice.SetCustomerTaxRegion(ipb.SetCustomerTaxRegionRequest(
            idempotency_key=f"tr-{cust}", customer_id=cust, tax_region=region), metadata=md)
    de = await finalize(stack, "de-co")
    # 100.00 - 30.00 purchased credit (taxed when bought, not again) = 70.00 taxable; 19% on top = 13.30
    assert (de.subtotal, de.credits_applied, de.tax, de.amount_due) == ("100.00", "30.00", "13.30", "83.30")
    assert (de.line_items[0].tax, de.tax_region, de.tax_rate, de.tax_inclusive) == ("13.30", "DE", "19", False)
    nl = await finalize(stack, "nl-co")
    # 121.00 - 21.00 credit = 100.00, which includes 21%: 100.00 - round(100 / 1.21 = 82.6446) = 17.36
    assert (nl.subtotal, nl.credits_applied, nl.tax, nl.amount_due) == ("121.00", "21.00", "17.36", "100.00")
    assert nl.tax_inclusive and nl.line_items[0].tax == "17.36"
    text = await s.invoice.RenderInvoice(ipb.RenderInvoiceRequest(invoice_id=de.invoice_id), metadata=md)
    assert "Tax VAT 19% (19%, DE, added)" in text.content and "83.30" in text.content
    await assert_reconciled(stack)
