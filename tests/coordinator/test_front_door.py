"""The billing front door (credits.billing.v1) called directly over gRPC, against real sagas."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator

import grpc
import pytest
from credits.billing.v1 import billing_pb2 as bpb
from credits.billing.v1 import billing_pb2_grpc
from credits.invoice.v1 import invoice_pb2 as ipb
from temporalio.api.enums.v1 import EventType

from coordinator import search_attributes as sa
from stack.scenario import seed_customer
from tests.coordinator.conftest import TENANT, Stack
from tests.tenancy import add_tenant_key


@pytest.fixture
async def billing(stack: Stack) -> AsyncIterator[billing_pb2_grpc.BillingServiceStub]:
    async with stack.front_door() as billing:
        yield billing


async def _status(call: object) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await call  # type: ignore[misc]
    return err.value


async def test_finalize_void_and_get_operation_through_the_front_door(
        stack: Stack, billing: billing_pb2_grpc.BillingServiceStub) -> None:
    invoice_id = await seed_customer(stack.services)
    async with stack.worker():
        op = await billing.FinalizeInvoice(bpb.FinalizeInvoiceRequest(invoice_id=invoice_id, wait=True,
                                                                      wait_timeout_s=60), metadata=stack.md)
        assert (op.status, op.outcome, op.kind) == (bpb.COMPLETED, "finalized", "finalize-invoice")
        assert op.operation_id == f"finalize-invoice/{TENANT}/{invoice_id}"
        result = json.loads(op.result_json)
        assert (result["number"], result["credits_applied"], result["amount_due"]) == ("INV-000001", "50.00",
                                                                                      "50.00")
        assert op.progress.stage == "finalized"
        # A duplicate request attaches to the same operation (same run), and starts nothing new.
        dup = await billing.FinalizeInvoice(bpb.FinalizeInvoiceRequest(invoice_id=invoice_id), metadata=stack.md)
        assert (dup.operation_id, dup.run_id, dup.status) == (op.operation_id, op.run_id, bpb.COMPLETED)
        got = await billing.GetOperation(bpb.GetOperationRequest(operation_id=op.operation_id), metadata=stack.md)
        assert (got.run_id, got.status, json.loads(got.result_json)) == (op.run_id, bpb.COMPLETED, result)
        void = await billing.VoidInvoice(bpb.VoidInvoiceRequest(invoice_id=invoice_id, reason="dispute", wait=True,
                                                                wait_timeout_s=60), metadata=stack.md)
        assert (void.status, void.outcome, void.kind) == (bpb.COMPLETED, "voided", "void-invoice")
        assert json.loads(void.result_json)["reinstated"] == "50.00"
    assert (await stack.invoice(invoice_id)).status == ipb.VOIDED
    assert len(await stack.holds(invoice_id)) == 1
    await stack.verify_journal()
    # The front door read the invoice before starting: every attribute came with the start request,
    # so the finalization upserted only its decision ("committed", which stands once it completed;
    # the operation above says "finalized"), the void its decision and its outcome.
    for op_id, final, upserts in ((op.operation_id, sa.COMMITTED, 1), (void.operation_id, "voided", 2)):
        handle = stack.client.get_workflow_handle(op_id)
        kinds = [e.event_type async for e in handle.fetch_history_events()]
        assert kinds.count(EventType.EVENT_TYPE_UPSERT_WORKFLOW_SEARCH_ATTRIBUTES) == upserts
        attrs = (await handle.describe()).typed_search_attributes
        assert (attrs.get(sa.CUSTOMER), attrs.get(sa.PERIOD), attrs.get(sa.OUTCOME)) == ("john-wick", "2026-08-01",
                                                                                          final)


async def test_bad_requests_get_clear_statuses(stack: Stack, billing: billing_pb2_grpc.BillingServiceStub) -> None:
    invoice_id = await seed_customer(stack.services)
    md = stack.md
    err = await _status(billing.FinalizeInvoice(bpb.FinalizeInvoiceRequest(invoice_id=""), metadata=md))
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT and "invoice_id" in (err.details() or "")
    err = await _status(billing.VoidInvoice(bpb.VoidInvoiceRequest(invoice_id="a/b"), metadata=md))
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT and "invoice_id" in (err.details() or "")
    err = await _status(billing.RunBillingCycle(bpb.RunBillingCycleRequest(concurrency=1000), metadata=md))
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT and "concurrency" in (err.details() or "")
    err = await _status(billing.CompensateOutage(bpb.CompensateOutageRequest(incident_id="inc-1"), metadata=md))
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT and "account_ids" in (err.details() or "")
    err = await _status(billing.FinalizeInvoice(bpb.FinalizeInvoiceRequest(
        invoice_id=invoice_id, wait=True, wait_timeout_s=2**31 - 1), metadata=md))
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT and "wait_timeout_s" in (err.details() or "")
    for bad, field in ((bpb.CompensateOutageRequest(incident_id="inc-1", account_ids=["a"], amount="-5", unit="USD"),
                        "amount"),
                       (bpb.CompensateOutageRequest(incident_id="inc-1", account_ids=["a b"], amount="5", unit="USD"),
                        "account_ids[0]"),
                       # Refused before any workflow starts: a unit the tenant has not defined, an amount
                       # finer than the unit keeps.
                       (bpb.CompensateOutageRequest(incident_id="inc-1", account_ids=["a"], amount="5",
                                                    unit="gold_bars"), "unit"),
                       (bpb.CompensateOutageRequest(incident_id="inc-1", account_ids=["a"], amount="5.001",
                                                    unit="USD"), "amount")):
        err = await _status(billing.CompensateOutage(bad, metadata=md))
        assert err.code() == grpc.StatusCode.INVALID_ARGUMENT and field in (err.details() or ""), err.details()
    assert not [w async for w in stack.client.list_workflows('WorkflowType = "CompensateOutage"')]
    err = await _status(billing.FinalizeInvoice(bpb.FinalizeInvoiceRequest(invoice_id="inv_nope"), metadata=md))
    assert err.code() == grpc.StatusCode.NOT_FOUND and "invoice_id" in (err.details() or "")
    err = await _status(billing.FinalizeInvoice(bpb.FinalizeInvoiceRequest(invoice_id=invoice_id)))
    assert err.code() == grpc.StatusCode.UNAUTHENTICATED
    err = await _status(billing.FinalizeInvoice(bpb.FinalizeInvoiceRequest(invoice_id=invoice_id),
                                                metadata=[("x-api-key", "not-a-key")]))
    assert err.code() == grpc.StatusCode.UNAUTHENTICATED
    # Another tenant sees neither acme's invoice nor acme's operations.
    other = await add_tenant_key([stack.ledger_dsn, stack.invoice_dsn], "globex", "admin")
    other_md = [("x-api-key", other)]
    err = await _status(billing.FinalizeInvoice(bpb.FinalizeInvoiceRequest(invoice_id=invoice_id),
                                                metadata=other_md))
    assert err.code() == grpc.StatusCode.NOT_FOUND and "invoice_id" in (err.details() or "")
    async with stack.worker():  # progress queries need a worker polling the queue
        op = await billing.FinalizeInvoice(bpb.FinalizeInvoiceRequest(invoice_id=invoice_id, wait=True), metadata=md)
        assert op.status == bpb.COMPLETED
        err = await _status(billing.GetOperation(bpb.GetOperationRequest(operation_id=op.operation_id),
                                                 metadata=other_md))
        assert err.code() == grpc.StatusCode.NOT_FOUND and "operation_id" in (err.details() or "")
        err = await _status(billing.GetOperation(bpb.GetOperationRequest(
            operation_id=f"finalize-invoice/{TENANT}/inv_never_started"), metadata=md))
        assert err.code() == grpc.StatusCode.NOT_FOUND
        # A read-only key may watch operations but not start them.
        readonly = await add_tenant_key([stack.ledger_dsn, stack.invoice_dsn], TENANT, "readonly")
        err = await _status(billing.VoidInvoice(bpb.VoidInvoiceRequest(invoice_id=invoice_id),
                                                metadata=[("x-api-key", readonly)]))
        assert err.code() == grpc.StatusCode.PERMISSION_DENIED
        got = await billing.GetOperation(bpb.GetOperationRequest(operation_id=op.operation_id),
                                         metadata=[("x-api-key", readonly)])
        assert got.status == bpb.COMPLETED and got.progress.stage == "finalized"



async def test_billing_run_once_per_as_of_a_new_run_when_asked_and_never_ahead(
        stack: Stack, billing: billing_pb2_grpc.BillingServiceStub) -> None:
    """One run per tenant and as_of (to the second, never cut to the minute): the same as_of again is that
    run; `new_run` starts another once it has finished; an as_of ahead of now is refused before anything."""
    from datetime import UTC, datetime, timedelta

    from service_runtime.proto_time import to_timestamp

    md = stack.md
    ahead = datetime.now(UTC) + timedelta(days=1)
    err = await _status(billing.RunBillingCycle(bpb.RunBillingCycleRequest(as_of=to_timestamp(ahead)), metadata=md))
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT and (err.details() or "").startswith("as_of")
    as_of = to_timestamp(datetime.now(UTC).replace(microsecond=0) - timedelta(seconds=37))

    def request(**extra: bool) -> bpb.RunBillingCycleRequest:
        return bpb.RunBillingCycleRequest(as_of=as_of, wait=True, wait_timeout_s=60, **extra)

    async with stack.worker():
        first = await billing.RunBillingCycle(request(), metadata=md)
        again = await billing.RunBillingCycle(request(), metadata=md)
        assert first.status == bpb.COMPLETED, first
        assert (again.operation_id, again.run_id) == (first.operation_id, first.run_id)
        assert first.operation_id.endswith(as_of.ToDatetime(UTC).isoformat())  # to the second, not the minute
        fresh = await billing.RunBillingCycle(request(new_run=True), metadata=md)
        assert fresh.status == bpb.COMPLETED and fresh.operation_id == first.operation_id
        assert fresh.run_id != first.run_id


async def test_a_compensated_finalization_names_step_service_and_cause_and_carries_the_amounts(
        stack: Stack, billing: billing_pb2_grpc.BillingServiceStub) -> None:
    """Not "Activity task failed": the operation's error names the step, the participant and its answer;
    its result carries the invoice's amounts and the hold key (what a person checks next)."""
    from harness.faults import FaultPlan

    invoice_id = await seed_customer(stack.services, "comp-1")
    faults = FaultPlan().add("reserve_credits", "before", "reject")
    async with stack.worker(faults):
        op = await billing.FinalizeInvoice(bpb.FinalizeInvoiceRequest(invoice_id=invoice_id, wait=True,
                                                                      wait_timeout_s=60), metadata=stack.md)
    assert op.status == bpb.FAILED and op.outcome == "compensated", op
    assert "finalization compensated at 'reserving credits' (ledger): " in op.error, op.error
    assert "Activity task failed" not in op.error
    result = json.loads(op.result_json)
    assert (result["step"], result["service"], result["invoice_id"]) == ("reserving credits", "ledger", invoice_id)
    assert result["cause"] and result["cause"] in op.error
    assert result["subtotal"] == "100.00" and {"credits_applied", "amount_due"} <= set(result)
    assert invoice_id in result["hold_key"], result
