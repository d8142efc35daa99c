"""Failures injected at every step boundary of the finalization saga end in both-or-neither."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest
from temporalio.api.enums.v1 import EventType
from temporalio.api.sdk.v1 import WorkflowMetadata
from temporalio.client import WorkflowFailureError, WorkflowHandle

from coordinator import naming
from coordinator.messages import FinalizeInvoiceInput
from coordinator.starter import start_or_attach
from coordinator.workflows import FinalizeInvoiceWorkflow
from harness.faults import FaultPlan
from stack.scenario import seed_customer
from tests.coordinator.conftest import FAST, TENANT, Stack

PREPARE_STEPS = ["get_invoice", "get_lot_boundaries", "split_draft", "reserve_credits", "prepare_finalize"]
COMMIT_STEPS = ["commit_hold", "commit_finalize"]
ACCOUNT = "acct-john-wick"
ACTIVITY = {"get_invoice": "invoice.get_invoice", "get_lot_boundaries": "ledger.get_lot_boundaries",
            "split_draft": "invoice.split_draft", "reserve_credits": "ledger.reserve_credits",
            "prepare_finalize": "invoice.prepare_finalize", "commit_hold": "ledger.commit_hold",
            "commit_finalize": "invoice.commit_finalize"}


async def attempts(handle: WorkflowHandle[Any, Any]) -> dict[str, int]:
    """Per activity type, the attempt its (last) run started with, from the workflow's history: Temporal's own
    record of how often each step failed before it succeeded (for a local activity, the attempt its
    marker recorded)."""
    out: dict[str, int] = {}
    scheduled: dict[int, str] = {}
    async for e in handle.fetch_history_events():
        if e.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED:
            scheduled[e.event_id] = e.activity_task_scheduled_event_attributes.activity_type.name
        elif e.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_STARTED:
            attrs = e.activity_task_started_event_attributes
            name = scheduled[attrs.scheduled_event_id]
            out[name] = max(out.get(name, 0), attrs.attempt)
        elif e.event_type == EventType.EVENT_TYPE_MARKER_RECORDED:  # a local activity: its attempt in the marker
            marker = e.marker_recorded_event_attributes
            if marker.marker_name == "core_local_activity":
                data = json.loads(marker.details["data"].payloads[0].data)
                name = data["activity_type"]
                out[name] = max(out.get(name, 0), data["attempt"])
    return out


@pytest.mark.parametrize("phase", ["before", "after"])
async def test_rejection_at_every_prepare_boundary_compensates(stack: Stack, phase: str) -> None:
    """A business rejection before/after each prepare-phase call: nothing is left finalized or held."""
    for n, step in enumerate(PREPARE_STEPS):
        account = f"acct-cust-{n}"
        invoice_id = await seed_customer(stack.services, f"cust-{n}")
        faults = FaultPlan().add(step, phase, "reject")
        async with stack.worker(faults):
            handle = await stack.start_finalize(invoice_id)
            with pytest.raises(WorkflowFailureError):
                await handle.result()
        assert faults.faults[0].fired == 1, (step, phase)
        assert await stack.assert_both_or_neither(invoice_id, account) == "neither", (step, phase)
        # The same invoice can be finalized afterwards by a new run (the failed one is not reused).
        async with stack.worker():
            result = await (await stack.start_finalize(invoice_id)).result()
        assert (result.outcome, result.credits_applied) == ("finalized", "50.00"), (step, phase)
        assert await stack.assert_both_or_neither(invoice_id, account) == "finalized"


@pytest.mark.parametrize("phase", ["before", "after"])
async def test_transport_errors_at_every_boundary_are_retried(stack: Stack, phase: str) -> None:
    """A lost request or a lost response at any step (prepare or commit) is retried idempotently."""
    faults = FaultPlan()
    for step in PREPARE_STEPS + COMMIT_STEPS:
        faults.add(step, phase, "transport", times=2)
    invoice_id = await seed_customer(stack.services)
    async with stack.worker(faults):
        handle = await stack.start_finalize(invoice_id)
        result = await handle.result()
    assert result.outcome == "finalized"
    assert all(f.fired == 2 for f in faults.faults)
    # Each step failed twice and succeeded on its third attempt, as Temporal recorded it.
    tried = await attempts(handle)
    assert {step: tried.get(ACTIVITY[step]) for step in PREPARE_STEPS + COMMIT_STEPS} == \
        dict.fromkeys(PREPARE_STEPS + COMMIT_STEPS, 3), tried
    assert await stack.assert_both_or_neither(invoice_id, ACCOUNT) == "finalized"
    assert (await stack.balance(ACCOUNT)).consumed == "50.00"


@pytest.mark.parametrize("phase", ["before", "after"])
async def test_rejection_after_the_decision_is_retried_until_committed(stack: Stack, phase: str) -> None:
    """After the decision nothing compensates: even a rejection at a commit step is retried."""
    faults = FaultPlan()
    for step in COMMIT_STEPS:
        faults.add(step, phase, "reject", times=2)
    invoice_id = await seed_customer(stack.services)
    async with stack.worker(faults):
        handle = await stack.start_finalize(invoice_id)
        result = await handle.result()
    assert result.outcome == "finalized" and result.credits_applied == "50.00"
    assert all(f.fired == 2 for f in faults.faults)
    tried = await attempts(handle)
    assert {step: tried.get(ACTIVITY[step]) for step in COMMIT_STEPS} == dict.fromkeys(COMMIT_STEPS, 3), tried
    assert await stack.assert_both_or_neither(invoice_id, ACCOUNT) == "finalized"


async def test_cancellation_before_the_decision_compensates(stack: Stack) -> None:
    faults = FaultPlan().add("prepare_finalize", "before", "block")
    invoice_id = await seed_customer(stack.services)
    async with stack.worker(faults):
        handle = await stack.start_finalize(invoice_id)
        await asyncio.wait_for(faults.reached.wait(), 30)
        await handle.cancel()
        faults.release_blocked()
        with pytest.raises(WorkflowFailureError):
            await handle.result()
        meta = await handle.query("__temporal_workflow_metadata", result_type=WorkflowMetadata)
    assert await stack.assert_both_or_neither(invoice_id, ACCOUNT) == "neither"
    # In the Temporal UI: the compensations are labelled (the happy-path steps' names say enough),
    # and the details show where the saga stopped and that it compensated.
    summaries = {}
    async for e in handle.fetch_history_events():
        if e.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED:
            summary = e.user_metadata.summary.data.decode() if e.user_metadata.HasField("summary") else ""
            summaries[e.activity_task_scheduled_event_attributes.activity_type.name] = summary
    # (the read-only steps before the reserve run as local activities: no scheduled event, no label)
    assert summaries == {"ledger.reserve_credits": "", "invoice.prepare_finalize": "",
                         "invoice.abort_finalize": '"compensate: return the invoice to DRAFT"',
                         "ledger.release_hold": '"compensate: release the credit hold"'}
    assert "→ 5. record the credit applications (invoice PREPARED)" in meta.current_details
    assert "Compensated: the hold is released and the invoice is a DRAFT again." in meta.current_details


async def test_cancellation_during_local_prepare_steps_keeps_both_or_neither(stack: Stack) -> None:
    """As a billing cycle runs it (`local_steps`), the prepare phase is one workflow task: a cancel
    that arrives while the prepare runs is seen at the task's end — after the decision if the prepare
    succeeded (then it commits), before it otherwise (then it compensates). Never half of each."""
    faults = FaultPlan().add("prepare_finalize", "before", "block")
    invoice_id = await seed_customer(stack.services)
    async with stack.worker(faults):
        handle = await start_or_attach(stack.client, FinalizeInvoiceWorkflow.run,
                                       FinalizeInvoiceInput(TENANT, invoice_id, FAST, local_reads=True,
                                                            local_steps=True),
                                       id=naming.finalize_workflow_id(TENANT, invoice_id), task_queue=stack.task_queue)
        await asyncio.wait_for(faults.reached.wait(), 30)
        await handle.cancel()
        faults.release_blocked()
        try:
            outcome = "finalized" if (await handle.result()).outcome == "finalized" else "?"
        except WorkflowFailureError:
            outcome = "neither"
    assert await stack.assert_both_or_neither(invoice_id, ACCOUNT) == outcome


async def test_cancellation_after_the_decision_still_commits(stack: Stack) -> None:
    faults = FaultPlan().add("commit_hold", "before", "block")
    invoice_id = await seed_customer(stack.services)
    async with stack.worker(faults):
        handle = await stack.start_finalize(invoice_id)
        await asyncio.wait_for(faults.reached.wait(), 30)
        await handle.cancel()
        faults.release_blocked()
        result = await handle.result()
    assert result.outcome == "finalized"
    assert await stack.assert_both_or_neither(invoice_id, ACCOUNT) == "finalized"
