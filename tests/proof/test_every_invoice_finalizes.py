"""Issue #18: every customer's invoice finalizes (a month without usage, every ISO currency) and
reconciles with no violation, through the public gRPC APIs and the real saga."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from decimal import Decimal

import grpc
import pytest
from credits.invoice.v1 import invoice_pb2 as ipb
from credits.ledger.v1 import ledger_pb2 as lpb

from coordinator import naming
from coordinator.messages import SweepInput, VoidInvoiceInput
from coordinator.workflows import ResolveInDoubtWorkflow, VoidInvoiceWorkflow
from harness.faults import FaultPlan
from reconciler.report import ReconcileReport
from reconciler.run import reconcile
from stack.scenario import ts
from tests.coordinator.conftest import TENANT, Stack

AUGUST = datetime(2026, 8, 1, tzinfo=UTC)


async def _reconciled(stack: Stack, invoices: int) -> ReconcileReport:
    report = await reconcile(stack.ledger_dsn, stack.invoice_dsn, stack.client, tenants=[TENANT])
    assert report.ok, report.render()
    assert report.checked["invoices"] == invoices
    return report


async def _customer(stack: Stack, name: str, currency: str, unit_price: str, *, quantity: str = "",
                    credit: str = "", credit_unit: str = "") -> str:
    """A customer on a per-token plan in `currency`, 20 days of `quantity` tokens ("" for none) in
    August and (if `credit`) a lot of `credit` in `credit_unit` (default: the currency). The draft."""
    s, md = stack.services, stack.md
    await s.invoice.CreatePlan(ipb.CreatePlanRequest(
        idempotency_key=f"plan-{name}", plan_id=f"plan-{name}", name=name, currency=currency,
        usage_charges=[ipb.UsageCharge(meter_code="input_tokens",
                                       price=ipb.Price(model=ipb.PER_UNIT, unit_amount=unit_price))]), metadata=md)
    await s.ledger.CreateAccount(lpb.CreateAccountRequest(idempotency_key=f"acct-{name}", account_id=f"acct-{name}",
                                                          name=name), metadata=md)
    if credit:
        await s.ledger.GrantCredits(lpb.GrantCreditsRequest(
            idempotency_key=f"grant-{name}", account_id=f"acct-{name}", type=lpb.PROMOTIONAL,
            unit=credit_unit or currency, amount=credit, effective_at=ts(AUGUST), source="marketing",
            reason_code="referral"), metadata=md)
    await s.invoice.CreateCustomer(ipb.CreateCustomerRequest(
        idempotency_key=f"cust-{name}", customer_id=f"cust-{name}", name=name, ledger_account_id=f"acct-{name}"),
        metadata=md)
    await s.invoice.CreateSubscription(ipb.CreateSubscriptionRequest(
        idempotency_key=f"sub-{name}", subscription_id=f"sub-{name}", customer_id=f"cust-{name}",
        plan_id=f"plan-{name}", anchor=ts(AUGUST)), metadata=md)
    if quantity:
        await s.invoice.IngestEvents(ipb.IngestEventsRequest(idempotency_key=f"usage-{name}", events=[
            ipb.UsageEvent(event_id=f"{name}-{d}", customer_id=f"cust-{name}", meter_code="input_tokens",
                           quantity=quantity, timestamp=ts(datetime(2026, 8, d, 12, tzinfo=UTC)))
            for d in range(1, 21)]), metadata=md)
    draft = await s.invoice.CreateDraft(ipb.CreateDraftRequest(
        idempotency_key=f"draft-{name}", customer_id=f"cust-{name}", period_start=ts(AUGUST)), metadata=md)
    return str(draft.invoice_id)


async def test_a_month_without_usage_finalizes_as_a_zero_invoice_and_voids(stack: Stack) -> None:
    invoice_id = await _customer(stack, "idle", "USD", "0.00001", credit="5.00")
    async with stack.worker():
        result = await (await stack.start_finalize(invoice_id)).result()
        assert result.outcome == "finalized", result
        assert (result.subtotal, result.credits_applied, result.amount_due) == ("0.00", "0.00", "0.00")
        inv = await stack.invoice(invoice_id)
        assert inv.status == ipb.FINALIZED and inv.number and not inv.applications
        # The design: the saga's hold exists and is empty (reserved, committed and reversed as any other).
        [hold] = await stack.holds(invoice_id)
        assert (hold.status, hold.reserved, hold.posted or "0.00", len(hold.allocations)) == (
            lpb.COMMITTED, "0.00", "0.00", 0)
        await _reconciled(stack, 1)
        voided = await stack.client.execute_workflow(
            VoidInvoiceWorkflow.run, VoidInvoiceInput(TENANT, invoice_id, "issued by mistake"),
            id=naming.void_workflow_id(TENANT, invoice_id), task_queue=stack.task_queue)
    assert voided.outcome == "voided"
    assert (await stack.invoice(invoice_id)).status == ipb.VOIDED
    assert (await stack.balance("acct-idle")).available == "5.00"
    await _reconciled(stack, 1)


async def test_an_invoice_nothing_could_pay_finalizes_with_nothing_applied(stack: Stack) -> None:
    """Usage, but the only lot is in another currency (no rate between them): nothing applied."""
    invoice_id = await _customer(stack, "eur-lot", "USD", "0.00001", quantity="100000", credit="5.00",
                                 credit_unit="EUR")
    async with stack.worker():
        result = await (await stack.start_finalize(invoice_id)).result()
    assert (result.outcome, result.subtotal, result.credits_applied, result.amount_due) == (
        "finalized", "20.00", "0.00", "20.00")
    await _reconciled(stack, 1)
    assert (await stack.invoice(invoice_id)).credit_notes == ["no rate from EUR to USD: 5.00 EUR not applied"]


@pytest.mark.parametrize(("currency", "unit_price", "credit", "subtotal", "due"), [
    # No currency below is defined by the tenant: each is a built-in ledger unit with its ISO scale.
    ("SEK", "0.00025", "300.50", "1000", "699.5"),
    ("CLP", "0.25", "300000", "1000000", "700000"),
    ("KWD", "0.000002778", "1.111", "11.112", "10.001"),
])
async def test_invoices_in_iso_currencies_finalize_and_reconcile(stack: Stack, currency: str, unit_price: str,
                                                                 credit: str, subtotal: str, due: str) -> None:
    invoice_id = await _customer(stack, currency.lower(), currency, unit_price, quantity="200000", credit=credit)
    async with stack.worker():
        result = await (await stack.start_finalize(invoice_id)).result()
    assert result.outcome == "finalized", result
    assert (Decimal(result.subtotal), Decimal(result.credits_applied), Decimal(result.amount_due)) == (
        Decimal(subtotal), Decimal(credit), Decimal(due))
    report = await _reconciled(stack, 1)
    assert (report.checked["holds"], report.checked["decisions"]) == (1, 1)


async def test_the_ledger_and_the_invoice_service_share_one_catalog_of_money(stack: Stack) -> None:
    units = dict((u.code, u.scale) for u in (await stack.services.ledger.ListUnits(
        lpb.ListUnitsRequest(), metadata=stack.md)).units)
    assert (units["SEK"], units["CLP"], units["KRW"], units["KWD"], units["JPY"]) == (2, 0, 0, 3, 0)
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await stack.services.ledger.DefineUnit(lpb.DefineUnitRequest(idempotency_key="krw", code="KRW", scale=2),
                                               metadata=stack.md)
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "scale" in (refused.value.details() or "")
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await stack.services.invoice.CreatePlan(ipb.CreatePlanRequest(
            idempotency_key="p-usd", plan_id="p-usd", currency="usd", usage_charges=[ipb.UsageCharge(
                meter_code="input_tokens", price=ipb.Price(model=ipb.PER_UNIT, unit_amount="1"))]), metadata=stack.md)
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "currency" in (refused.value.details() or "")


@pytest.mark.parametrize(("step", "phase", "settled", "status"), [
    ("commit_hold", "before", "committed", ipb.FINALIZED),      # after the decision: committed
    ("prepare_finalize", "after", "aborted", ipb.DRAFT),        # before it: released, back to DRAFT
])
async def test_the_resolver_settles_a_lost_zero_invoice_saga_by_its_decision(
        stack: Stack, step: str, phase: str, settled: str, status: int) -> None:
    invoice_id = await _customer(stack, "idle", "USD", "0.00001")
    faults = FaultPlan().add(step, phase, "block")
    async with stack.worker(faults):
        handle = await stack.start_finalize(invoice_id)
        await asyncio.wait_for(faults.reached.wait(), 30)
        await handle.terminate("simulated loss of the coordinator")
        faults.release_blocked()
    async with stack.worker():
        result = await stack.client.execute_workflow(ResolveInDoubtWorkflow.run, SweepInput(older_than_s=0),
                                                     id=f"resolve-{stack.task_queue}", task_queue=stack.task_queue)
    assert (len(result.committed), len(result.aborted), result.unknown) == (
        int(settled == "committed"), int(settled == "aborted"), [])
    assert (await stack.invoice(invoice_id)).status == status
    [hold] = await stack.holds(invoice_id)
    assert hold.status == (lpb.COMMITTED if settled == "committed" else lpb.RELEASED)
    await _reconciled(stack, 1)


async def _compute_customer(stack: Stack, name: str, minutes_per_day: str, free_minutes: str) -> str:
    """A customer billed 0.02 USD per compute minute (a meter counting in `compute_minute`) with a
    lot of `free_minutes` compute minutes scoped to that meter. Returns the draft."""
    s, md = stack.services, stack.md
    await s.ledger.DefineUnit(lpb.DefineUnitRequest(idempotency_key="unit-cm", code="compute_minute", scale=0),
                              metadata=md)
    await s.invoice.CreateMeter(ipb.CreateMeterRequest(idempotency_key="meter-compute", meter_code="compute",
                                                       aggregation=ipb.SUM, unit="compute_minute"), metadata=md)
    await s.invoice.CreatePlan(ipb.CreatePlanRequest(
        idempotency_key="plan-compute", plan_id="compute", currency="USD", usage_charges=[ipb.UsageCharge(
            meter_code="compute", price=ipb.Price(model=ipb.PER_UNIT, unit_amount="0.02"))]), metadata=md)
    await s.ledger.CreateAccount(lpb.CreateAccountRequest(idempotency_key=f"acct-{name}", account_id=f"acct-{name}"),
                                 metadata=md)
    await s.ledger.GrantCredits(lpb.GrantCreditsRequest(
        idempotency_key=f"grant-{name}", account_id=f"acct-{name}", type=lpb.PROMOTIONAL, unit="compute_minute",
        amount=free_minutes, effective_at=ts(AUGUST), source="marketing", reason_code="trial",
        scope=lpb.Scope(kinds=[lpb.USAGE], names=["compute"])), metadata=md)
    await s.invoice.CreateCustomer(ipb.CreateCustomerRequest(
        idempotency_key=f"cust-{name}", customer_id=f"cust-{name}", ledger_account_id=f"acct-{name}"), metadata=md)
    await s.invoice.CreateSubscription(ipb.CreateSubscriptionRequest(
        idempotency_key=f"sub-{name}", subscription_id=f"sub-{name}", customer_id=f"cust-{name}", plan_id="compute",
        anchor=ts(AUGUST)), metadata=md)
    await s.invoice.IngestEvents(ipb.IngestEventsRequest(idempotency_key=f"usage-{name}", events=[
        ipb.UsageEvent(event_id=f"{name}-{d}", customer_id=f"cust-{name}", meter_code="compute",
                       quantity=minutes_per_day, timestamp=ts(datetime(2026, 8, d, 12, tzinfo=UTC)))
        for d in range(1, 16)]), metadata=md)
    draft = await s.invoice.CreateDraft(ipb.CreateDraftRequest(
        idempotency_key=f"draft-{name}", customer_id=f"cust-{name}", period_start=ts(AUGUST)), metadata=md)
    return str(draft.invoice_id)


async def _minutes_left(stack: Stack, account_id: str) -> str:
    bal = await stack.services.ledger.GetBalance(lpb.GetBalanceRequest(account_id=account_id), metadata=stack.md)
    [minutes] = [b for b in bal.totals if b.unit == "compute_minute"]
    return minutes.available


async def test_free_compute_minutes_pay_usage_in_units_and_come_back_on_void(stack: Stack) -> None:
    """1,000 free minutes against 1,500 used at 0.02: subtotal 30.00, credits 20.00, due 10.00."""
    invoice_id = await _compute_customer(stack, "gpu", "100", "1000")
    async with stack.worker():
        result = await (await stack.start_finalize(invoice_id)).result()
        assert (result.outcome, result.subtotal, result.credits_applied, result.amount_due) == (
            "finalized", "30.00", "20.00", "10.00")
        inv = await stack.invoice(invoice_id)
        [line] = inv.line_items
        assert (line.unit, line.quantity, line.units_covered, line.credits_applied, line.amount_due) == (
            "compute_minute", "1500", "1000", "20.00", "10.00")
        assert {(a.unit, a.units, a.amount) for a in inv.applications} == {("compute_minute", "1000", "20.00")}
        assert await _minutes_left(stack, "acct-gpu") == "0"  # the lot is empty
        holds = {h.hold_key: h for h in await stack.holds(invoice_id)}
        assert sorted(naming.unit_of_hold(k) for k in holds) == ["", "compute_minute"]
        await _reconciled(stack, 1)
        voided = await stack.client.execute_workflow(
            VoidInvoiceWorkflow.run, VoidInvoiceInput(TENANT, invoice_id, "customer disputed"),
            id=naming.void_workflow_id(TENANT, invoice_id), task_queue=stack.task_queue)
    assert voided.outcome == "voided"
    assert await _minutes_left(stack, "acct-gpu") == "1000"  # back on the original lot
    await _reconciled(stack, 1)
    await stack.verify_journal()


async def test_more_free_minutes_than_used_leave_the_rest_on_the_lot(stack: Stack) -> None:
    invoice_id = await _compute_customer(stack, "small", "10", "1000")
    async with stack.worker():
        result = await (await stack.start_finalize(invoice_id)).result()
    assert (result.subtotal, result.credits_applied, result.amount_due) == ("3.00", "3.00", "0.00")
    assert await _minutes_left(stack, "acct-small") == "850"
    await _reconciled(stack, 1)


async def _publish(stack: Stack, key: str, rate: str, effective_at: datetime, unit: str = "credit",
                   currency: str = "USD") -> lpb.Rate:
    return await stack.services.ledger.PublishRate(lpb.PublishRateRequest(
        idempotency_key=key, unit=unit, currency=currency, rate=rate, effective_at=ts(effective_at)),
        metadata=stack.md)


async def _available(stack: Stack, account_id: str, unit: str) -> str:
    bal = await stack.services.ledger.GetBalance(lpb.GetBalanceRequest(account_id=account_id), metadata=stack.md)
    return next(b.available for b in bal.totals if b.unit == unit)


async def test_credits_at_a_published_rate_pay_a_usd_line_and_come_back_on_void(stack: Stack) -> None:
    """1 credit = 0.01 USD from August: 500 credits pay 5.00 of a 10.00 line, at rate version 2
    (version 1, superseded from the same instant, said 0.02)."""
    await _publish(stack, "rate-1", "0.02", AUGUST)
    published = await _publish(stack, "rate-2", "0.01", AUGUST)
    assert (published.version, published.rate) == (2, "0.01")
    invoice_id = await _customer(stack, "credits", "USD", "0.00001", quantity="50000", credit="500",
                                 credit_unit="credit")
    async with stack.worker():
        result = await (await stack.start_finalize(invoice_id)).result()
        assert (result.outcome, result.subtotal, result.credits_applied, result.amount_due) == (
            "finalized", "10.00", "5.00", "5.00")
        inv = await stack.invoice(invoice_id)
        assert [(a.unit, a.units, a.rate, a.rate_version, a.amount) for a in inv.applications] == [
            ("credit", "500", "0.01", 2, "5.00")]
        assert not inv.credit_notes
        assert await _available(stack, "acct-credits", "credit") == "0.00"
        await _reconciled(stack, 1)
        voided = await stack.client.execute_workflow(
            VoidInvoiceWorkflow.run, VoidInvoiceInput(TENANT, invoice_id, "refund"),
            id=naming.void_workflow_id(TENANT, invoice_id), task_queue=stack.task_queue)
    assert voided.outcome == "voided"
    assert await _available(stack, "acct-credits", "credit") == "500.00"
    await _reconciled(stack, 1)


async def test_enough_credits_pay_the_whole_line_rounding_units_up(stack: Stack) -> None:
    """10.00 USD at 0.03 per credit need 333.33... credits: 333.34 (up, at the unit's 2 decimals)."""
    await _publish(stack, "rate", "0.03", AUGUST)
    invoice_id = await _customer(stack, "rich", "USD", "0.00001", quantity="50000", credit="1000",
                                 credit_unit="credit")
    async with stack.worker():
        result = await (await stack.start_finalize(invoice_id)).result()
    assert (result.subtotal, result.credits_applied, result.amount_due) == ("10.00", "10.00", "0.00")
    assert await _available(stack, "acct-rich", "credit") == "666.66"
    await _reconciled(stack, 1)


async def test_without_a_rate_in_force_the_invoice_says_why_credit_did_not_pay(stack: Stack) -> None:
    await _publish(stack, "rate", "0.01", datetime(2026, 9, 1, tzinfo=UTC))  # only from September
    invoice_id = await _customer(stack, "later", "USD", "0.00001", quantity="50000", credit="500",
                                 credit_unit="credit")
    async with stack.worker():
        result = await (await stack.start_finalize(invoice_id)).result()
    assert (result.credits_applied, result.amount_due) == ("0.00", "10.00")
    inv = await stack.invoice(invoice_id)
    assert inv.credit_notes and all("no rate from credit to USD in force at 2026-08-" in n for n in inv.credit_notes)
    await _reconciled(stack, 1)


async def test_rates_are_validated_and_listed_by_version(stack: Stack) -> None:
    for request, field in [
        (lpb.PublishRateRequest(idempotency_key="a", unit="USD", currency="EUR", rate="1"), "unit"),
        (lpb.PublishRateRequest(idempotency_key="b", unit="credit", currency="usd", rate="1"), "currency"),
        (lpb.PublishRateRequest(idempotency_key="c", unit="credit", currency="USD", rate="0"), "rate"),
        (lpb.PublishRateRequest(idempotency_key="d", unit="gold_star", currency="USD", rate="1"), "unit"),
    ]:
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await stack.services.ledger.PublishRate(request, metadata=stack.md)
        assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT and field in (refused.value.details() or "")
    await _publish(stack, "r1", "0.01", AUGUST)
    await _publish(stack, "r2", "0.012", datetime(2026, 9, 1, tzinfo=UTC))
    listed = await stack.services.ledger.ListRates(lpb.ListRatesRequest(unit="credit"), metadata=stack.md)
    assert [(r.version, r.rate, r.currency) for r in listed.rates] == [(1, "0.01", "USD"), (2, "0.012", "USD")]
