"""The reconciler: silent on a consistent system, and it names the ids of every planted inconsistency."""

from __future__ import annotations

from datetime import UTC, datetime

import asyncpg
from credits.ledger.v1 import ledger_pb2 as lpb

from coordinator import naming
from coordinator.messages import VoidInvoiceInput
from coordinator.reconciler import ReconcileReport, reconcile
from coordinator.workflows import VoidInvoiceWorkflow
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
