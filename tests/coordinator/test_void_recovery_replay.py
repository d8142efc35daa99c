"""The void saga, in-doubt recovery in both directions, and replay of recorded histories."""

from __future__ import annotations

import asyncio

import pytest
from credits.invoice.v1 import invoice_pb2 as ipb
from credits.ledger.v1 import ledger_pb2 as lpb
from temporalio.client import WorkflowFailureError
from temporalio.worker import Replayer

from coordinator import naming
from coordinator.messages import SweepInput, SweepResult, VoidInvoiceInput
from coordinator.workflows import WORKFLOWS, ResolveInDoubtWorkflow, VoidInvoiceWorkflow
from harness.faults import FaultPlan
from stack.scenario import seed_customer
from tests.coordinator.conftest import TENANT, Stack

ACCOUNT = "acct-john-wick"


async def test_void_reverses_credits_onto_their_lots_and_voids(stack: Stack) -> None:
    invoice_id = await seed_customer(stack.services)
    async with stack.worker():
        await (await stack.start_finalize(invoice_id)).result()
        result = await stack.client.execute_workflow(
            VoidInvoiceWorkflow.run, VoidInvoiceInput(TENANT, invoice_id, "customer dispute"),
            id=f"void-invoice/{TENANT}/{invoice_id}", task_queue=stack.task_queue)
    assert result.outcome == "voided" and result.reinstated == "50.00"
    assert (await stack.invoice(invoice_id)).status == ipb.VOIDED
    bal = await stack.balance(ACCOUNT)
    assert (bal.available, bal.reinstated) == ("50.00", "50.00")
    await stack.verify_journal()


async def test_void_rejected_at_prepare_changes_nothing(stack: Stack) -> None:
    invoice_id = await seed_customer(stack.services)
    async with stack.worker():
        await (await stack.start_finalize(invoice_id)).result()
    async with stack.worker(FaultPlan().add("prepare_void", "after", "reject")):
        handle = await stack.client.start_workflow(
            VoidInvoiceWorkflow.run, VoidInvoiceInput(TENANT, invoice_id), id=f"void-invoice/{TENANT}/{invoice_id}",
            task_queue=stack.task_queue)
        with pytest.raises(WorkflowFailureError):
            await handle.result()
    assert (await stack.invoice(invoice_id)).status == ipb.FINALIZED  # compensated: back from VOID_PENDING
    assert await stack.assert_both_or_neither(invoice_id, ACCOUNT) == "finalized"


async def _terminated_mid_saga(stack: Stack, step: str, phase: str) -> str:
    faults = FaultPlan().add(step, phase, "block")
    invoice_id = await seed_customer(stack.services)
    async with stack.worker(faults):
        handle = await stack.start_finalize(invoice_id)
        await asyncio.wait_for(faults.reached.wait(), 30)
        await handle.terminate("simulated loss of the coordinator")
        faults.release_blocked()
    return invoice_id


async def _resolve(stack: Stack) -> SweepResult:
    async with stack.worker():
        return await stack.client.execute_workflow(ResolveInDoubtWorkflow.run, SweepInput(older_than_s=0),
                                                   id=f"resolve-{stack.task_queue}", task_queue=stack.task_queue)


async def test_in_doubt_after_the_decision_is_committed(stack: Stack) -> None:
    invoice_id = await _terminated_mid_saga(stack, "commit_hold", "before")
    # The in-flight commit of the hold may land after the termination; the invoice stays in doubt.
    [hold] = await stack.holds(invoice_id)
    assert hold.status in (lpb.PENDING, lpb.COMMITTED) and (await stack.invoice(invoice_id)).status == ipb.PREPARED
    result = await _resolve(stack)
    assert len(result.committed) == 1 and not result.aborted
    assert await stack.assert_both_or_neither(invoice_id, ACCOUNT) == "finalized"


async def test_in_doubt_before_the_decision_is_released(stack: Stack) -> None:
    invoice_id = await _terminated_mid_saga(stack, "prepare_finalize", "after")
    [hold] = await stack.holds(invoice_id)
    assert hold.status == lpb.PENDING and (await stack.invoice(invoice_id)).status == ipb.PREPARED
    result = await _resolve(stack)
    assert len(result.aborted) == 1 and not result.committed
    assert await stack.assert_both_or_neither(invoice_id, ACCOUNT) == "neither"


async def test_running_owner_is_left_alone(stack: Stack) -> None:
    faults = FaultPlan().add("prepare_finalize", "after", "block")
    invoice_id = await seed_customer(stack.services)
    async with stack.worker(faults):
        handle = await stack.start_finalize(invoice_id)
        await asyncio.wait_for(faults.reached.wait(), 30)
        result = await stack.client.execute_workflow(ResolveInDoubtWorkflow.run, SweepInput(older_than_s=0),
                                                     id=f"resolve-{stack.task_queue}", task_queue=stack.task_queue)
        assert len(result.left_running) == 1 and not result.committed and not result.aborted
        faults.release_blocked()
        assert (await handle.result()).outcome == "finalized"
    assert await stack.assert_both_or_neither(invoice_id, ACCOUNT) == "finalized"


