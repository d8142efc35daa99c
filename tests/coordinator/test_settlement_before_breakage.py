"""Issue #10's repro on the real stack (Temporal, ledger, invoice service, the production worker):
the expiry sweep runs after the period ended and before the invoice, and destroys nothing owed."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import grpc
import pytest
from credits.invoice.v1 import invoice_pb2 as ipb
from credits.ledger.v1 import ledger_pb2 as lpb

from coordinator.messages import SweepInput, SweepResult
from coordinator.workflows import ExpireCreditsWorkflow
from stack.scenario import PERIOD_START, ts
from tests.coordinator.conftest import Stack


def august(day: int) -> datetime:
    return PERIOD_START + timedelta(days=day - 1)


async def _sweep(stack: Stack, run: str) -> SweepResult:
    handle = await stack.client.start_workflow(ExpireCreditsWorkflow.run, SweepInput(),
                                               id=f"sweep-{run}-{stack.task_queue}", task_queue=stack.task_queue,
                                               result_type=SweepResult)
    result: SweepResult = await handle.result()
    return result


async def _customer(stack: Stack) -> str:
    s = stack.services
    await s.ledger.CreateAccount(lpb.CreateAccountRequest(idempotency_key="acct", account_id="acct-repro"),
                                 metadata=s.md)
    promo = await s.ledger.GrantCredits(lpb.GrantCreditsRequest(
        idempotency_key="promo", account_id="acct-repro", type=lpb.PROMOTIONAL, unit="USD", amount="30.00",
        effective_at=ts(PERIOD_START - timedelta(days=5)), expires_at=ts(august(14))), metadata=s.md)
    await s.invoice.CreateCustomer(ipb.CreateCustomerRequest(
        idempotency_key="cust", customer_id="repro", name="Repro", ledger_account_id="acct-repro"), metadata=s.md)
    await s.invoice.CreateSubscription(ipb.CreateSubscriptionRequest(
        idempotency_key="sub", subscription_id="sub-repro", customer_id="repro", plan_id="chatppt-pro",
        anchor=ts(PERIOD_START)), metadata=s.md)
    # 2,000,000 input tokens at 0.00001 = 20.00 on day 3, and again on day 17.
    events = [ipb.UsageEvent(event_id=f"repro-{d}", customer_id="repro", meter_code="input_tokens",
                             quantity="2000000", timestamp=ts(august(d) + timedelta(hours=12))) for d in (3, 17)]
    await s.invoice.IngestEvents(ipb.IngestEventsRequest(idempotency_key="usage", events=events), metadata=s.md)
    return str(promo.lot_id)


async def test_the_sweep_before_finalization_leaves_the_invoice_its_credit(stack: Stack) -> None:
    s = stack.services
    lot_id = await _customer(stack)
    assert datetime.now(UTC) > PERIOD_START.replace(month=9)  # the period has ended
    async with stack.worker():
        first = await _sweep(stack, "before")
        assert first.expired_lots == 0
        got = await s.ledger.GetSettlement(lpb.GetSettlementRequest(account_id="acct-repro"), metadata=s.md)
        assert got.billed and got.invoiced_through == ts(PERIOD_START)
        bal = await stack.balance("acct-repro")
        assert (bal.available, bal.pending_expiry, bal.expired) == ("0.00", "30.00", "0.00")
        draft = await s.invoice.CreateDraft(ipb.CreateDraftRequest(
            idempotency_key="draft", customer_id="repro", period_start=ts(PERIOD_START)), metadata=s.md)
        assert draft.subtotal == "40.00"
        await (await stack.start_finalize(draft.invoice_id)).result()
        inv = await stack.invoice(draft.invoice_id)
        assert (inv.status, inv.subtotal, inv.credits_applied, inv.amount_due) == (
            ipb.FINALIZED, "40.00", "20.00", "20.00")
        assert {a.lot_id for a in inv.applications} == {lot_id}
        after = await _sweep(stack, "after")
    assert after.expired_lots == 1
    got = await s.ledger.GetSettlement(lpb.GetSettlementRequest(account_id="acct-repro"), metadata=s.md)
    assert got.invoiced_through == ts(PERIOD_START.replace(month=9))
    lot = await s.ledger.GetLot(lpb.GetLotRequest(lot_id=lot_id), metadata=s.md)
    assert (lot.balance.consumed, lot.balance.expired, lot.balance.pending_expiry) == ("20.00", "10.00", "0.00")
    await stack.verify_journal()


async def test_an_abandoned_period_settles_and_lets_the_credit_expire(stack: Stack) -> None:
    """A DRAFT abandoned (never to be billed) counts as settled: the promo's remainder becomes breakage
    at the next sweep instead of waiting forever, the period's usage is frozen, and nothing is numbered."""
    s = stack.services
    lot_id = await _customer(stack)
    async with stack.worker():
        draft = await s.invoice.CreateDraft(ipb.CreateDraftRequest(
            idempotency_key="draft", customer_id="repro", period_start=ts(PERIOD_START)), metadata=s.md)
        assert (await _sweep(stack, "draft")).expired_lots == 0  # a DRAFT holds the lot back
        with pytest.raises(grpc.aio.AioRpcError) as no_reason:
            await s.invoice.AbandonInvoice(ipb.AbandonInvoiceRequest(
                idempotency_key="abandon-0", invoice_id=draft.invoice_id, reason=" "), metadata=s.md)
        assert no_reason.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "reason" in str(no_reason.value.details())
        abandoned = await s.invoice.AbandonInvoice(ipb.AbandonInvoiceRequest(
            idempotency_key="abandon", invoice_id=draft.invoice_id, reason="customer churned"), metadata=s.md)
        assert (abandoned.status, abandoned.number, abandoned.abandon_reason) == (
            ipb.ABANDONED, "", "customer churned")
        assert abandoned.HasField("abandoned_at")
        again = await s.invoice.AbandonInvoice(ipb.AbandonInvoiceRequest(
            idempotency_key="abandon-again", invoice_id=draft.invoice_id, reason="twice"), metadata=s.md)
        assert (again.status, again.abandon_reason) == (ipb.ABANDONED, "customer churned")  # no-op, first reason kept
        # Usage inside the abandoned period is refused like a finalized period's, and it is not finalized.
        late = ipb.UsageEvent(event_id="late", customer_id="repro", meter_code="input_tokens", quantity="1",
                              timestamp=ts(august(20)))
        with pytest.raises(grpc.aio.AioRpcError) as frozen:
            await s.invoice.IngestEvent(ipb.IngestEventRequest(idempotency_key="late", event=late), metadata=s.md)
        assert frozen.value.code() == grpc.StatusCode.FAILED_PRECONDITION and "ABANDONED" in str(frozen.value.details())
        with pytest.raises(grpc.aio.AioRpcError) as prepare:
            await s.invoice.PrepareFinalize(ipb.PrepareFinalizeRequest(
                idempotency_key="prep", invoice_id=draft.invoice_id, draft_digest=draft.draft_digest), metadata=s.md)
        assert prepare.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        # A saga that lost the race with the abandon compensates without an error (null compensation).
        aborted = await s.invoice.AbortFinalize(ipb.AbortFinalizeRequest(
            idempotency_key="abort-lost", invoice_id=draft.invoice_id, prepare_key="prep-lost"), metadata=s.md)
        assert aborted.status == ipb.ABANDONED
        due = await s.invoice.ListDueSubscriptions(ipb.ListDueSubscriptionsRequest(as_of=ts(datetime.now(UTC))),
                                                   metadata=s.md)
        assert all(d.period_start != ts(PERIOD_START) for d in due.periods if d.customer_id == "repro")
        swept = await _sweep(stack, "abandoned")
    assert swept.expired_lots == 1
    got = await s.ledger.GetSettlement(lpb.GetSettlementRequest(account_id="acct-repro"), metadata=s.md)
    assert got.invoiced_through == ts(PERIOD_START.replace(month=9))
    lot = await s.ledger.GetLot(lpb.GetLotRequest(lot_id=lot_id), metadata=s.md)
    assert (lot.balance.consumed, lot.balance.expired, lot.balance.pending_expiry) == ("0.00", "30.00", "0.00")
    await stack.verify_journal()


async def test_only_a_draft_can_be_abandoned(stack: Stack) -> None:
    s = stack.services
    await _customer(stack)
    draft = await s.invoice.CreateDraft(ipb.CreateDraftRequest(
        idempotency_key="draft", customer_id="repro", period_start=ts(PERIOD_START)), metadata=s.md)
    async with stack.worker():
        await (await stack.start_finalize(draft.invoice_id)).result()
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await s.invoice.AbandonInvoice(ipb.AbandonInvoiceRequest(
            idempotency_key="abandon", invoice_id=draft.invoice_id, reason="too late"), metadata=s.md)
    assert refused.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "FINALIZED" in str(refused.value.details())
    assert (await stack.invoice(draft.invoice_id)).status == ipb.FINALIZED
    with pytest.raises(grpc.aio.AioRpcError) as missing:
        await s.invoice.AbandonInvoice(ipb.AbandonInvoiceRequest(
            idempotency_key="abandon-2", invoice_id="inv_nope", reason="x"), metadata=s.md)
    assert missing.value.code() == grpc.StatusCode.NOT_FOUND
