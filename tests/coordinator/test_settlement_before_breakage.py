"""Issue #10's repro on the real stack (Temporal, ledger, invoice service, the production worker):
the expiry sweep runs after the period ended and before the invoice, and destroys nothing owed."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

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
