"""The finalization saga against the real Temporal dev server, ledger and invoice services."""

from __future__ import annotations

import pytest
from credits.invoice.v1 import invoice_pb2 as ipb
from credits.ledger.v1 import ledger_pb2 as lpb
from temporalio.api.enums.v1 import EventType
from temporalio.api.sdk.v1 import WorkflowMetadata

from coordinator import naming
from coordinator import search_attributes as sa
from coordinator.messages import FinalizeInvoiceInput
from coordinator.starter import start_or_attach
from coordinator.workflows import FinalizeInvoiceWorkflow
from stack.scenario import PERIOD_START, seed_customer
from tests.coordinator.conftest import FAST, TENANT, Stack


async def test_happy_path_finalizes_with_50_credits_and_50_due(stack: Stack) -> None:
    invoice_id = await seed_customer(stack.services)
    async with stack.worker():
        handle = await stack.start_finalize(invoice_id)
        result = await handle.result()
    assert result.outcome == "finalized"
    assert (result.subtotal, result.credits_applied, result.amount_due) == ("100.00", "50.00", "50.00")
    inv = await stack.invoice(invoice_id)
    assert inv.status == ipb.FINALIZED and inv.number == "INV-000001"
    assert await stack.assert_both_or_neither(invoice_id, "acct-john-wick") == "finalized"
    [hold] = await stack.holds(invoice_id)
    assert hold.status == lpb.COMMITTED and hold.posted == "50.00" and hold.reference == invoice_id
    desc = await handle.describe()
    attrs = desc.typed_search_attributes
    assert attrs.get(sa.OUTCOME) == "committed" and attrs.get(sa.CUSTOMER) == "john-wick"
    assert attrs.get(sa.TENANT) == "acme" and attrs.get(sa.INVOICE) == invoice_id
    # What the Temporal UI shows a person: the saga's current details, a checklist of its steps.
    async with stack.worker():
        meta = await handle.query("__temporal_workflow_metadata", result_type=WorkflowMetadata)
    details = meta.current_details
    assert details.startswith(f"**Finalize invoice {invoice_id} of john-wick, period 2026-08-01 (tenant acme)**")
    assert "✓ 4. reserve credits (a hold keyed by the invoice)" in details and "✓ 8. finalize the invoice" in details
    assert "Finalized as INV-000001: credits 50.00, due 50.00." in details


async def test_search_attributes_given_at_start_are_not_upserted_again(stack: Stack) -> None:
    """Started as the front door starts it (tenant, invoice, customer, period and "preparing" given
    with the start request) the happy path upserts only "committed": the decision, which then stands.
    What a starter did not give, or gave wrong, the workflow sets once it has read the invoice. Every
    way ends with the same five attributes."""
    period = PERIOD_START.isoformat()
    cases = [("anna", lambda inv: sa.at_start(TENANT, inv, "anna", period), 1),
             ("bo", lambda inv: sa.at_start(TENANT, inv), 2),
             ("cy", lambda inv: sa.at_start(TENANT, inv, "someone-else", "2026-07-01T00:00:00+00:00"), 2),
             ("di", lambda inv: None, 3)]
    handles = []
    async with stack.worker():
        for customer, attributes, upserts in cases:
            invoice_id = await seed_customer(stack.services, customer)
            handle = await start_or_attach(stack.client, FinalizeInvoiceWorkflow.run,
                                           FinalizeInvoiceInput(TENANT, invoice_id, FAST, local_reads=True),
                                           id=naming.finalize_workflow_id(TENANT, invoice_id),
                                           task_queue=stack.task_queue, search_attributes=attributes(invoice_id))
            handles.append((handle, invoice_id, customer, upserts))
        for handle, *_ in handles:
            await handle.result()
    for handle, invoice_id, customer, upserts in handles:
        kinds = [e.event_type async for e in handle.fetch_history_events()]
        assert kinds.count(EventType.EVENT_TYPE_UPSERT_WORKFLOW_SEARCH_ATTRIBUTES) == upserts, customer
        attrs = (await handle.describe()).typed_search_attributes
        assert (attrs.get(sa.TENANT), attrs.get(sa.INVOICE), attrs.get(sa.CUSTOMER), attrs.get(sa.PERIOD),
                attrs.get(sa.OUTCOME)) == (TENANT, invoice_id, customer, "2026-08-01", sa.COMMITTED)


@pytest.mark.parametrize("local_steps", [False, True], ids=["front-door", "billing-cycle"])
async def test_history_events_per_saga(stack: Stack, local_steps: bool) -> None:
    """What one happy-path finalization costs Temporal, counted from its history. The read-only
    prepare steps (read the invoice, lot boundaries, split) are local activities (one marker each, no
    task round trips). As the front door starts it, the reserve, prepare and commits are regular
    activities; as a billing cycle starts it (`local_steps`), the reserve, prepare and the invoice's
    commit are local too and only the hold's commit stays regular. Either way the decision
    (CreditsOutcome=committed, the last upsert) is a durable event before any commit is sent."""
    invoice_id = await seed_customer(stack.services, "events")
    async with stack.worker():
        handle = await start_or_attach(stack.client, FinalizeInvoiceWorkflow.run,
                                       FinalizeInvoiceInput(TENANT, invoice_id, FAST, local_reads=True,
                                                            local_steps=local_steps),
                                       id=naming.finalize_workflow_id(TENANT, invoice_id), task_queue=stack.task_queue)
        assert (await handle.result()).outcome == "finalized"
    kinds = [e.event_type async for e in handle.fetch_history_events()]
    print(f"history events per FinalizeInvoice saga (local_steps={local_steps}): {len(kinds)}")
    scheduled = [i for i, k in enumerate(kinds) if k == EventType.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED]
    markers = [i for i, k in enumerate(kinds) if k == EventType.EVENT_TYPE_MARKER_RECORDED]
    upserts = [i for i, k in enumerate(kinds) if k == EventType.EVENT_TYPE_UPSERT_WORKFLOW_SEARCH_ATTRIBUTES]
    if local_steps:  # regular: commit hold | markers: three reads, reserve, prepare, then the invoice's commit
        assert (len(scheduled), len(markers)) == (1, 6), kinds
        assert markers[4] < upserts[-1] < scheduled[0] < markers[5], kinds
        assert len(kinds) <= 22, kinds  # 50 with every step a regular activity
    else:  # regular: reserve, prepare, commit hold, commit invoice | markers: the three reads
        assert (len(scheduled), len(markers)) == (4, 3), kinds
        assert scheduled[1] < upserts[-1] < scheduled[2], kinds
        assert len(kinds) <= 40, kinds
