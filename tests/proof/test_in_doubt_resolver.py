"""The in-doubt resolver, both directions, on exactly the states a lost coordinator leaves behind.

commit: the run recorded its decision (search attribute CreditsOutcome=committing) and was lost before
either commit: hold PENDING, invoice PREPARED -> the resolver commits the hold and finalizes the invoice.
abort: the run was lost before its decision, after the invoice service prepared (the reply never came
back): hold PENDING, invoice PREPARED, outcome preparing -> the resolver releases the hold and returns
the invoice to DRAFT. Afterwards the reconciler finds nothing wrong (SPEC §10, §11).

Deterministic: each run is held by a blocking fault at the exact step, terminated there, and the
blocked activity is never released (it is cancelled with its worker), so no late call races the resolver.
"""

from __future__ import annotations

import asyncio

from credits.invoice.v1 import invoice_pb2 as ipb
from credits.ledger.v1 import ledger_pb2 as lpb

from coordinator import naming
from coordinator import search_attributes as sa
from coordinator.messages import BillingCycleInput, SweepInput, SweepResult
from coordinator.workflows import BillingCycleWorkflow, ResolveInDoubtWorkflow
from harness.faults import FaultPlan
from reconciler.run import reconcile
from stack.scenario import seed_customer
from tests.coordinator.conftest import TENANT, Stack, eventually


async def _lose_run_at(stack: Stack, customer: str, step: str, phase: str, outcome: str) -> tuple[str, str]:
    """Starts a finalization, holds it at `step`/`phase`, checks the recorded outcome, terminates it."""
    invoice_id = await seed_customer(stack.services, customer)
    faults = FaultPlan().add(step, phase, "block")
    async with stack.worker(faults):
        handle = await stack.start_finalize(invoice_id)
        await asyncio.wait_for(faults.reached.wait(), 30)
        desc = await eventually(handle.describe, lambda d: d.typed_search_attributes.get(sa.OUTCOME) == outcome)
        await handle.terminate(f"proof: coordinator lost at {step} ({phase})")
        # Leaving the block shuts the worker down: the blocked activity is cancelled, never released.
    [hold] = await stack.holds(invoice_id)
    inv = await stack.invoice(invoice_id)
    assert (hold.status, inv.status) == (lpb.PENDING, ipb.PREPARED), (hold, inv.status)
    assert hold.hold_key == naming.hold_key(invoice_id, desc.run_id)
    assert inv.prepare_key == naming.step_key(handle.id, desc.run_id, "prepare")
    return invoice_id, f"{handle.id}/{desc.run_id}"


async def _resolve(stack: Stack, name: str) -> SweepResult:
    async with stack.worker():
        return await stack.client.execute_workflow(ResolveInDoubtWorkflow.run, SweepInput(older_than_s=0),
                                                   id=f"{name}-{stack.task_queue}", task_queue=stack.task_queue)


async def test_resolver_settles_in_doubt_work_both_ways_and_the_reconciler_agrees(stack: Stack) -> None:
    # After the decision, before the commits: the hold's commit is blocked before it reaches the ledger.
    committed_invoice, committed_run = await _lose_run_at(stack, "after-decision", "commit_hold", "before",
                                                          sa.COMMITTED)
    # Before the decision: the invoice service prepared, its reply is held back.
    aborted_invoice, aborted_run = await _lose_run_at(stack, "before-decision", "prepare_finalize", "after",
                                                      "preparing")
    before = await reconcile(stack.ledger_dsn, stack.invoice_dsn, stack.client, [TENANT])
    assert {v.check for v in before.violations} == {"in-doubt"}, before.render()  # seen, and only as in doubt

    result = await _resolve(stack, "resolve")
    assert (result.committed, result.aborted) == ([committed_run], [aborted_run]), result
    assert not result.left_running and not result.unknown

    [hold] = await stack.holds(committed_invoice)
    assert ((await stack.invoice(committed_invoice)).status, hold.status) == (ipb.FINALIZED, lpb.COMMITTED)
    assert await stack.assert_both_or_neither(committed_invoice, "acct-after-decision") == "finalized"
    [hold] = await stack.holds(aborted_invoice)
    assert ((await stack.invoice(aborted_invoice)).status, hold.status) == (ipb.DRAFT, lpb.RELEASED)
    assert await stack.assert_both_or_neither(aborted_invoice, "acct-before-decision") == "neither"

    report = await reconcile(stack.ledger_dsn, stack.invoice_dsn, stack.client, [TENANT])
    assert report.ok, report.render()
    assert report.checked["invoices"] == 2 and report.checked["decisions"] >= 1
    again = await _resolve(stack, "resolve-again")  # settled work stays settled: nothing left in doubt
    assert not again.committed and not again.aborted


