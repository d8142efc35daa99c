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
from reconciler import ReconcileReport, reconcile
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
    assert (await stack.balance("acct-eur-lot")).available == "5.00"


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
