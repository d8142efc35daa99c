"""Issue #19 part A, shown with hand-computed tables: an upgrade on day 10 of 30, 12 -> 20 seats on
day 15, a cancellation on day 20 with a final invoice. Each invoice is finalized by the real saga with
credits applied, and the reconciler finds 0 violations.

September 2026 has 30 days: day n starts at Sep 1 + n days, so a change "on day 10" leaves 10/30 of the
period to the old terms and 20/30 to the new (fees pro-rated by time, usage priced by event time).
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from credits.invoice.v1 import invoice_pb2 as ipb
from credits.ledger.v1 import ledger_pb2 as lpb

from coordinator import naming
from coordinator.messages import BillingCycleInput
from coordinator.workflows import BillingCycleWorkflow
from reconciler.run import reconcile
from stack.scenario import ts
from tests.coordinator.conftest import TENANT, Stack

START = datetime(2026, 9, 1, tzinfo=UTC)


def day(n: int, hour: int = 0) -> datetime:
    return START + timedelta(days=n, hours=hour)


async def _plans(stack: Stack) -> None:
    s = stack.services
    for plan_id, fee, token_price in (("basic", "30.00", "0.00001"), ("pro", "90.00", "0.000005")):
        await s.invoice.CreatePlan(ipb.CreatePlanRequest(
            idempotency_key=f"plan-{plan_id}", plan_id=plan_id, currency="USD",
            usage_charges=[ipb.UsageCharge(meter_code="input_tokens",
                                           price=ipb.Price(model=ipb.PER_UNIT, unit_amount=token_price))],
            fixed_fees=[ipb.FixedFee(code="platform", name=f"{plan_id} platform fee", amount=fee)]), metadata=s.md)
    await s.invoice.CreatePlan(ipb.CreatePlanRequest(
        idempotency_key="plan-team", plan_id="team", currency="USD",
        licenses=[ipb.License(code="seat", name="Seat", unit_amount="10.00")]), metadata=s.md)


async def _customer(stack: Stack, name: str, plan_id: str, credit: str, expires: datetime | None = None,
                    seats: int = 0) -> None:
    s = stack.services
    account = f"acct-{name}"
    await s.ledger.CreateAccount(lpb.CreateAccountRequest(idempotency_key=f"a-{name}", account_id=account,
                                                          name=name), metadata=s.md)
    grant = lpb.GrantCreditsRequest(idempotency_key=f"g-{name}", account_id=account, type=lpb.PROMOTIONAL,
                                    unit="USD", amount=credit, effective_at=ts(START), source="marketing",
                                    reason_code="referral", campaign_id="lifecycle")
    if expires is not None:
        grant.expires_at.CopyFrom(ts(expires))
    await s.ledger.GrantCredits(grant, metadata=s.md)
    await s.invoice.CreateCustomer(ipb.CreateCustomerRequest(idempotency_key=f"c-{name}", customer_id=name,
                                                             ledger_account_id=account), metadata=s.md)
    await s.invoice.CreateSubscription(ipb.CreateSubscriptionRequest(
        idempotency_key=f"s-{name}", subscription_id=f"sub-{name}", customer_id=name, plan_id=plan_id,
        anchor=ts(START), licenses=[ipb.Quantity(code="seat", quantity=seats)] if seats else []), metadata=s.md)


async def _tokens(stack: Stack, name: str, *at_quantity: tuple[datetime, str]) -> None:
    events = [ipb.UsageEvent(event_id=f"{name}-{n}", customer_id=name, meter_code="input_tokens", quantity=q,
                             timestamp=ts(at)) for n, (at, q) in enumerate(at_quantity)]
    await stack.services.invoice.IngestEvents(ipb.IngestEventsRequest(idempotency_key=f"u-{name}", events=events),
                                              metadata=stack.md)


async def _finalize(stack: Stack, name: str) -> ipb.Invoice:
    s = stack.services
    draft = await s.invoice.CreateDraft(ipb.CreateDraftRequest(
        idempotency_key=f"d-{name}", customer_id=name, subscription_id=f"sub-{name}", period_start=ts(START)),
        metadata=s.md)
    handle = await stack.start_finalize(draft.invoice_id)
    result = await handle.result()
    assert result.outcome == "finalized", result
    assert await stack.assert_both_or_neither(draft.invoice_id, f"acct-{name}") == "finalized"
    return await stack.invoice(draft.invoice_id)


def _table(inv: ipb.Invoice) -> list[tuple[str, str, str, str]]:
    """(code, service start day, service end day, amount) per line item."""
    return [(i.code, i.service_start.ToDatetime(UTC).strftime("%d"), i.service_end.ToDatetime(UTC).strftime("%d"),
             i.amount) for i in inv.line_items]


async def test_upgrade_seats_and_cancel_are_prorated_finalized_and_reconciled(stack: Stack) -> None:
    s = stack.services
    await _plans(stack)
    # Upgrade basic -> pro on day 10; the 50.00 lot expires on day 15 (a lot boundary after the change).
    await _customer(stack, "ulla", "basic", "50.00", expires=day(15))
    await _tokens(stack, "ulla", (day(4, 12), "1000000"), (day(19, 12), "2000000"))
    await s.invoice.UpdateSubscription(ipb.UpdateSubscriptionRequest(
        idempotency_key="up-ulla", subscription_id="sub-ulla", effective_at=ts(day(10)), plan_id="pro"),
        metadata=s.md)
    # 12 -> 20 seats on day 15.
    await _customer(stack, "sam", "team", "100.00", seats=12)
    await s.invoice.UpdateSubscription(ipb.UpdateSubscriptionRequest(
        idempotency_key="seats-sam", subscription_id="sub-sam", effective_at=ts(day(15)),
        licenses=[ipb.Quantity(code="seat", quantity=20)]), metadata=s.md)
    # Cancel on day 20: the final invoice ends there; usage after it is not billed.
    await _customer(stack, "cleo", "basic", "5.00")
    await _tokens(stack, "cleo", (day(4, 12), "1000000"), (day(24, 12), "3000000"))
    cancelled = await s.invoice.CancelSubscription(ipb.CancelSubscriptionRequest(
        idempotency_key="cancel-cleo", subscription_id="sub-cleo", at=ts(day(20))), metadata=s.md)
    assert cancelled.ends_at.ToDatetime(UTC) == day(20)

    async with stack.worker():
        ulla, sam, cleo = [await _finalize(stack, n) for n in ("ulla", "sam", "cleo")]

    # basic: fee 30.00, tokens 0.00001; pro: fee 90.00, tokens 0.000005 (by hand):
    #   basic fee 30 x 10/30 = 10.00; 1M tokens on day 4 under basic = 10.00
    #   pro fee: C(day 30) = 10 + 90 x 20/30 = 70.00, minus C(day 10) = 10.00 -> 60.00; 2M on day 19 under pro = 10.00
    assert _table(ulla) == [("input_tokens", "01", "11", "10.00"), ("platform", "01", "11", "10.00"),
                            ("input_tokens", "11", "01", "10.00"), ("platform", "11", "01", "60.00")]
    assert [i.description for i in ulla.line_items][1] == "basic platform fee (pro-rated 10d of 30d)"
    # The lot (expiring day 15) pays only what was served before it expired: 10 + 10 + the pro fee's
    # piece from day 10 to day 15 (60.00 x 5/20 = 15.00) = 35.00. The pro tokens all came on day 19.
    assert (ulla.subtotal, ulla.credits_applied, ulla.amount_due) == ("90.00", "35.00", "55.00")
    assert {c.charge_id: c.amount for c in ulla.charges}["L004#1"] == "15.00"
    # 12 seats x 10.00 x 15/30 = 60.00; then 20 seats: C = 60 + 200 x 15/30 = 160.00 -> 100.00
    assert _table(sam) == [("seat", "01", "16", "60.00"), ("seat", "16", "01", "100.00")]
    assert (sam.subtotal, sam.credits_applied, sam.amount_due) == ("160.00", "100.00", "60.00")
    # fee 30 x 20/30 = 20.00 and the 1M tokens of day 4 = 10.00; the 3M tokens of day 24 are after the end
    assert cleo.period_end.ToDatetime(UTC) == day(20)
    assert _table(cleo) == [("input_tokens", "01", "21", "10.00"), ("platform", "01", "21", "20.00")]
    assert (cleo.subtotal, cleo.credits_applied, cleo.amount_due) == ("30.00", "5.00", "25.00")
    rendered = await s.invoice.RenderInvoice(ipb.RenderInvoiceRequest(invoice_id=cleo.invoice_id), metadata=s.md)
    text = rendered.content
    assert "basic platform fee (pro-rated 20d" in text and "  of 30d)" in text
    assert "Period:   2026-09-01 to 2026-09-21" in text
    rendered = await s.invoice.RenderInvoice(ipb.RenderInvoiceRequest(invoice_id=ulla.invoice_id), metadata=s.md)
    assert rendered.content.count("  service 2026-09-01 to 2026-09-11") == 2
    assert rendered.content.count("  service 2026-09-11 to 2026-10-01") == 2

    report = await reconcile(stack.ledger_dsn, stack.invoice_dsn, stack.client)
    assert report.violations == [], report.violations


async def test_billing_cycle_finalizes_each_of_a_customers_subscriptions(stack: Stack) -> None:
    """Two subscriptions of one customer (seats and an add-on plan): the billing cycle drafts and finalizes
    one invoice per subscription and period (the draft keys name the subscription), once."""
    s = stack.services
    await _plans(stack)
    await _customer(stack, "duo", "team", "25.00", seats=3)
    await s.invoice.CreateSubscription(ipb.CreateSubscriptionRequest(
        idempotency_key="s-duo-2", subscription_id="sub-duo-basic", customer_id="duo", plan_id="basic",
        anchor=ts(START)), metadata=s.md)
    as_of = "2027-11-10T00:00:00+00:00"  # September 2026 is due (period end + the tests' 400-day grace)
    async with stack.worker():
        result = await stack.client.execute_workflow(
            BillingCycleWorkflow.run, BillingCycleInput(TENANT, as_of), id=naming.cycle_workflow_id(TENANT, as_of),
            task_queue=stack.task_queue)
    listed = await s.invoice.ListInvoices(ipb.ListInvoicesRequest(customer_id="duo"), metadata=s.md)
    september = sorted((i.subscription_id, i.subtotal) for i in listed.invoices
                       if i.period_start.ToDatetime(UTC) == START and i.status == ipb.FINALIZED)
    # 3 seats x 10.00 = 30.00; the basic plan's fee 30.00 (no usage)
    assert september == [("sub-duo", "30.00"), ("sub-duo-basic", "30.00")]
    assert result.failed == 0 and result.finalized >= 2
    report = await reconcile(stack.ledger_dsn, stack.invoice_dsn, stack.client)
    assert report.violations == [], report.violations
