"""Inputs the front door accepts must be inputs every later saga step accepts: after the decision a
saga cannot compensate, so a payload a participant refuses there leaves the saga retrying forever."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import grpc
import pytest
from credits.billing.v1 import billing_pb2 as bpb
from credits.billing.v1 import billing_pb2_grpc
from credits.invoice.v1 import invoice_pb2 as ipb

from stack.scenario import seed_customer
from tests.coordinator.conftest import Stack, eventually

VOID_REASON_BUG = (
    "coordinator/front_door.py VoidInvoice passes request.reason[:500] unchecked; the invoice service stores it "
    "(check_text: length only) so the void passes its decision (VOID_PENDING, outcome=voiding), then the ledger's "
    "ReverseReference refuses it (ledger_service/api/mapping.py text(): no control characters) and the "
    "must-succeed reversal retries that INVALID_ARGUMENT forever: the invoice stays VOID_PENDING and the "
    "resolver would replay the same reason. Fix: refuse at the front door with "
    "mapping.text()-equivalent rules (no control characters, <= the ledger's MAX_TEXT) before starting")


@pytest.fixture
async def billing(stack: Stack) -> AsyncIterator[billing_pb2_grpc.BillingServiceStub]:
    async with stack.front_door() as billing:
        yield billing


async def test_void_reason_the_ledger_refuses_is_refused_up_front(
        stack: Stack, billing: billing_pb2_grpc.BillingServiceStub) -> None:
    invoice_id = await seed_customer(stack.services)
    async with stack.worker():
        assert (await (await stack.start_finalize(invoice_id)).result()).outcome == "finalized"
        try:
            op = await billing.VoidInvoice(bpb.VoidInvoiceRequest(invoice_id=invoice_id, reason="disputed\nby mail"),
                                           metadata=stack.md)
        except grpc.aio.AioRpcError as err:  # the fix: refused before anything starts
            assert err.code() == grpc.StatusCode.INVALID_ARGUMENT, err
            assert (await stack.invoice(invoice_id)).status == ipb.FINALIZED
            return
        handle = stack.client.get_workflow_handle(op.operation_id)
        try:
            # Accepted: either the void completes, or it is stuck after its decision retrying a rejection.
            async def state() -> tuple[str, str]:
                desc = await handle.describe()
                pending = desc.raw_description.pending_activities
                failure = pending[0].last_failure.message if pending and pending[0].attempt > 2 else ""
                return desc.status.name if desc.status else "", failure

            status, failure = await eventually(state, lambda s: s[0] != "RUNNING" or "INVALID_ARGUMENT" in s[1], 30)
            assert status == "COMPLETED", f"void stuck after its decision: {failure}"
            assert (await stack.invoice(invoice_id)).status == ipb.VOIDED
        finally:
            if (await handle.describe()).status.name == "RUNNING":  # type: ignore[union-attr]
                await handle.terminate("test cleanup: a stuck void")
            await asyncio.sleep(0)
