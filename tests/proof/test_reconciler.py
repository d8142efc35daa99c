"""The reconciler: silent on a consistent system, and it names the ids of every planted inconsistency."""

from __future__ import annotations

import _thread
import asyncio
import threading
from datetime import UTC, datetime
from decimal import Decimal

import asyncpg
import pytest
from credits.invoice.v1 import invoice_pb2 as ipb
from credits.ledger.v1 import ledger_pb2 as lpb

from coordinator import naming
from coordinator.messages import VoidInvoiceInput
from coordinator.workflows import VoidInvoiceWorkflow
from reconciler.report import ReconcileReport
from reconciler.run import reconcile
from reconciler.temporal_checks import temporal_calls_settled
from stack.scenario import seed_customer, ts
from tests.coordinator.conftest import TENANT, Stack


async def _reconcile(stack: Stack) -> ReconcileReport:
    return await reconcile(stack.ledger_dsn, stack.invoice_dsn, stack.client, tenants=[TENANT])


def _hits(report: ReconcileReport, check: str, **ids: str) -> list[str]:
    return [v.line() for v in report.violations
            if v.check == check and all(v.ids.get(k) == val for k, val in ids.items())]


async def _finalized_and_voided(stack: Stack) -> tuple[str, str]:
    fin = await seed_customer(stack.services, "fin-cust")
    void = await seed_customer(stack.services, "void-cust")
    async with stack.worker():
        for invoice_id in (fin, void):
            assert (await (await stack.start_finalize(invoice_id)).result()).outcome == "finalized"
        result = await stack.client.execute_workflow(
            VoidInvoiceWorkflow.run, VoidInvoiceInput(TENANT, void, "customer disputed"),
            id=naming.void_workflow_id(TENANT, void), task_queue=stack.task_queue)
        assert result.outcome == "voided"
    return fin, void


async def test_consistent_system_has_no_violations(stack: Stack) -> None:
    await seed_customer(stack.services, "draft-only")
    await _finalized_and_voided(stack)
    report = await _reconcile(stack)
    assert report.ok, report.render()
    assert report.checked["invoices"] == 3 and report.checked["decisions"] >= 2
    assert report.checked["holds"] == 2


async def test_commit_of_a_hold_whose_invoice_was_never_finalized_is_reported(stack: Stack) -> None:
    """Credits left the ledger (hold committed through the ledger API) but the invoice stays DRAFT."""
    invoice_id = await seed_customer(stack.services, "rogue")
    hold_key = naming.hold_key(invoice_id, "rogue-run")
    start, end = datetime(2026, 8, 1, tzinfo=UTC), datetime(2026, 8, 31, tzinfo=UTC)
    await stack.services.ledger.ReserveCredits(lpb.ReserveCreditsRequest(
        idempotency_key="rogue-reserve", hold_key=hold_key, account_id="acct-rogue", unit="USD", up_to=True,
        reference=invoice_id, charges=[lpb.Charge(charge_id="c1", kind=lpb.USAGE, name="input_tokens",
                                                  amount="10.00", service_start=ts(start), service_end=ts(end))]),
        metadata=stack.md)
    await stack.services.ledger.CommitHold(lpb.CommitHoldRequest(idempotency_key="rogue-commit", hold_key=hold_key),
                                           metadata=stack.md)
    report = await _reconcile(stack)
    assert _hits(report, "orphan-hold", hold_key=hold_key, invoice_id=invoice_id), report.render()
    assert _hits(report, "invoice-draft", hold_key=hold_key, invoice_id=invoice_id), report.render()


async def test_reversal_of_a_finalized_invoice_outside_the_void_saga_is_reported(stack: Stack) -> None:
    fin, _void = await _finalized_and_voided(stack)
    [hold] = await stack.holds(fin)
    await stack.services.ledger.ReverseReference(lpb.ReverseReferenceRequest(
        idempotency_key="rogue-reverse", hold_key=hold.hold_key, reason="bypassing the saga"), metadata=stack.md)
    report = await _reconcile(stack)
    assert _hits(report, "invoice-finalized", invoice_id=fin, hold_key=hold.hold_key), report.render()
    assert _hits(report, "orphan-hold", invoice_id=fin, hold_key=hold.hold_key), report.render()


async def test_direct_sql_corruption_of_balances_and_invoices_is_reported(stack: Stack) -> None:
    fin, _void = await _finalized_and_voided(stack)
    draft = await seed_customer(stack.services, "stuck")
    [hold] = await stack.holds(fin)
    lconn = await asyncpg.connect(stack.ledger_dsn)
    iconn = await asyncpg.connect(stack.invoice_dsn)
    try:
        lot_id = await lconn.fetchval("SELECT lot_id FROM hold_allocations WHERE hold_key = $1", hold.hold_key)
        # Credits spent twice: the projection says more was consumed than any posting explains.
        await lconn.execute("UPDATE lot_balances SET granted = granted + 100, consumed = consumed + 100 "
                            "WHERE tenant_id = $1 AND lot_id = $2", TENANT, lot_id)
        await iconn.execute("UPDATE invoices SET status = 'PREPARED' WHERE tenant_id = $1 AND invoice_id = $2",
                            TENANT, draft)
    finally:
        await lconn.close()
        await iconn.close()
    report = await _reconcile(stack)
    assert _hits(report, "spent-twice", lot_id=lot_id), report.render()
    assert _hits(report, "journal", lot_id=lot_id), report.render()
    assert _hits(report, "in-doubt", invoice_id=draft), report.render()
    assert not report.ok