async def _lose_cycle_at(stack: Stack, customer: str, as_of: str, step: str, phase: str) -> tuple[str, str]:
    """A billing cycle finalizing the customer's invoice inline, held at `step`/`phase`, then terminated:
    the finalization's run is the cycle's run (its hold and prepare key name it)."""
    invoice_id = await seed_customer(stack.services, customer)
    faults = FaultPlan().add(step, phase, "block")
    async with stack.worker(faults):
        handle = await stack.client.start_workflow(
            BillingCycleWorkflow.run, BillingCycleInput(TENANT, as_of, concurrency=2),
            id=naming.cycle_workflow_id(TENANT, as_of), task_queue=stack.task_queue)
        await asyncio.wait_for(faults.reached.wait(), 30)
        run_id = (await handle.describe()).run_id
        await handle.terminate(f"proof: billing cycle lost at {step} ({phase})")
    [hold] = await stack.holds(invoice_id)
    inv = await stack.invoice(invoice_id)
    assert (hold.status, inv.status) == (lpb.PENDING, ipb.PREPARED), (hold, inv.status)
    assert hold.hold_key == naming.hold_key(invoice_id, run_id)
    assert inv.prepare_key == f"cycle/{run_id}/{invoice_id}/prepare"
    assert naming.parse_prepare_key(inv.prepare_key) == ("", run_id)
    return invoice_id, f"{handle.id}/{run_id}/{invoice_id}"


async def test_resolver_settles_a_lost_billing_cycles_inline_finalizations_by_its_history(stack: Stack) -> None:
    """A cycle finalizes its invoices inside its own run; its decision per invoice is the schedule of the
    hold's commit in the cycle's history. A cycle terminated after that schedule -> the resolver commits
    both sides; one terminated before it (the invoice service prepared, its reply held back) -> the
    resolver releases the hold and returns the invoice to DRAFT, with the cycle run's own keys."""
    committed_invoice, committed_run = await _lose_cycle_at(stack, "cyc-after", "2027-10-20T00:00:00+00:00",
                                                            "commit_hold", "before")
    aborted_invoice, aborted_run = await _lose_cycle_at(stack, "cyc-before", "2027-10-21T00:00:00+00:00",
                                                        "prepare_finalize", "after")
    before = await reconcile(stack.ledger_dsn, stack.invoice_dsn, stack.client, [TENANT])
    assert {v.check for v in before.violations} == {"in-doubt"}, before.render()

    result = await _resolve(stack, "resolve-cycles")
    assert (result.committed, result.aborted) == ([committed_run], [aborted_run]), result
    assert not result.left_running and not result.unknown
    [hold] = await stack.holds(committed_invoice)
    assert ((await stack.invoice(committed_invoice)).status, hold.status) == (ipb.FINALIZED, lpb.COMMITTED)
    assert await stack.assert_both_or_neither(committed_invoice, "acct-cyc-after") == "finalized"
    [hold] = await stack.holds(aborted_invoice)
    assert ((await stack.invoice(aborted_invoice)).status, hold.status) == (ipb.DRAFT, lpb.RELEASED)
    assert await stack.assert_both_or_neither(aborted_invoice, "acct-cyc-before") == "neither"

    report = await reconcile(stack.ledger_dsn, stack.invoice_dsn, stack.client, [TENANT])
    assert report.ok, report.render()
    assert report.checked["decisions"] >= 1  # the finalized invoice's decision, read from the cycle's history
