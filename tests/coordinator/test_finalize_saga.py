"""The finalization saga against the real Temporal dev server, ledger and invoice services."""

from __future__ import annotations

from credits.invoice.v1 import invoice_pb2 as ipb
from credits.ledger.v1 import ledger_pb2 as lpb

from coordinator import search_attributes as sa
from coordinator.scenario import seed_customer
from tests.coordinator.conftest import Stack


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
    assert attrs.get(sa.OUTCOME) == "finalized" and attrs.get(sa.CUSTOMER) == "john-wick"
    assert attrs.get(sa.TENANT) == "acme" and attrs.get(sa.INVOICE) == invoice_id