AUGUST = datetime(2026, 8, 1, tzinfo=UTC)


async def _customer_billed_in(stack: Stack, currency: str, unit_price: str, credit: str) -> str:
    """A customer on a plan in `currency` (4M input tokens in August at `unit_price`) with a `credit`
    lot in the same currency, through the public APIs. Returns the draft invoice."""
    s, md, name = stack.services, stack.md, currency.lower()
    await s.invoice.CreatePlan(ipb.CreatePlanRequest(
        idempotency_key=f"plan-{name}", plan_id=f"tokens-{name}", name=f"Tokens in {currency}", currency=currency,
        usage_charges=[ipb.UsageCharge(meter_code="input_tokens",
                                       price=ipb.Price(model=ipb.PER_UNIT, unit_amount=unit_price))]), metadata=md)
    await s.ledger.CreateAccount(lpb.CreateAccountRequest(idempotency_key=f"acct-{name}", account_id=f"acct-{name}",
                                                          name=currency), metadata=md)
    await s.ledger.GrantCredits(lpb.GrantCreditsRequest(
        idempotency_key=f"grant-{name}", account_id=f"acct-{name}", type=lpb.PROMOTIONAL, unit=currency,
        amount=credit, effective_at=ts(AUGUST), source="marketing", reason_code="referral"), metadata=md)
    await s.invoice.CreateCustomer(ipb.CreateCustomerRequest(
        idempotency_key=f"cust-{name}", customer_id=f"cust-{name}", name=currency, ledger_account_id=f"acct-{name}"),
        metadata=md)
    await s.invoice.CreateSubscription(ipb.CreateSubscriptionRequest(
        idempotency_key=f"sub-{name}", subscription_id=f"sub-{name}", customer_id=f"cust-{name}",
        plan_id=f"tokens-{name}", anchor=ts(AUGUST)), metadata=md)
    await s.invoice.IngestEvents(ipb.IngestEventsRequest(idempotency_key=f"usage-{name}", events=[
        ipb.UsageEvent(event_id=f"{name}-{d}", customer_id=f"cust-{name}", meter_code="input_tokens",
                       quantity="200000", timestamp=ts(datetime(2026, 8, d, 12, tzinfo=UTC))) for d in range(1, 21)]),
        metadata=md)
    draft = await s.invoice.CreateDraft(ipb.CreateDraftRequest(
        idempotency_key=f"draft-{name}", customer_id=f"cust-{name}", period_start=ts(AUGUST)), metadata=md)
    return str(draft.invoice_id)


@pytest.mark.parametrize(("currency", "define_scale", "unit_price", "credit", "subtotal", "due"), [
    # JPY is built into the ledger with scale 0: 3000 posted yen are 3000 applied yen (not 30.00).
    ("JPY", None, "0.0025", "3000", "10000", "7000"),
    # KWD is not built in: the tenant defines it with its 3 decimals; 1111 fils are 1.111 KWD (not 11.11).
    ("KWD", 3, "0.000002778", "1.111", "11.112", "10.001"),
])
async def test_invoices_in_currencies_without_two_decimals_reconcile_exactly(
        stack: Stack, currency: str, define_scale: int | None, unit_price: str, credit: str, subtotal: str,
        due: str) -> None:
    if define_scale is not None:
        await stack.services.ledger.DefineUnit(lpb.DefineUnitRequest(
            idempotency_key=f"unit-{currency}", code=currency, scale=define_scale), metadata=stack.md)
    invoice_id = await _customer_billed_in(stack, currency, unit_price, credit)
    async with stack.worker():
        result = await (await stack.start_finalize(invoice_id)).result()
    assert result.outcome == "finalized"
    assert (Decimal(result.subtotal), Decimal(result.credits_applied), Decimal(result.amount_due)) == (
        Decimal(subtotal), Decimal(credit), Decimal(due))
    report = await _reconcile(stack)
    assert report.ok, report.render()
    assert (report.checked["invoices"], report.checked["holds"], report.checked["decisions"]) == (1, 1, 1)


async def test_it_returns_only_once_no_foreign_thread_is_still_handing_it_a_result() -> None:
    """`creditctl reconcile` exits right after the report: a thread of the Temporal client's own still
    inside `loop.call_soon_threadsafe` for a call that already returned then aborts the interpreter
    (PyGILState_Release, exit -6). A thread started outside `threading`, as the client's are, parked
    inside that hand-off stands in for one here; a foreign thread parked anywhere else is not waited for."""
    loop = asyncio.get_running_loop()
    started, release, elsewhere = threading.Event(), threading.Event(), threading.Event()
    handed_off = threading.Event()

    def write_to_self() -> None:  # the loop's wake-up, held until released
        started.set()
        release.wait()

    _thread.start_new_thread(elsewhere.wait, ())  # parked in Python for good, like xdist's receiver
    loop._write_to_self = write_to_self  # type: ignore[method-assign]
    try:
        _thread.start_new_thread(loop.call_soon_threadsafe, (handed_off.set,))  # as the client's runtime calls it
        assert started.wait(5)
        assert not await temporal_calls_settled(timeout_s=0.05)  # still inside the hand-off
        release.set()
        assert await temporal_calls_settled(timeout_s=5)
    finally:
        del loop._write_to_self  # type: ignore[attr-defined]
        release.set()
        elsewhere.set()
    await asyncio.sleep(0)
    assert handed_off.is_set()