async def test_worker_killed_mid_saga_resumes_on_a_new_worker(stack: Stack) -> None:
    faults = FaultPlan().add("reserve_credits", "after", "block")
    invoice_id = await seed_customer(stack.services)
    async with stack.worker(faults):
        handle = await stack.start_finalize(invoice_id)
        await asyncio.wait_for(faults.reached.wait(), 30)
        # Leaving the block shuts the worker down with the activity in flight (cancelled).
    faults.release_blocked()
    async with stack.worker():
        result = await handle.result()
    assert result.outcome == "finalized" and result.credits_applied == "50.00"
    assert await stack.assert_both_or_neither(invoice_id, ACCOUNT) == "finalized"


async def test_recorded_histories_replay_with_current_code(stack: Stack) -> None:
    invoice_id = await seed_customer(stack.services)
    async with stack.worker(FaultPlan().add("reserve_credits", "after", "transport")):
        handle = await stack.start_finalize(invoice_id)
        await handle.result()
        await stack.client.execute_workflow(VoidInvoiceWorkflow.run, VoidInvoiceInput(TENANT, invoice_id),
                                            id=f"void-invoice/{TENANT}/{invoice_id}", task_queue=stack.task_queue)
    replayer = Replayer(workflows=WORKFLOWS)
    for wf_id in (handle.id, f"void-invoice/{TENANT}/{invoice_id}"):
        history = await stack.client.get_workflow_handle(wf_id).fetch_history()
        result = await replayer.replay_workflow(history, raise_on_replay_failure=True)
        assert result.replay_failure is None


async def _void_terminated_mid_saga(stack: Stack, step: str, phase: str) -> str:
    """A finalized invoice whose void workflow is terminated while `step` is blocked."""
    invoice_id = await seed_customer(stack.services)
    faults = FaultPlan().add(step, phase, "block")
    async with stack.worker(faults):
        await (await stack.start_finalize(invoice_id)).result()
        handle = await stack.client.start_workflow(
            VoidInvoiceWorkflow.run, VoidInvoiceInput(TENANT, invoice_id, "duplicate charge"),
            id=naming.void_workflow_id(TENANT, invoice_id), task_queue=stack.task_queue)
        await asyncio.wait_for(faults.reached.wait(), 30)
        await handle.terminate("simulated loss of the coordinator")
        faults.release_blocked()
    assert (await stack.invoice(invoice_id)).status == ipb.VOID_PENDING
    return invoice_id


async def test_void_pending_without_a_decision_returns_to_finalized(stack: Stack) -> None:
    invoice_id = await _void_terminated_mid_saga(stack, "prepare_void", "after")
    result = await _resolve(stack)
    assert len(result.aborted) == 1 and not result.committed and not result.left_running
    assert (await stack.invoice(invoice_id)).status == ipb.FINALIZED
    assert await stack.assert_both_or_neither(invoice_id, ACCOUNT) == "finalized"
    bal = await stack.balance(ACCOUNT)
    assert (bal.consumed, bal.reinstated) == ("50.00", "0.00")


async def test_void_pending_after_the_decision_is_reversed_and_voided(stack: Stack) -> None:
    # Blocked after the ledger reversed the debits (the reply is lost), before the invoice is VOIDED.
    invoice_id = await _void_terminated_mid_saga(stack, "reverse_hold", "after")
    result = await _resolve(stack)
    assert len(result.committed) == 1 and not result.aborted
    assert (await stack.invoice(invoice_id)).status == ipb.VOIDED
    bal = await stack.balance(ACCOUNT)
    assert (bal.available, bal.reinstated) == ("50.00", "50.00")  # reinstated once, not twice
    await stack.verify_journal()
    again = await _resolve(stack)  # nothing left in doubt
    assert not again.committed and not again.aborted


async def test_void_pending_with_a_running_owner_is_left_alone(stack: Stack) -> None:
    invoice_id = await seed_customer(stack.services)
    faults = FaultPlan().add("prepare_void", "after", "block")
    async with stack.worker(faults):
        await (await stack.start_finalize(invoice_id)).result()
        handle = await stack.client.start_workflow(
            VoidInvoiceWorkflow.run, VoidInvoiceInput(TENANT, invoice_id),
            id=naming.void_workflow_id(TENANT, invoice_id), task_queue=stack.task_queue)
        await asyncio.wait_for(faults.reached.wait(), 30)
        result = await stack.client.execute_workflow(ResolveInDoubtWorkflow.run, SweepInput(older_than_s=0),
                                                     id=f"resolve-{stack.task_queue}", task_queue=stack.task_queue)
        assert len(result.left_running) == 1 and not result.committed and not result.aborted
        faults.release_blocked()
        assert (await handle.result()).outcome == "voided"
